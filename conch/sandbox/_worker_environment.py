"""Everything the worker-based backends share: sessions, execution, timeouts, snapshots.

A backend subclasses :class:`WorkerEnvironment` and says only how its worker is started and
isolated (:meth:`WorkerEnvironment._launch_spec`), what it can do, and how it is named.

Interpreter snapshots: the worker pickles its names one by one and the host files each as a
blob of the snapshot store. Where the worker sees the host's session directories
(:attr:`WorkerEnvironment.shares_session_directories`), those bytes go through a file, far
faster than some channels (an engine's attach stream): the worker writes them to a file the
host names in the scratch directory, and reads them on restore from a copy the host puts in the
inputs directory (read-only inside). The sandbox can write the scratch file, so the host opens
it without following links, takes only a regular file of exactly the size the reply claims,
copies that many bytes into the store and removes it. If the worker cannot write or read its
file, the state goes over the channel.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from conch.errors import (
    ConfigurationError,
    SandboxError,
    SessionClosedError,
    SnapshotError,
    SnapshotSessionMismatchError,
)
from conch.sandbox import _files
from conch.sandbox._connection import LaunchSpec, SpillFiles, WorkerConnection, WorkerDied
from conch.sandbox._environment import ExecutionEnvironment
from conch.sandbox._snapshots import DEFAULT_MAX_SNAPSHOTS_PER_SESSION, Manifest, SnapshotStore
from conch.sandbox._types import (
    Capability,
    ExecutionContext,
    ExecutionResult,
    RestoreReport,
    SnapshotId,
    ValidationResult,
    Validator,
)
from conch.sandbox.worker import protocol

logger = logging.getLogger("conch.sandbox")

_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_INTERRUPT_GRACE_S = 2.0
EXIT_BLOCKED = 126
WORKER_CAPABILITIES = frozenset(
    {
        Capability.PYTHON,
        Capability.BASH,
        Capability.PERSISTENT_STATE,
        Capability.HOST_CALLBACKS,
        Capability.SNAPSHOT,
        Capability.FILESYSTEM_SNAPSHOT,
    }
)
"""What the shared worker gives every backend built on it."""
EXIT_TIMED_OUT = 124
EXIT_KILLED = 137


@dataclass(frozen=True)
class ResourceLimits:
    """Limits the worker sets on itself before user code runs (None: not limited)."""

    memory_bytes: int | None = None
    """Address space (RLIMIT_AS): allocations past it raise MemoryError."""
    max_processes: int | None = None
    max_file_bytes: int | None = None
    """Largest file the session may write (RLIMIT_FSIZE): bounds output and disk use."""
    cpu_seconds: int | None = None
    """CPU time over the worker's life (RLIMIT_CPU): a backstop, not a cell timeout."""
    open_files: int | None = None

    def to_worker(self) -> dict[str, int]:
        values = {
            "address_space": self.memory_bytes,
            "processes": self.max_processes,
            "file_size": self.max_file_bytes,
            "cpu_seconds": self.cpu_seconds,
            "open_files": self.open_files,
        }
        return {key: value for key, value in values.items() if value}


@dataclass
class SessionPaths:
    root: Path
    work: Path
    """The session's working directory: its files, snapshotted and restored."""
    scratch: Path
    """Per-execution capture files; not part of snapshots."""
    tmp: Path
    inputs: Path
    """Files the host put in for the session (contexts): read-only inside, not snapshotted."""
    spill: Path
    """Host-only: complete outputs that were too long to return inline."""
    log: Path

    @classmethod
    def under(cls, root: Path) -> SessionPaths:
        paths = cls(
            root=root,
            work=root / "work",
            scratch=root / "scratch",
            tmp=root / "tmp",
            inputs=root / "inputs",
            spill=root / "spill",
            log=root / "worker.log",
        )
        for directory in (paths.work, paths.scratch, paths.tmp, paths.inputs, paths.spill):
            directory.mkdir(parents=True, exist_ok=True)
        return paths


class InsidePaths(NamedTuple):
    """A session's directories as a sandboxed worker sees them."""

    work: str
    scratch: str
    tmp: str
    inputs: str


