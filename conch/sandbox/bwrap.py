"""The ``bwrap`` backend: the worker inside a bubblewrap sandbox.

Each session's worker gets its own user, mount, PID, network, IPC and UTS namespaces
(``--unshare-all``: no network unless ``network=True``), drops every capability
(``--cap-drop ALL``: as root without a user namespace and the drop, bubblewrap leaves the
sandbox every capability, enough to remount ``/`` writable), sees the system directories
and the Python installation read-only, and can write only its session directory
(``/session``), its scratch directory and ``/tmp`` (both on the host's disk, bounded by the
file-size limit). ``--die-with-parent`` ends the sandbox if the host dies.

Limits: the worker sets RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_CPU and RLIMIT_NOFILE on itself.
The process count needs more: the kernel does not enforce RLIMIT_NPROC for processes whose
real user is host root (which a root-run sandbox's user namespace maps to), so when the host
can write the pids cgroup controller each session gets its own cgroup with ``pids.max``;
otherwise (a non-root host) RLIMIT_NPROC applies.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from conch.errors import SandboxUnavailableError
from conch.sandbox._connection import LaunchSpec
from conch.sandbox._types import BackendType, Capability
from conch.sandbox._worker_environment import (
    WORKER_CAPABILITIES,
    InsidePaths,
    ResourceLimits,
    WorkerEnvironment,
    _Session,
)
from conch.sandbox.worker import WORKER_DIR

logger = logging.getLogger("conch.sandbox")

SANDBOX_WORK = "/session"
SANDBOX_SCRATCH = "/conch/scratch"
SANDBOX_TMP = "/tmp"
SANDBOX_WORKER_DIR = "/opt/conch/worker"
SANDBOX_INPUTS = "/inputs"
_SANDBOX_UID = 1000
_PIDS_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/ssl/certs",
)

_CAPABILITIES = WORKER_CAPABILITIES | {
    Capability.PROCESS_ISOLATION,
    Capability.FILESYSTEM_ISOLATION,
    Capability.RESOURCE_LIMITS,
}

DEFAULT_LIMITS = ResourceLimits(
    memory_bytes=2 << 30,
    max_processes=256,
    max_file_bytes=1 << 30,
    cpu_seconds=6 * 3600,
    open_files=1024,
)


class BubblewrapEnvironment(WorkerEnvironment):
    inside_paths = InsidePaths(SANDBOX_WORK, SANDBOX_SCRATCH, SANDBOX_TMP, SANDBOX_INPUTS)
    shares_session_directories = True  # bind mounts of the host's session directories

    def __init__(self, *, network: bool = False, bwrap_path: str | None = None, **options: Any):
        found = bwrap_path or shutil.which("bwrap")
        if not found:
            raise SandboxUnavailableError(
                "bubblewrap (bwrap) is not installed: install the Debian package 'bubblewrap' "
                "(scripts/install-system-deps.sh) or use the 'local' backend"
            )
        self.bwrap_path = found
        self.network = network
        super().__init__(**options)
        self._cgroup_name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._cgroups: _PidsCgroups | None = None
        self._cgroups_tried = False

    def default_limits(self) -> ResourceLimits:
        return DEFAULT_LIMITS

    def capabilities(self) -> frozenset[Capability]:
        if self.network:
            return _CAPABILITIES
        return _CAPABILITIES | {Capability.NETWORK_ISOLATION}

    def backend_type(self) -> BackendType:
        return BackendType.BWRAP

    def _launch_spec(self, session: _Session, worker_config: dict[str, Any]) -> LaunchSpec:
        paths = session.paths
        argv = [self.bwrap_path, *_namespace_args(self.network)]
        argv += _readonly_system_args()
        argv += ["--ro-bind", str(WORKER_DIR), SANDBOX_WORKER_DIR]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--bind", str(paths.work), SANDBOX_WORK]
        argv += ["--bind", str(paths.scratch), SANDBOX_SCRATCH]
        argv += ["--bind", str(paths.tmp), SANDBOX_TMP]
        argv += ["--ro-bind", str(paths.inputs), SANDBOX_INPUTS]
        # bwrap's own root is a writable tmpfs (where /etc, /opt... were created): freeze it.
        argv += ["--remount-ro", "/", "--chdir", SANDBOX_WORK, "--clearenv"]
        for key, value in self._session_env(session).items():
            argv += ["--setenv", key, value]
        argv += self._python_argv(f"{SANDBOX_WORKER_DIR}/agent.py", worker_config)
        cgroups = self._session_cgroups()
        if cgroups is not None and self.limits.max_processes:
            procs_file = cgroups.for_session(session.id, self.limits.max_processes)
            if procs_file is not None:
                # The shell joins the cgroup, then becomes bwrap: every sandboxed process
                # is born inside it.
                argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs_file), *argv]
        return LaunchSpec(argv=argv, env={}, log_path=paths.log)

    def _session_cgroups(self) -> _PidsCgroups | None:
        """The environment's pids cgroup, made on first use and removed when the environment
        is cleaned up or, failing that, garbage-collected (so no empty cgroups pile up)."""
        if not self._cgroups_tried:
            self._cgroups_tried = True
            self._cgroups = _PidsCgroups.create(self._cgroup_name)
            if self._cgroups is not None:
                weakref.finalize(self, self._cgroups.remove_all)
        return self._cgroups

    def _on_session_end(self, session: _Session) -> None:
        if self._cgroups is not None:
            self._cgroups.remove(session.id)

    async def cleanup(self) -> None:
        await super().cleanup()
        if self._cgroups is not None:
            self._cgroups.remove_all()


def _namespace_args(network: bool) -> list[str]:
    args = ["--unshare-all", "--unshare-user", "--cap-drop", "ALL"]
    if network:
        args.append("--share-net")
    args += [
        "--uid",
        str(_SANDBOX_UID),
        "--gid",
        str(_SANDBOX_UID),
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "conch",
    ]
    return args


@functools.cache
def _readonly_system_args() -> tuple[str, ...]:
    args: list[str] = []
    for directory in _SYSTEM_DIRS:
        if os.path.islink(directory):
            args += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    for path in _ETC_FILES:
        args += ["--ro-bind-try", path, path]
    # The interpreter (and a virtualenv's site-packages) at the same paths as on the host.
    python_dirs = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for directory in sorted(python_dirs):
        if not any(directory.startswith(system + "/") for system in _SYSTEM_DIRS):
            args += ["--ro-bind", directory, directory]
    return tuple(args)


class _PidsCgroups:
    """One pids-controller cgroup per session under ``conch/<environment>/``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def create(cls, name: str) -> _PidsCgroups | None:
        base = _PIDS_CGROUP_ROOT / "conch" / name
        _remove_orphans(base.parent)
        try:
            base.mkdir(parents=True)
            (base / "probe").mkdir()
            (base / "probe" / "pids.max").write_text("8")
            (base / "probe").rmdir()
        except OSError as exc:
            with contextlib.suppress(OSError):
                base.rmdir()
            logger.info("no pids cgroup for bwrap sessions (%s); using RLIMIT_NPROC", exc)
            return None
        return cls(base)

    def for_session(self, session_id: str, max_processes: int) -> Path | None:
        directory = self.base / session_id
        try:
            directory.mkdir(exist_ok=True)
            (directory / "pids.max").write_text(str(max_processes))
        except OSError as exc:
            logger.warning("cannot set up the pids cgroup for %s: %s", session_id, exc)
            return None
        return directory / "cgroup.procs"

    def remove(self, session_id: str) -> None:
        _remove_cgroup(self.base / session_id)

    def remove_all(self) -> None:
        if not self.base.exists():
            return
        for directory in self.base.iterdir():
            if directory.is_dir():
                _remove_cgroup(directory)
        with contextlib.suppress(OSError):
            self.base.rmdir()


