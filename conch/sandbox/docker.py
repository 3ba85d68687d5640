"""The ``docker`` backend: each session's worker in a container of a Docker-compatible engine.

Spoken to through the Docker Engine API with the official ``docker`` SDK
(``pip install 'conch[docker]'``). The engine is ``base_url`` when given, else ``DOCKER_HOST``
(with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``), else the SDK's default socket. Docker and
podman's ``system service`` both work (see ``conch.sandbox._podman``).

One container per session, created when the session first needs a worker and removed by
``end_session`` (or when its worker is killed): the image's ``python3`` runs the same conch
worker program as every backend, bind-mounted read-only at ``/opt/conch/worker``. The
container has no network (``network_mode=none``) unless ``network=True``, a read-only root
file system, no capabilities, ``no-new-privileges``, and cgroup limits on memory (no swap),
processes and CPU; the worker also sets its usual rlimits (address space, file size, CPU
time, open files) on itself. The session's directories are bind mounts of the host's
(``/session``, ``/conch/scratch`` and ``/tmp`` writable, ``/inputs`` read-only), so files,
snapshots and spilled output work exactly as on the other backends, and a snapshot's
interpreter state goes through a file there rather than the attach stream: this needs an
engine that sees the host's file system (a local socket, not a remote engine).

The channel: the container is created with an open stdin and no TTY, attached *before* it
starts (so the worker's hello cannot be missed), and then started. The attach connection is
the worker's stdin and, multiplexed with its stderr in the engine's 8-byte-header stream
format, its stdout; :class:`_DemuxedStdout` pulls the stdout frames out (stderr goes to the
session's worker log) with the stream's own back-pressure. Detach keys are switched off so
binary frames (pickles) can never be taken for a ``ctrl-p ctrl-q`` detach. A unix socket in
the bind-mounted session directory would also work, but the attach stream needs nothing
inside the container and no extra file, and its end is the container's end.

Cold start: creating a container and attaching to it (which makes podman initialise it) is
most of a new session's cost, so the environment keeps one spare container created and
attached ahead, with directories of its own; a new session adopts the spare's directories
(what the session already holds moves in, then one rename each; bind mounts follow the
directory, not its name) and only starts it. The first session of an environment pays the
whole cold start.

The worker runs under its keeper (the container's PID 1), which reports how the worker
ended; a container killed or removed from outside, or killed for memory, is reported by the
inspection of the container after its stream ended. The next call gets a fresh container
and ``state_lost``.

Ownership: the container runs as the host user that runs conch (``user``, default the
host's uid:gid), so files the host restores from a snapshot stay writable inside. With
``cap_drop=ALL`` a root container user is the same posture as the ``bwrap`` backend's on a
root host. Another numeric ``user`` works too: the session's directories are handed to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

from conch.errors import ConfigurationError, SandboxError, SandboxUnavailableError
from conch.sandbox._connection import WorkerConnection
from conch.sandbox._types import BackendType, Capability, RestoreReport, SnapshotId
from conch.sandbox._worker_environment import (
    WORKER_CAPABILITIES,
    InsidePaths,
    ResourceLimits,
    SessionPaths,
    WorkerEnvironment,
    _Session,
)
from conch.sandbox.worker import WORKER_DIR, protocol

logger = logging.getLogger("conch.sandbox")

DEFAULT_IMAGE = "conch-sandbox:latest"
IMAGE_ENV = "CONCH_DOCKER_IMAGE"
"""Environment variable naming the image when no ``image`` option is given."""
SANDBOX_WORK = "/session"
SANDBOX_SCRATCH = "/conch/scratch"
SANDBOX_TMP = "/tmp"
SANDBOX_INPUTS = "/inputs"
SANDBOX_WORKER_DIR = "/opt/conch/worker"
LABEL = "org.conch.sandbox"
"""Every container this backend creates carries this label (value: the environment's id)."""

DEFAULT_LIMITS = ResourceLimits(
    memory_bytes=2 << 30,
    max_processes=256,
    max_file_bytes=1 << 30,
    cpu_seconds=6 * 3600,
    open_files=1024,
)
_CAPABILITIES = WORKER_CAPABILITIES | {
    Capability.PROCESS_ISOLATION,
    Capability.FILESYSTEM_ISOLATION,
    Capability.RESOURCE_LIMITS,
}
API_VERSION = "1.41"
_STREAM_LIMIT = 16 * 1024 * 1024
_API_TIMEOUT_S = 60.0
_PROBE_TIMEOUT_S = 10.0
_MAX_LOG_BYTES = 1 << 20
_STDOUT, _STDERR, _SYSTEM_ERROR = 1, 2, 3
_EXIT_KILLED = 137
_T = TypeVar("_T")


class DockerEnvironment(WorkerEnvironment):
    """Sessions in containers of a Docker-compatible engine (Docker, podman's API service)."""

    inside_paths = InsidePaths(SANDBOX_WORK, SANDBOX_SCRATCH, SANDBOX_TMP, SANDBOX_INPUTS)

    # Bind mounts of the host's session directories (the engine must be local, see above).
    shares_session_directories = True

    def __init__(
        self,
        *,
        image: str | None = None,
        base_url: str | None = None,
        network: bool = False,
        cpus: float | None = 1.0,
        user: str | None = None,
        python: str = "python3",
        warm_spare: bool = True,
        api_timeout_s: float = _API_TIMEOUT_S,
        **options: Any,
    ) -> None:
        """``image`` must have ``python`` (3.11+; ``dill`` for snapshots of code) and bash;
        ``scripts/build-sandbox-image.sh`` builds one. ``cpus``: CPU share (None: no limit).
        ``warm_spare``: keep one container created and attached ahead, so a new session
        only starts it (the first session of an environment pays the whole cold start).
        """
        if cpus is not None and cpus <= 0:
            raise ConfigurationError(f"cpus must be > 0 or None, not {cpus!r}")
        self.image = image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
        self.network = network
        self.cpus = cpus
        self.user = user or f"{os.getuid()}:{os.getgid()}"
        self.python = python
        self.warm_spare = warm_spare
        self._spare: asyncio.Future[_Spare] | None = None
        self._owner = _numeric_owner(self.user)
        super().__init__(**options)
        self.environment_id = secrets.token_hex(6)
        self._engine = _Engine(base_url, api_timeout_s, image=self.image)

    @property
    def engine_url(self) -> str:
        return self._engine.url

    def container_id(self, session_id: str) -> str | None:
        """The id of the container that runs the session's worker (None: it has none now)."""
        session = self._sessions.get(session_id)
        connection = session.connection if session is not None else None
        if connection is None or not isinstance(connection.process, _Container):
            return None
        return connection.process.id

    def default_limits(self) -> ResourceLimits:
        return DEFAULT_LIMITS

    def capabilities(self) -> frozenset[Capability]:
        if self.network:
            return _CAPABILITIES
        return _CAPABILITIES | {Capability.NETWORK_ISOLATION}

    def backend_type(self) -> BackendType:
        return BackendType.DOCKER

    # --- the container ------------------------------------------------------------------

    def container_config(
        self, dirs: _Dirs, worker_config: dict[str, Any], session_id: str | None
    ) -> dict:
        """The Engine API's container configuration for a worker whose session directories
        are ``dirs`` (a session's, or a spare's that a session adopts later)."""
        import docker

        limits = self.limits
        mounts = [
            docker.types.Mount(SANDBOX_WORK, str(dirs.work), type="bind"),
            docker.types.Mount(SANDBOX_SCRATCH, str(dirs.scratch), type="bind"),
            docker.types.Mount(SANDBOX_TMP, str(dirs.tmp), type="bind"),
            docker.types.Mount(SANDBOX_INPUTS, str(dirs.inputs), type="bind", read_only=True),
            docker.types.Mount(SANDBOX_WORKER_DIR, str(WORKER_DIR), type="bind", read_only=True),
        ]
        # podman's defaults for these exceed what a process without CAP_SYS_RESOURCE may set.
        open_files = limits.open_files or 1024
        processes = limits.max_processes or 4096
        ulimits = [
            docker.types.Ulimit(name="nofile", soft=open_files, hard=open_files),
            docker.types.Ulimit(name="nproc", soft=processes, hard=processes),
        ]
        host_config = docker.types.HostConfig(
            version=API_VERSION,
            network_mode=None if self.network else "none",
            mem_limit=limits.memory_bytes,
            memswap_limit=limits.memory_bytes,  # the same: no swap
            pids_limit=limits.max_processes,
            nano_cpus=int(self.cpus * 1e9) if self.cpus else None,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            ulimits=ulimits,
            mounts=mounts,
        )
        config = json.dumps({**worker_config, "keeper": True}, separators=(",", ":"))
        labels = {LABEL: self.environment_id}
        if session_id is not None:
            labels[f"{LABEL}.session"] = session_id
        return docker.types.ContainerConfig(
            API_VERSION,
            self.image,
            ["-I", f"{SANDBOX_WORKER_DIR}/agent.py", config],
            entrypoint=[self.python],
            hostname="conch",
            user=self.user,
            stdin_open=True,  # with attached streams: OpenStdin, StdinOnce, Attach*
            tty=False,
            environment=self._session_env(None),  # type: ignore[arg-type]  # the same for all
            working_dir=SANDBOX_WORK,
            labels=labels,
            host_config=host_config,
        )

    async def _connect(self, session: _Session, worker_config: dict[str, Any]) -> WorkerConnection:
        # A session whose worker still runs (a restore starts the next one beside it)
        # keeps its directories: the running container has them mounted.
        running = session.connection is not None and session.connection.alive
        spare = None if running else await self._take_spare(worker_config)
        if self.warm_spare:
            self._refill_spare(worker_config)
        if spare is not None:
            try:
                await asyncio.to_thread(spare.hand_over_to, session.paths)
            except BaseException:
                await spare.discard()
                raise
            prepared = spare.prepared
        else:
            dirs = _Dirs.of(session.paths)
            name = f"conch-{session.id}-{secrets.token_hex(3)}"
            prepared = await self._prepare(dirs, worker_config, name, session.id)
        container, reader, writer = prepared
        try:
            await self._engine.call("start the container", lambda api: api.start(container.id))
        except BaseException:
            writer.close()
            container.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(container.wait(), 30)
            raise
        stdout = _DemuxedStdout(reader, session.paths.log)
        return await WorkerConnection.attach(
            stdout,  # type: ignore[arg-type]  # a StreamReader as far as readexactly goes
            writer,
            container,
            keeper=True,
            log_path=session.paths.log,
        )

    async def _prepare(
        self, dirs: _Dirs, worker_config: dict[str, Any], name: str, session_id: str | None
    ) -> tuple[_Container, asyncio.StreamReader, asyncio.StreamWriter]:
        """Create the container and attach to it, not started yet (so nothing is missed)."""
        if self._owner is not None:
            await asyncio.to_thread(_hand_over, dirs, self._owner, recursive=False)
        config = self.container_config(dirs, worker_config, session_id)
        container_id = await self._engine.create(config, name)
        container = _Container(self._engine, container_id, limits=self.limits)
        try:
            raw = await self._engine.call(
                "attach to the container", lambda api: _attach_socket(api, container_id)
            )
            reader, writer = await asyncio.open_connection(sock=raw, limit=_STREAM_LIMIT)
        except BaseException:
            container.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(container.wait(), 30)
            raise
        return container, reader, writer

    # --- the warm spare -------------------------------------------------------------------

    def _refill_spare(self, worker_config: dict[str, Any]) -> None:
        """Prepare the next session's container in the background (created and attached,
        with directories of its own that the session adopts), unless one is on its way."""
        if self._spare is None and not self._closed:
            self._spare = asyncio.ensure_future(self._make_spare(dict(worker_config)))

    async def _make_spare(self, worker_config: dict[str, Any]) -> _Spare:
        root = self.root / "spares" / secrets.token_hex(4)
        dirs = _Dirs(root / "work", root / "scratch", root / "tmp", root / "inputs")
        for directory in dirs:
            directory.mkdir(parents=True)
        try:
            prepared = await self._prepare(
                dirs, worker_config, f"conch-spare-{root.name}-{self.environment_id}", None
            )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return _Spare(root, dirs, worker_config, prepared)

    async def _take_spare(self, worker_config: dict[str, Any]) -> _Spare | None:
        task, self._spare = self._spare, None
        if task is None:
            return None
        try:
            spare = await asyncio.shield(task)
        except Exception as exc:
            logger.info("the spare docker container could not be prepared: %s", exc)
            return None
        if spare.worker_config != worker_config:  # the environment's settings changed
            await spare.discard()
            return None
        return spare

    async def _drop_spare(self) -> None:
        task, self._spare = self._spare, None
        if task is None:
            return
        with contextlib.suppress(Exception):
            spare = await task
            await spare.discard()

    async def restore_snapshot(
        self, snapshot: SnapshotId | str, *, session_id: str | None = None
    ) -> RestoreReport:
        report = await super().restore_snapshot(snapshot, session_id=session_id)
        if self._owner is not None:  # restored files belong to the host user: hand them over
            session = self._sessions.get(report.snapshot.session_id)
            if session is not None:
                _hand_over(_Dirs.of(session.paths), self._owner, recursive=True)
        return report

    async def cleanup(self) -> None:
        try:
            await self._drop_spare()
            await super().cleanup()
        finally:
            await self._engine.remove_labelled(self.environment_id)
            self._engine.close()


def _numeric_owner(user: str) -> tuple[int, int] | None:
    """(uid, gid) to hand the session's directories to, when the container user is numeric
    and not the host user; None when nothing needs handing over (or it cannot be known)."""
    uid_text, _, gid_text = user.partition(":")
    if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
        return None
    uid, gid = int(uid_text), int(gid_text) if gid_text else int(uid_text)
    if (uid, gid) == (os.getuid(), os.getgid()):
        return None
    return uid, gid


class _Dirs(NamedTuple):
    """The host directories a container mounts as its session's."""

    work: Path
    scratch: Path
    tmp: Path
    inputs: Path

    @classmethod
    def of(cls, paths: SessionPaths) -> _Dirs:
        return cls(paths.work, paths.scratch, paths.tmp, paths.inputs)


def _hand_over(dirs: _Dirs, owner: tuple[int, int], *, recursive: bool) -> None:
    roots = [dirs.work] if recursive else [dirs.work, dirs.scratch, dirs.tmp]
    for root in roots:
        with contextlib.suppress(OSError):
            os.chown(root, *owner)
        if recursive:
            for directory, subdirectories, files in os.walk(root):
                for name in subdirectories + files:
                    with contextlib.suppress(OSError):
                        os.chown(os.path.join(directory, name), *owner, follow_symlinks=False)


class _Spare:
    """A container created and attached ahead of need, with directories of its own."""

    def __init__(
        self,
        root: Path,
        dirs: _Dirs,
        worker_config: dict[str, Any],
        prepared: tuple[_Container, asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.root = root
        self.dirs = dirs
        self.worker_config = worker_config
        self.prepared = prepared

    def hand_over_to(self, paths: SessionPaths) -> None:
        """Make the spare's directories the session's: whatever the session already holds
        (uploaded inputs, files of an earlier worker) moves into them, then each replaces
        the session's (now empty) directory in one rename. The container's bind mounts
        follow the directories, not their names."""
        for mine, theirs in zip(self.dirs, _Dirs.of(paths), strict=True):
            for attempt in range(3):
                for entry in os.listdir(theirs):
                    os.rename(theirs / entry, mine / entry)
                try:
                    os.rename(mine, theirs)  # replaces an empty directory atomically
                    break
                except OSError as exc:  # something arrived meanwhile (an upload): again
                    if exc.errno != errno.ENOTEMPTY or attempt == 2:
                        raise
        shutil.rmtree(self.root, ignore_errors=True)

    async def discard(self) -> None:
        container, _, writer = self.prepared
        writer.close()
        container.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(container.wait(), 30)
        shutil.rmtree(self.root, ignore_errors=True)


def _attach_socket(api: Any, container_id: str) -> socket.socket:
    """Attach to the created container's stdin, stdout and stderr; return the raw socket.

    ``detachKeys=""``: no byte sequence on stdin ends the attachment (the default
    ``ctrl-p ctrl-q`` would, when a pickle happens to contain it)."""
    params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1, "detachKeys": ""}
    handle = api.attach_socket(container_id, params=params)
    raw = getattr(handle, "_sock", handle)
    if not isinstance(raw, socket.socket) or hasattr(raw, "getpeercert"):
        with contextlib.suppress(Exception):
            handle.close()
        raise SandboxError(
            f"cannot use the attach stream of this engine connection ({type(raw).__name__}): "
            "the docker backend needs a unix:// or plain tcp:// DOCKER_HOST"
        )
    # Take the descriptor away from the SDK's response objects, which would close it when
    # they are garbage-collected. The container has not started: nothing is buffered yet.
    family, kind = raw.family, raw.type
    return socket.socket(family, kind, fileno=raw.detach())


class _DemuxedStdout:
    """The worker's stdout, pulled out of the engine's multiplexed attach stream.

    The stream is a run of frames ``[type u8, 0, 0, 0, length u32 BE][payload]`` where type
    1 is stdout and 2 stderr. Only ``readexactly`` is offered (it is all the connection
    reads with); stderr frames are appended to the worker log, up to 1 MiB."""

    def __init__(self, stream: asyncio.StreamReader, log_path: Path | None) -> None:
        self._stream = stream
        self._left = 0  # bytes of the current stdout frame not read yet
        self._log_path = log_path
        self._log: BinaryIO | None = None
        self._logged = 0

    async def readexactly(self, n: int) -> bytes:
        if n <= self._left:
            data = await self._stream.readexactly(n)
            self._left -= n
            return data
        parts: list[bytes] = []
        need = n
        while need:
            try:
                if not self._left:
                    await self._next_stdout_frame()
                take = min(self._left, need)
                parts.append(await self._stream.readexactly(take))
            except asyncio.IncompleteReadError as exc:
                raise asyncio.IncompleteReadError(b"".join(parts) + exc.partial, n) from None
            self._left -= take
            need -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _next_stdout_frame(self) -> None:
        while True:
            try:
                header = await self._stream.readexactly(8)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self._close_log()
                    raise protocol.FrameError("the attach stream ended inside its header") from None
                self._close_log()
                raise asyncio.IncompleteReadError(b"", None) from None
            kind, size = header[0], int.from_bytes(header[4:8], "big")
            if kind == _STDOUT:
                if size:
                    self._left = size
                    return
                continue
            if kind not in (_STDERR, _SYSTEM_ERROR):
                raise protocol.FrameError(f"unknown attach stream type {kind}")
            self._write_log(await self._stream.readexactly(size))

    def _write_log(self, data: bytes) -> None:
        if self._log_path is None or self._logged >= _MAX_LOG_BYTES:
            return
        if self._log is None:
            self._log = open(self._log_path, "ab")  # noqa: SIM115 (closed at end of stream)
        data = data[: _MAX_LOG_BYTES - self._logged]
        self._log.write(data)
        self._log.flush()
        self._logged += len(data)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class _Container:
    """A session's container as a :class:`~conch.sandbox._connection.WorkerProcess`.

    Ending it (``kill``, or ``wait`` once its stream has closed) removes it from the engine;
    when it ended without us, its inspection says why (``end_reason``)."""

    def __init__(self, engine: _Engine, container_id: str, *, limits: ResourceLimits) -> None:
        self.engine = engine
        self.id = container_id
        self._limits = limits
        self._returncode: int | None = None
        self._killed = False
        self._ending: asyncio.Future[None] | None = None
        self.end_reason: str | None = None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def kill(self) -> None:
        if self._ending is None:
            self._killed = True
        self._begin_end()

    async def wait(self) -> int | None:
        self._begin_end()
        assert self._ending is not None
        await asyncio.shield(self._ending)
        return self._returncode

    def _begin_end(self) -> None:
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end())

    async def _end(self) -> None:
        code: int | None = None
        short = self.id[:12]
        if not self._killed:  # its stream closed by itself: find out what happened to it
            try:
                state = await self.engine.call(
                    "inspect the container", lambda api: api.inspect_container(self.id)["State"]
                )
            except _not_found():
                self.end_reason = f"the container {short} was removed from outside conch"
            except SandboxError as exc:
                self.end_reason = f"the connection to the container {short} was lost: {exc}"
            else:
                code = state.get("ExitCode")
                if state.get("OOMKilled"):
                    limit = self._limits.memory_bytes
                    self.end_reason = (
                        f"the container {short} ran out of memory"
                        + (f" (limit {limit >> 20} MiB)" if limit else "")
                        + " and was killed"
                    )
                elif state.get("Running"):
                    self.end_reason = (
                        f"the attach stream of the container {short} closed while it was still "
                        f"running (was the engine at {self.engine.url} restarted?)"
                    )
                    code = None
                else:
                    self.end_reason = (
                        f"the container {short} was stopped or killed from outside conch "
                        f"(exit status {code})"
                    )
        await self._remove(short)
        self._returncode = code if code is not None else _EXIT_KILLED

    async def _remove(self, short: str, attempts: int = 5) -> None:
        # podman refuses a forced removal while the container is between running and
        # stopped ("container state improper"): try again shortly.
        for attempt in range(attempts):
            try:
                await self.engine.call(
                    "remove the container", lambda api: api.remove_container(self.id, force=True)
                )
                return
            except _not_found():
                return
            except Exception as exc:
                if attempt == attempts - 1 or self.engine.closed:
                    logger.warning("could not remove the sandbox container %s: %s", short, exc)
                    return
                await asyncio.sleep(0.1 * (attempt + 1))


def _not_found() -> type[Exception]:
    import docker

    return docker.errors.NotFound


class _Engine:
    """The Docker Engine API client, used from a small thread pool of its own (the SDK is
    blocking), with its errors turned into ones that name the engine and what to do."""

    def __init__(self, base_url: str | None, timeout_s: float, *, image: str) -> None:
        self.base_url = base_url
        self.url, self.source = engine_address(base_url)
        self.image = image
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="conch-docker")
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _api(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.base_url, self.timeout_s, pool_size=32)
            return self._client.api

    async def call(self, what: str, function: Callable[[Any], _T]) -> _T:
        if self._closed:
            raise SandboxError("this docker environment was cleaned up")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, what, function)

    def _run(self, what: str, function: Callable[[Any], _T]) -> _T:
        import docker
        import requests

        try:
            return function(self._api())
        except docker.errors.NotFound:
            raise
        except requests.exceptions.Timeout as exc:
            raise SandboxError(
                f"the Docker engine at {self.url} did not answer within {self.timeout_s:g} s "
                f"when asked to {what}: {exc}"
            ) from exc
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            raise SandboxError(self.unreachable(exc)) from exc
        except docker.errors.APIError as exc:
            explanation = str(exc.explanation or exc)
            if "no such container" in explanation.lower():  # podman, mid-removal: a 500
                raise docker.errors.NotFound(
                    explanation, response=exc.response, explanation=exc.explanation
                ) from exc
            raise SandboxError(
                f"the Docker engine at {self.url} could not {what}: {exc.explanation or exc}"
            ) from exc
        except docker.errors.DockerException as exc:  # e.g. no engine when the client is made
            raise SandboxError(self.unreachable(exc)) from exc

    def unreachable(self, exc: BaseException) -> str:
        return (
            f"cannot reach the Docker engine at {self.url} ({self.source}): {_short(exc)}. "
            "Start the engine, or podman's API service (podman system service --time=0 "
            "unix:///PATH.sock), and point DOCKER_HOST (or base_url) at its socket"
        )

    async def create(self, config: dict, name: str) -> str:
        import docker

        try:
            created = await self.call(
                "create a container",
                lambda api: api.create_container_from_config(config, name=name),
            )
        except docker.errors.NotFound as exc:  # ImageNotFound, or podman's 404 wording
            raise SandboxUnavailableError(missing_image(self.url, self.image)) from exc
        return created["Id"]

    async def remove_labelled(self, environment_id: str) -> None:
        """Remove what is left of the environment's containers (best effort)."""
        if self._client is None or self._closed:
            return

        def remove_all(api: Any) -> None:
            for found in api.containers(all=True, filters={"label": f"{LABEL}={environment_id}"}):
                with contextlib.suppress(Exception):
                    api.remove_container(found["Id"], force=True)

        with contextlib.suppress(Exception):
            await self.call("remove the environment's containers", remove_all)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False)
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.close()
                self._client = None