@dataclass
class _Session:
    id: str
    paths: SessionPaths
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connection: WorkerConnection | None = None
    state_lost: bool = False
    """The previous worker died or was killed: the next result says so once."""
    helpers: list[str] = field(default_factory=list)
    executions: int = 0


class WorkerEnvironment(ExecutionEnvironment, abc.ABC):
    """An ``ExecutionEnvironment`` whose sessions each run one worker process."""

    inside_paths: ClassVar[InsidePaths | None] = None
    """Where the worker sees its session's directories, when the backend puts them at fixed
    places in its sandbox; None: at the host's own paths."""

    shares_session_directories: ClassVar[bool] = False
    """The worker sees the host's session directories themselves (the host's own file system
    or bind mounts of it), so snapshot state goes through a file in them, not the channel."""

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] | None = None,
        validator: Validator | None = None,
        snapshot_dir: str | os.PathLike[str] | None = None,
        max_snapshots_per_session: int = DEFAULT_MAX_SNAPSHOTS_PER_SESSION,
        limits: ResourceLimits | None = None,
        env: Mapping[str, str] | None = None,
        interrupt_grace_s: float = DEFAULT_INTERRUPT_GRACE_S,
        max_spill_bytes: int = 1 << 30,
    ) -> None:
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="conch-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._validator = validator
        self._snapshots = SnapshotStore(
            Path(snapshot_dir) if snapshot_dir else self.root / "snapshots",
            max_per_session=max_snapshots_per_session,
        )
        self.limits = limits if limits is not None else self.default_limits()
        self._base_env = dict(env or {})
        self._interrupt_grace_s = interrupt_grace_s
        self._max_spill_bytes = max_spill_bytes
        self._sessions: dict[str, _Session] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- what a backend provides -----------------------------------------------------

    def _launch_spec(self, session: _Session, worker_config: dict[str, Any]) -> LaunchSpec:
        """The command that starts this session's worker inside the backend's boundary.

        A backend whose worker is a host child process overrides this; one that starts it
        some other way (a container, a VM) overrides :meth:`_connect` instead."""
        raise NotImplementedError(f"{type(self).__name__} must override _launch_spec or _connect")

    async def _connect(self, session: _Session, worker_config: dict[str, Any]) -> WorkerConnection:
        """Start this session's worker and return the channel to it (after its hello)."""
        return await WorkerConnection.start(self._launch_spec(session, worker_config))

    def default_limits(self) -> ResourceLimits:
        return ResourceLimits()

    def _worker_paths(self, session: _Session) -> tuple[str, str, str]:
        """Work, scratch and tmp directories as the worker sees them."""
        if self.inside_paths is not None:
            return self.inside_paths.work, self.inside_paths.scratch, self.inside_paths.tmp
        paths = session.paths
        return str(paths.work), str(paths.scratch), str(paths.tmp)

    def _inputs_path(self, session: _Session) -> str:
        """The inputs directory as the worker sees it."""
        if self.inside_paths is not None:
            return self.inside_paths.inputs
        return str(session.paths.inputs)

    def _on_session_end(self, session: _Session) -> None:
        """Release backend resources bound to the session (after its worker is gone)."""

    def _session_env(self, session: _Session) -> dict[str, str]:
        work, _, tmp = self._worker_paths(session)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": work,
            "TMPDIR": tmp,
        }
        env.update(self._base_env)
        return env

    # --- sessions ---------------------------------------------------------------------

    def _session(self, session_id: str, *, create: bool = True) -> _Session:
        if self._closed:
            raise SessionClosedError("this environment was cleaned up; create a new one")
        if not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
            raise ConfigurationError(
                f"invalid session id {session_id!r}: use 1-128 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit"
            )
        session = self._sessions.get(session_id)
        if session is None:
            if not create:
                raise SessionClosedError(
                    f"no session {session_id!r} in this environment: run code in it first"
                )
            session = _Session(session_id, SessionPaths.under(self.root / "sessions" / session_id))
            self._sessions[session_id] = session
        return session

    async def _ensure_worker(self, session: _Session) -> WorkerConnection:
        connection = session.connection
        if connection is not None and connection.alive:
            return connection
        if connection is not None:
            session.state_lost = True
            await connection.kill()
        session.connection = await self._start_worker(session)
        return session.connection

    async def _start_worker(self, session: _Session) -> WorkerConnection:
        work, scratch, _ = self._worker_paths(session)
        config = {
            "cwd": work,
            "scratch": scratch,
            "limits": self.limits.to_worker(),
            "max_spill_bytes": self._max_spill_bytes,
        }
        connection = await self._connect(session, config)
        for source in session.helpers:
            await self._define(connection, source)
        return connection

    @staticmethod
    async def _define(connection: WorkerConnection, source: str) -> list[str]:
        reply, _ = await connection.request({"op": "define", "source": source})
        if "error" in reply:
            raise SandboxError(f"helper source failed in the sandbox: {reply['error']}")
        return list(reply["defined"])

    async def define_helpers(self, session_id: str, source: str) -> list[str]:
        """Run trusted ``source`` in the session's worker; its public names become builtins.

        Helpers are not part of the user's variables (snapshots leave them out) and are
        defined again whenever the session gets a fresh worker.
        """
        session = self._session(session_id)
        async with session.lock:
            connection = await self._ensure_worker(session)
            defined = await self._define(connection, source)
            session.helpers.append(source)
            return defined

    async def upload(
        self, session_id: str, name: str, source: bytes | str | os.PathLike[str]
    ) -> str:
        """Put a file into the session's read-only inputs; return its path inside the sandbox.

        ``source`` is the data itself (``bytes``, or ``str`` written as UTF-8) or the path of
        a host file, which is hard-linked when it can be and copied in chunks otherwise, so
        a context of any size gets in without a second copy in host memory. Inputs are not
        part of snapshots: what code loaded from them is.
        """
        if not isinstance(name, str) or not _SESSION_ID.match(name):
            raise ConfigurationError(
                f"invalid input name {name!r}: use letters, digits, '.', '_' or '-'"
            )
        session = self._session(session_id)
        target = session.paths.inputs / name
        if isinstance(source, (bytes, bytearray, memoryview, str)):
            data = source.encode("utf-8") if isinstance(source, str) else source
            await asyncio.to_thread(_write_atomically, target, data)
        else:
            await asyncio.to_thread(_link_or_copy, Path(source), target)
        return f"{self._inputs_path(session)}/{name}"

    # --- execution --------------------------------------------------------------------

    async def validate(self, text: str, kind: str = "code") -> ValidationResult:
        if self._validator is None:
            return ValidationResult(passed=True, message="no validator configured")
        return self._validator.validate(text, kind)

    async def execute_code(self, code: str, ctx: ExecutionContext) -> ExecutionResult:
        if not isinstance(code, str):
            raise ConfigurationError(f"code must be a str, not {type(code).__name__}")
        return await self._execute("exec", {"code": code}, code, "code", ctx)

    async def execute_command(self, cmd: str, ctx: ExecutionContext) -> ExecutionResult:
        if not isinstance(cmd, str):
            raise ConfigurationError(f"cmd must be a str, not {type(cmd).__name__}")
        return await self._execute("command", {"command": cmd}, cmd, "command", ctx)

    async def _execute(
        self, op: str, fields: dict[str, Any], text: str, kind: str, ctx: ExecutionContext
    ) -> ExecutionResult:
        if ctx.timeout_s <= 0 or ctx.max_output_bytes < 0:
            raise ConfigurationError("timeout_s must be > 0 and max_output_bytes >= 0")
        session = self._session(ctx.session_id)
        if self._validator is not None:
            verdict = await self.validate(text, kind)
            if not verdict.passed:
                return ExecutionResult(
                    stderr=f"blocked by validation: {verdict.message}\n",
                    exit_code=EXIT_BLOCKED,
                    error=f"blocked by validation: {verdict.message}",
                    validation=verdict,
                )
        async with session.lock:
            started = time.perf_counter()
            try:
                connection = await self._ensure_worker(session)
            except SandboxError as exc:
                return ExecutionResult(
                    stderr=f"{exc}\n", exit_code=-1, error=str(exc), state_lost=True
                )
            state_lost, session.state_lost = session.state_lost, False
            session.executions += 1
            spill = SpillFiles(session.paths.spill, f"exec-{session.executions}")
            message = {
                "op": op,
                **fields,
                "env": dict(ctx.env),
                "max_inline": ctx.max_output_bytes,
                "cell": session.executions,
            }
            try:
                outcome = await self._await_reply(session, connection, message, ctx, spill)
            finally:
                spill.close()
            return self._result(outcome, ctx, spill, state_lost, time.perf_counter() - started)

    async def _await_reply(
        self,
        session: _Session,
        connection: WorkerConnection,
        message: dict[str, Any],
        ctx: ExecutionContext,
        spill: SpillFiles,
    ) -> _Outcome:
        request_id = connection.new_request_id()
        request = asyncio.ensure_future(
            connection.request(
                message, host_functions=ctx.host_functions, spill=spill, request_id=request_id
            )
        )
        try:
            try:
                reply, body = await asyncio.wait_for(asyncio.shield(request), ctx.timeout_s)
                return _Outcome(reply, body)
            except TimeoutError:
                pass
            # Interrupt first (KeyboardInterrupt in the cell); kill if it does not stop.
            await connection.send_interrupt(request_id)
            try:
                reply, body = await asyncio.wait_for(
                    asyncio.shield(request), self._interrupt_grace_s
                )
                return _Outcome(reply, body, timed_out=True)
            except TimeoutError:
                await connection.kill()
                session.connection = None
                session.state_lost = True
                return _Outcome(None, b"", timed_out=True, killed=True)
        except WorkerDied as died:
            session.connection = None
            session.state_lost = True
            await connection.kill()
            return _Outcome(None, b"", died=died)
        except asyncio.CancelledError:
            # The caller gave up: stop the code too, so the session is free for the next call.
            self._in_background(self._stop_abandoned(session, connection, request, request_id))
            raise
        finally:
            if request.done() and not request.cancelled():
                request.exception()  # retrieved: no "exception never retrieved" noise

    async def _stop_abandoned(
        self,
        session: _Session,
        connection: WorkerConnection,
        request: asyncio.Future,
        request_id: int,
    ) -> None:
        """Interrupt a call nobody waits for any more; kill its worker if that fails."""
        await connection.send_interrupt(request_id)
        try:
            await asyncio.wait_for(asyncio.shield(request), self._interrupt_grace_s)
        except Exception:
            if not request.done():
                await connection.kill()
                if session.connection is connection:
                    session.connection = None
                    session.state_lost = True

    def _in_background(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _result(
        self,
        outcome: _Outcome,
        ctx: ExecutionContext,
        spill: SpillFiles,
        state_lost: bool,
        elapsed_s: float,
    ) -> ExecutionResult:
        duration_ms = elapsed_s * 1000
        timeout_note = f"execution exceeded its {ctx.timeout_s:g} s timeout"
        if outcome.killed:
            error = (
                f"{timeout_note} and did not stop within {self._interrupt_grace_s:g} s of the "
                "interrupt: the worker was killed and the session's variables were lost"
            )
            return ExecutionResult(
                stderr=error + "\n",
                exit_code=EXIT_KILLED,
                timed_out=True,
                state_lost=True,
                error=error,
                duration_ms=duration_ms,
            )
        if outcome.died is not None:
            code = outcome.died.exit_code
            how = f"with exit code {code}" if code is not None else "unexpectedly"
            error = (
                f"the sandbox worker exited {how} during execution ({outcome.died.reason}); "
                "the session's variables were lost and the next call starts a fresh worker"
            )
            return ExecutionResult(
                stderr=error + "\n",
                exit_code=code if code is not None else -1,
                state_lost=True,
                error=error,
                duration_ms=duration_ms,
            )
        reply, body = outcome.reply or {}, outcome.body
        if "error" in reply:
            raise SandboxError(f"the sandbox worker could not run the request: {reply['error']}")
        stdout_inline = int(reply.get("stdout_inline", 0))
        stderr_inline = int(reply.get("stderr_inline", 0))
        stdout = body[:stdout_inline].decode("utf-8", "replace")
        stderr = body[stdout_inline : stdout_inline + stderr_inline].decode("utf-8", "replace")
        stdout_bytes = int(reply.get("stdout_bytes", 0))
        stderr_bytes = int(reply.get("stderr_bytes", 0))
        truncated = stdout_bytes > stdout_inline or stderr_bytes > stderr_inline
        exit_code = int(reply.get("exit_code", 0))
        error = None
        if outcome.timed_out:
            exit_code = EXIT_TIMED_OUT
            error = f"{timeout_note} and was interrupted; the session's variables are kept"
        stdout_path = spill.paths.get("stdout")
        stderr_path = spill.paths.get("stderr")
        return ExecutionResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=exit_code,
            timed_out=outcome.timed_out,
            truncated=truncated,
            output_path=str(stdout_path) if stdout_path else None,
            stderr_path=str(stderr_path) if stderr_path else None,
            stdout_bytes=stdout_bytes,
            stderr_bytes=stderr_bytes,
            duration_ms=duration_ms,
            state_lost=state_lost,
            error=error,
        )

    # --- snapshots ----------------------------------------------------------------------

    async def create_snapshot(self, session_id: str, name: str) -> SnapshotId:
        session = self._session(session_id, create=False)
        async with session.lock:
            self._snapshots.check_can_add(session_id, name)
            connection = await self._ensure_worker(session)
            message: dict[str, Any] = {"op": "snapshot"}
            state_file = opened = None
            if self.shares_session_directories:
                state_file = f".conch-snapshot-{secrets.token_hex(8)}"
                message["state_path"] = f"{self._worker_paths(session)[1]}/{state_file}"
            try:
                reply, body = await connection.request(message)
                if "error" in reply:
                    raise SnapshotError(f"the worker could not save its state: {reply['error']}")
                state: bytes | _StateFile = body
                if state_file is not None and reply.get("state_file"):
                    state = opened = await asyncio.to_thread(
                        _StateFile.open, session.paths.scratch, state_file, _state_length(reply)
                    )
                elif "state_file_error" in reply:
                    logger.info(
                        "session %s: the worker sent its state over the channel, as it could "
                        "not write its state file (%s)",
                        session_id,
                        reply["state_file_error"],
                    )
                data = await asyncio.to_thread(self._store_snapshot_data, session, reply, state)
            finally:
                if opened is not None:
                    opened.close()
                if state_file is not None:
                    await asyncio.to_thread(_remove_state_file, session.paths.scratch, state_file)
            return self._snapshots.add(session_id, name, data)

    def _store_snapshot_data(
        self, session: _Session, reply: dict, state: bytes | _StateFile
    ) -> dict:
        files_digest, files_size = self._pack_files(session.paths.work)
        return self._manifest_data(reply, state, files_digest, files_size)

    def _pack_files(self, work: Path) -> tuple[str, int]:
        """Tar the session's directory into one blob; returns its digest and size."""
        writer = self._snapshots.new_blob()
        try:
            _files.pack_directory(work, writer)
        except BaseException:
            writer.discard()
            raise
        size = writer.size
        return writer.commit(), size

    def _manifest_data(
        self,
        reply: dict,
        state: bytes | memoryview | _StateFile,
        files_digest: str,
        files_size: int,
    ) -> dict[str, Any]:
        """A snapshot manifest: each pickled name of the worker's ``snapshot`` reply stored
        as a blob of its own, beside the blob of the session's files. ``state`` is the
        reply's body, or the worker's state file."""
        view = None if isinstance(state, _StateFile) else memoryview(state)
        names, offset = [], 0
        for name, fmt, length in reply["names"]:
            if view is None:
                digest = state.store_blob(self._snapshots, length)
            else:
                digest = self._snapshots.put_blob(view[offset : offset + length])
            names.append([name, fmt, length, digest])
            offset += length
        if view is None:
            state.check_end()
        return {
            "backend": str(self.backend_type()),
            "size": offset + files_size,
            "state": {
                "names": names,
                "unpicklable": reply.get("unpicklable", []),
                "env": reply.get("env", {}),
                "cwd": reply.get("cwd"),
            },
            "files": {"digest": files_digest, "size": files_size},
        }

    def _manifest_to_restore(self, snapshot: SnapshotId | str, session_id: str | None) -> Manifest:
        """The snapshot's manifest, refused unless it belongs to ``session_id`` (and to the
        session a ``SnapshotId`` names) and was made by this backend."""
        snapshot_id = snapshot.id if isinstance(snapshot, SnapshotId) else snapshot
        manifest = self._snapshots.load(snapshot_id)
        owner = manifest.snapshot.session_id
        claimed = [session_id, snapshot.session_id if isinstance(snapshot, SnapshotId) else None]
        for other in claimed:
            if other is not None and other != owner:
                raise SnapshotSessionMismatchError(
                    f"snapshot {snapshot_id} belongs to session {owner!r}, not {other!r}: a "
                    "snapshot can only be restored into its own session"
                )
        backend = manifest.data.get("backend")
        if backend != str(self.backend_type()):
            raise SnapshotError(
                f"snapshot {snapshot_id} was made by the {backend!r} backend; restore it "
                f"with that backend, not {str(self.backend_type())!r}"
            )
        return manifest

    async def restore_snapshot(
        self, snapshot: SnapshotId | str, *, session_id: str | None = None
    ) -> RestoreReport:
        return await self._restore(self._manifest_to_restore(snapshot, session_id))

    async def _restore(self, manifest: Manifest) -> RestoreReport:
        """Put the manifest's session back into its saved state (the manifest is checked)."""
        snapshot_id = manifest.snapshot.id
        session = self._session(manifest.snapshot.session_id)
        async with session.lock:
            # Read and check everything, unpack the files beside the session and start the
            # new worker, all at once; the session is touched only when all three succeeded.
            files_blob = self._snapshots.blob_path(manifest.data["files"]["digest"])
            steps = await asyncio.gather(
                asyncio.to_thread(self._load_verified, manifest),
                asyncio.to_thread(self._unpack_files, session.paths.work, files_blob),
                self._start_worker(session),
                return_exceptions=True,
            )
            failure = next((step for step in steps if isinstance(step, BaseException)), None)
            if failure is not None:
                if isinstance(steps[1], Path):
                    _files.discard(steps[1])
                if isinstance(steps[2], WorkerConnection):
                    await steps[2].kill()
                raise failure
            state, staging, connection = steps
            if session.connection is not None:
                await session.connection.kill()
            _files.move_contents(staging, session.paths.work)
            session.connection = connection
            session.state_lost = False
            request = {
                "op": "restore",
                "names": [entry[:3] for entry in manifest.data["state"]["names"]],
                "env": manifest.data["state"].get("env"),
                "cwd": manifest.data["state"].get("cwd"),
            }
            reply = await self._send_state(session, connection, request, state)
        if "error" in reply:
            raise SnapshotError(
                f"the worker could not load snapshot {snapshot_id}: {reply['error']}"
            )
        return RestoreReport(
            snapshot=manifest.snapshot,
            restored=tuple(reply.get("restored", ())),
            failed=tuple(f"{name}: {why}" for name, why in reply.get("failed", ())),
        )

    async def _send_state(
        self, session: _Session, connection: WorkerConnection, request: dict, state: bytes
    ) -> dict:
        """Send the ``restore`` request with the state in a file of the session's inputs
        (read-only inside every isolating backend) where the worker shares them; as its body
        where not, or when the file cannot be written or read."""
        if self.shares_session_directories:
            # A copy, never a hard link to the blobs: a local worker runs as the host user
            # with no read-only mounts and could write through a link into the store. The
            # state is in memory anyway (hashed on its way), and a copy costs milliseconds.
            name = f".conch-restore-{secrets.token_hex(8)}"
            try:
                await asyncio.to_thread(_write_state_file, session.paths.inputs, name, state)
            except OSError as exc:
                logger.info("session %s: restoring over the channel: %s", session.id, exc)
            else:
                path = f"{self._inputs_path(session)}/{name}"
                try:
                    reply, _ = await connection.request({**request, "state_path": path})
                finally:
                    await asyncio.to_thread(_remove_state_file, session.paths.inputs, name)
                if "state_file_error" not in reply:
                    return reply
                logger.info(
                    "session %s: restoring over the channel, as the worker could not read its "
                    "state file (%s)",
                    session.id,
                    reply["state_file_error"],
                )
        reply, _ = await connection.request(request, state)
        return reply

    def _unpack_files(self, work: Path, archive: Path) -> Path:
        """Unpack a snapshot's files into a staging directory beside ``work``; return it.
        A backend whose sandbox user is not the host's adjusts ownership here."""
        return _files.unpack_beside(work, archive)

    def _load_verified(self, manifest) -> bytes:
        snapshot_id = manifest.snapshot.id
        self._snapshots.verify_blob(manifest.data["files"]["digest"], snapshot_id)
        return b"".join(
            self._snapshots.read_verified_blob(entry[3], snapshot_id)
            for entry in manifest.data["state"]["names"]
        )

    async def list_snapshots(self, session_id: str) -> Sequence[SnapshotId]:
        if not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
            raise ConfigurationError(f"invalid session id {session_id!r}")
        return self._snapshots.list(session_id)

    async def delete_snapshot(self, snapshot: SnapshotId | str) -> None:
        snapshot_id = snapshot.id if isinstance(snapshot, SnapshotId) else snapshot
        await asyncio.to_thread(self._snapshots.delete, snapshot_id)

    async def delete_session_snapshots(self, session_id: str) -> None:
        if not _SESSION_ID.match(session_id):
            raise ConfigurationError(f"invalid session id {session_id!r}")
        await asyncio.to_thread(self._snapshots.delete_session, session_id)

    # --- lifecycle ----------------------------------------------------------------------

    async def health_check(self) -> bool:
        if self._closed:
            return False
        probe_id = f"health-{os.getpid()}-{id(self)}"
        try:
            session = self._session(probe_id)
            connection = await self._ensure_worker(session)
            reply, _ = await asyncio.wait_for(connection.request({"op": "ping"}), 30)
            return bool(reply.get("pong"))
        except Exception as exc:
            logger.warning("%s health check failed: %s", self.backend_type(), exc)
            return False
        finally:
            with contextlib.suppress(Exception):
                await self._end(probe_id, delete_snapshots=True)

    async def end_session(self, session_id: str) -> None:
        await self._end(session_id, delete_snapshots=True)

    async def suspend_session(self, session_id: str) -> None:
        await self._end(session_id, delete_snapshots=False)

    async def _end(self, session_id: str, *, delete_snapshots: bool) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            if session.connection is not None:
                await session.connection.shutdown()
                session.connection = None
            self._on_session_end(session)
            await asyncio.to_thread(shutil.rmtree, session.paths.root, True)
        if delete_snapshots and _SESSION_ID.match(session_id):
            await asyncio.to_thread(self._snapshots.delete_session, session_id)

    async def cleanup(self) -> None:
        """Stop every worker. A temporary root is removed; a given root keeps its snapshots."""
        if self._closed:
            return
        sessions = list(self._sessions.values())
        await asyncio.gather(
            *(s.connection.kill() for s in sessions if s.connection is not None),
            return_exceptions=True,
        )
        for session in sessions:
            session.connection = None
            self._on_session_end(session)
        self._sessions.clear()
        self._closed = True
        if self._owns_root:
            await asyncio.to_thread(shutil.rmtree, self.root, True)

    def _python_argv(self, agent_path: str, worker_config: dict[str, Any]) -> list[str]:
        # -S skips site.py, whose .pth hooks cost tens of ms at every start; the worker adds
        # the site-packages directories itself, so installed packages stay importable.
        config = {**worker_config, "site_packages": _site_packages()}
        return [sys.executable, "-I", "-S", agent_path, json.dumps(config)]


