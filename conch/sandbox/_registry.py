"""Choosing a backend by name, and finding the strongest one that works on this machine."""

from __future__ import annotations

import importlib
import logging
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


@dataclass(frozen=True)
class _Backend:
    """Where a backend lives: its module (imported only when used), its environment class,
    and the function that says whether it can run here (``() -> (works, reason)``).
    ``probe_options``: options of ``create`` that the probe takes too (e.g. an engine URL)."""

    module: str
    environment: str
    probe: str | None
    isolation: str
    probe_options: tuple[str, ...] = ()

    def _attribute(self, name: str) -> Any:
        return getattr(importlib.import_module(f"conch.sandbox.{self.module}"), name)

    def status(self, options: dict[str, Any] | None = None) -> tuple[bool, str]:
        if self.probe is None:
            return True, "always available; no isolation"
        given = {k: v for k, v in (options or {}).items() if k in self.probe_options}
        try:
            return self._attribute(self.probe)(**given)
        except ImportError as exc:  # an optional dependency (an SDK) is not installed
            return False, f"a package it needs is not installed: {exc}"

    def create(self, name: str, **options: Any) -> ExecutionEnvironment:
        works, reason = self.status(options)
        if not works:
            raise SandboxUnavailableError(f"the {name} backend cannot run here: {reason}")
        return self._attribute(self.environment)(**options)


# Every backend conch knows, as `conch sandbox list` shows them.
_BACKENDS: dict[str, _Backend] = {
    "gvisor": _Backend(
        "gvisor",
        "GVisorEnvironment",
        "gvisor_works",
        "gVisor user-space kernel (runsc, ptrace): no network, read-only system, no "
        "capabilities, full-memory snapshots",
    ),
    "bwrap": _Backend(
        "bwrap",
        "BubblewrapEnvironment",
        "bwrap_works",
        "namespaces, no capabilities, read-only system, no network",
    ),
    "local": _Backend("local", "LocalEnvironment", None, "none: code runs as the host user"),
    "docker": _Backend(
        "docker",
        "DockerEnvironment",
        "docker_works",
        "a container per session: no network, read-only image, no capabilities, cgroup limits",
        probe_options=("base_url", "image"),
    ),
    "firecracker": _Backend(
        "firecracker",
        "FirecrackerEnvironment",
        "firecracker_works",
        "a Firecracker microVM per session (KVM): no network device, read-only root disk",
        probe_options=("kernel_image", "rootfs", "firecracker"),
    ),
    "e2b": _Backend(
        "e2b",
        "E2BEnvironment",
        "e2b_works",
        "an E2B cloud sandbox (Firecracker microVM) per session, no internet by default",
        probe_options=("api_key",),
    ),
}
# best_available() considers only backends that need no configuration, strongest first.
_PREFERENCE = ("gvisor", "bwrap", "local")


def backend_names() -> list[str]:
    return list(_BACKENDS)


def backend_statuses() -> list[BackendStatus]:
    """Every backend conch knows, whether it works on this machine, and why not."""
    statuses = []
    for name, backend in _BACKENDS.items():
        available, reason = backend.status()
        statuses.append(BackendStatus(name, available, reason, backend.isolation))
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
    return entry.create(backend, **options)


def best_available(**options: Any) -> ExecutionEnvironment:
    """The most isolated backend that really works here; ``local`` (with a warning) last."""
    reasons = []
    for name in _PREFERENCE:
        backend = _BACKENDS[name]
        available, reason = backend.status()
        if not available:
            reasons.append(f"{name}: {reason}")
            continue
        if name == "local":
            logger.warning(
                "no isolating sandbox works here (%s); using 'local', which runs "
                "model-written code with your user's rights and network",
                "; ".join(reasons),
            )
        return backend.create(name, **options)
    raise SandboxUnavailableError("no sandbox backend is available")  # local always is