def _remove_orphans(root: Path) -> None:
    """Remove the cgroups of environments whose process is gone (killed before its cleanup
    ran): each is named ``<pid>-<token>`` after the process that made it."""
    with contextlib.suppress(OSError):
        for directory in root.iterdir():
            owner = directory.name.partition("-")[0]
            if directory.is_dir() and owner.isdigit() and not _alive(int(owner)):
                _PidsCgroups(directory).remove_all()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_cgroup(directory: Path, wait_s: float = 2.0) -> None:
    """Kill what is left in the cgroup and remove it once the kernel has emptied it.

    A killed process leaves its cgroup only when it has fully exited; removing the directory
    right after SIGKILL fails with EBUSY and leaves an empty cgroup behind.
    """
    if not directory.exists():
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pids = [int(line) for line in (directory / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)
        try:
            directory.rmdir()
            return
        except OSError:
            if time.monotonic() >= deadline:
                logger.warning("could not remove the pids cgroup %s", directory)
                return
            time.sleep(0.01)


@functools.cache
def bwrap_works() -> tuple[bool, str]:
    """Whether a bubblewrap sandbox really starts Python here, and if not, why."""
    path = shutil.which("bwrap")
    if path is None:
        return False, "bubblewrap is not installed (Debian package 'bubblewrap')"
    argv = [
        path,
        *_namespace_args(False),
        *_readonly_system_args(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        sys.executable,
        "-I",
        "-c",
        "print('ok')",
    ]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bubblewrap did not run: {exc}"
    if result.returncode != 0 or result.stdout.strip() != "ok":
        return False, f"bubblewrap failed here: {result.stderr.strip() or result.returncode}"
    return True, "bubblewrap works"