@functools.cache
def _site_packages() -> list[str]:
    import site

    return [path for path in site.getsitepackages() if os.path.isdir(path)]


def _write_atomically(target: Path, data: bytes | bytearray | memoryview) -> None:
    staging = target.with_name(target.name + ".partial")
    staging.write_bytes(data)
    os.replace(staging, target)


def _link_or_copy(source: Path, target: Path) -> None:
    if not source.is_file():
        raise ConfigurationError(f"cannot upload {source}: it is not a readable file")
    staging = target.with_name(target.name + ".partial")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:  # another filesystem, or links not allowed: copy in chunks
        shutil.copyfile(source, staging)
    os.replace(staging, target)


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_STATE_CHUNK = 1024 * 1024
_REFUSED = "refused (was it replaced from inside the sandbox?); no snapshot was made"


def _state_length(reply: dict) -> int:
    """How many bytes of state a ``snapshot`` reply says the worker wrote."""
    try:
        lengths = [entry[2] for entry in reply["names"]]
    except (KeyError, TypeError, IndexError):
        raise SnapshotError("the worker's snapshot reply does not list its names") from None
    if not all(type(length) is int and length >= 0 for length in lengths):
        raise SnapshotError("the worker's snapshot reply names impossible lengths: refused")
    total = sum(lengths)
    if total > protocol.MAX_BODY_BYTES:
        raise SnapshotError(f"the worker claims {total} bytes of state, more than any frame")
    return total