def engine_address(base_url: str | None = None) -> tuple[str, str]:
    """The engine's URL and where it came from (for messages)."""
    if base_url:
        return base_url, "the base_url option"
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"], "from DOCKER_HOST"
    return "unix:///var/run/docker.sock", "the default socket; DOCKER_HOST is not set"


def make_client(base_url: str | None, timeout_s: float, *, pool_size: int = 10) -> Any:
    """A ``docker.DockerClient`` for ``base_url``, or as ``DOCKER_HOST`` & co. say."""
    import docker

    # A fixed API version (Docker 20.10+, podman 3+): no /version round trip per client
    # (podman answers /version by running its runtimes, which takes seconds under load).
    options = {"version": API_VERSION, "timeout": timeout_s, "max_pool_size": pool_size}
    if base_url:
        return docker.DockerClient(base_url=base_url, **options)
    return docker.from_env(**options)


def missing_image(url: str, image: str) -> str:
    return (
        f"the Docker engine at {url} has no image {image!r}: build it with "
        f"scripts/build-sandbox-image.sh {image} (or name another with the image option or "
        f"{IMAGE_ENV})"
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def docker_works(base_url: str | None = None, image: str | None = None) -> tuple[bool, str]:
    """Whether a Docker-compatible engine answers (pinged, short timeout) and has the image."""
    import docker

    image = image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
    url, source = engine_address(base_url)
    client = None
    try:
        client = make_client(base_url, _PROBE_TIMEOUT_S)
        pong = client.api.get(f"{client.api.base_url}/_ping")
        if pong.status_code != 200:
            raise SandboxError(f"GET /_ping answered {pong.status_code} {pong.text[:200]!r}")
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False, missing_image(url, image)
    except Exception as exc:
        hint = ""
        if shutil.which("podman"):
            hint = (
                "; podman is installed: serve its Docker-compatible API with `podman system "
                "service --time=0 unix:///run/conch-podman.sock &` and set "
                "DOCKER_HOST=unix:///run/conch-podman.sock"
            )
        return False, (
            f"no Docker-compatible engine answers at {url} ({source}): {_short(exc)}{hint}"
        )
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
    engine = pong.headers.get("Server") or "an engine"
    return True, f"{engine} at {url}, image {image}"
