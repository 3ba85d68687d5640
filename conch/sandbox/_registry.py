"""Choosing a backend by name, and finding the strongest one that works on this machine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conch.errors import ConfigurationError, SandboxUnavailableError
from conch.sandbox._environment import ExecutionEnvironment

logger = logging.getLogger("conch.sandbox")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str
    isolation: str


def _local(**options: Any) -> ExecutionEnvironment:
    from conch.sandbox.local import LocalEnvironment

    return LocalEnvironment(**options)


def _bwrap(**options: Any) -> ExecutionEnvironment:
    from conch.sandbox.bwrap import BubblewrapEnvironment, bwrap_works

    works, reason = bwrap_works()
    if not works:
        raise SandboxUnavailableError(f"the bwrap backend cannot run here: {reason}")
    return BubblewrapEnvironment(**options)


def _local_status() -> tuple[bool, str]:
    return True, "always available; no isolation"


def _bwrap_status() -> tuple[bool, str]:
    from conch.sandbox.bwrap import bwrap_works

    return bwrap_works()


_BACKENDS: dict[
    str, tuple[Callable[..., ExecutionEnvironment], Callable[[], tuple[bool, str]], str]
] = {
    "local": (_local, _local_status, "none: code runs as the host user"),
    "bwrap": (_bwrap, _bwrap_status, "namespaces, no capabilities, read-only system, no network"),
}
_PREFERENCE = ("bwrap", "local")


def backend_names() -> list[str]:
    return list(_BACKENDS)


def backend_statuses() -> list[BackendStatus]:
    """Every backend conch knows, whether it works on this machine, and why not."""
    statuses = []
    for name, (_, status, isolation) in _BACKENDS.items():
        available, reason = status()
        statuses.append(BackendStatus(name, available, reason, isolation))
    return statuses


def create(backend: str, **options: Any) -> ExecutionEnvironment:
    """An environment of the named backend; ``"best"`` picks :func:`best_available`."""
    if backend in ("best", "auto"):
        return best_available(**options)
    entry = _BACKENDS.get(backend)
    if entry is None:
        raise ConfigurationError(
            f"unknown sandbox backend {backend!r}: choose one of {', '.join(_BACKENDS)} or 'best'"
        )
    return entry[0](**options)


def best_available(**options: Any) -> ExecutionEnvironment:
    """The most isolated backend that really works here (bwrap, else local with a warning)."""
    for name in _PREFERENCE:
        factory, status, _ = _BACKENDS[name]
        available, _ = status()
        if not available:
            continue
        if name == "local":
            logger.warning(
                "no isolating sandbox works here (bwrap: %s); using 'local', which runs "
                "model-written code with your user's rights and network",
                _bwrap_status()[1],
            )
        return factory(**options)
    raise SandboxUnavailableError("no sandbox backend is available")  # local always is