class _StateFile:
    """The state file a worker wrote, in a directory the sandbox can write too: opened without
    following links and read once, from start to end, never past the length it claimed."""

    def __init__(self, fd: int, where: str) -> None:
        self.fd = fd
        self.where = where

    @classmethod
    def open(cls, directory: Path, name: str, length: int) -> _StateFile:
        """Open ``name`` in ``directory``: a link, a FIFO, a directory, a file with other
        links or of another size than ``length`` is refused."""
        where = f"the state file {name} in {directory}"
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            dir_fd = os.open(directory, _DIRECTORY_FLAGS)
            try:
                fd = os.open(name, flags, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise SnapshotError(f"{where} cannot be opened ({exc.strerror}): {_REFUSED}") from None
        state = cls(fd, where)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
                raise SnapshotError(f"{where} is {kind}: {_REFUSED}")
            if info.st_nlink != 1:
                raise SnapshotError(f"{where} has {info.st_nlink} links, not one: {_REFUSED}")
            if info.st_size != length:
                raise SnapshotError(
                    f"{where} holds {info.st_size} bytes but the worker's reply claims "
                    f"{length}: {_REFUSED}"
                )
        except BaseException:
            state.close()
            raise
        return state

    def store_blob(self, store: SnapshotStore, length: int) -> str:
        """Copy the next ``length`` bytes into a blob of ``store``, in chunks (a large state
        is never held whole); return its digest."""
        buffer = memoryview(bytearray(min(length, _STATE_CHUNK) or 1))
        writer = store.new_blob()
        try:
            while writer.size < length:
                count = os.readv(self.fd, [buffer[: length - writer.size]])
                if not count:
                    raise SnapshotError(f"{self.where} shrank while it was read: {_REFUSED}")
                writer.write(buffer[:count])
        except BaseException:
            writer.discard()
            raise
        return writer.commit()

    def check_end(self) -> None:
        if os.read(self.fd, 1):
            raise SnapshotError(f"{self.where} grew while it was read: {_REFUSED}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_state_file(directory: Path, name: str, data: bytes | memoryview) -> None:
    """Write ``data`` to a new file ``name`` in ``directory``, readable by the sandbox user."""
    dir_fd = os.open(directory, _DIRECTORY_FLAGS)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o444, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o444)  # whatever the umask: the sandbox user may not be the host's
            with open(fd, "wb", closefd=False) as handle:
                handle.write(data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _remove_state_file(directory: Path, name: str) -> None:
    """Remove whatever is at ``name`` in ``directory`` now, never following a link."""
    try:
        dir_fd = os.open(directory, _DIRECTORY_FLAGS)
    except OSError:
        return  # the directory is gone (the session ended): so is the file
    try:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:  # planted by the sandbox: rmtree with dir_fd follows no link
            shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
        except OSError as exc:
            logger.warning("could not remove the state file %s in %s: %s", name, directory, exc)
    finally:
        os.close(dir_fd)


@dataclass
class _Outcome:
    reply: dict | None
    body: bytes
    timed_out: bool = False
    killed: bool = False
    died: WorkerDied | None = None
