"""The ``e2b`` backend: each session's worker runs as a process in its own E2B cloud sandbox.

Built on the official ``e2b`` SDK (``pip install 'conch[e2b]'``), its async API only:

- ``AsyncSandbox.create(template, timeout=, allow_internet_access=, api_key=)`` makes the
  session's sandbox; ``sandbox.files.make_dir`` / ``files.write`` put the worker
  (``agent.py``, ``protocol.py``) into it;
- ``sandbox.commands.run(cmd, background=True, stdin=True, on_stdout=, on_stderr=,
  timeout=0)`` starts the worker; the returned handle's ``pid``, ``wait()``, ``kill()`` and
  ``disconnect()`` control it;
- ``sandbox.commands.send_stdin(pid, bytes)`` carries the host's frames to the worker; its
  stdout comes back through the ``on_stdout`` callback as text (the SDK decodes it as UTF-8),
  so the worker runs in text mode (``"channel": "text"``: one base64 line per frame, see
  ``protocol.TEXT_FRAME_PREFIX``); the host's frames stay binary;
- ``sandbox.pause()``, ``AsyncSandbox.connect(sandbox_id)`` and ``sandbox.commands.connect(pid,
  on_stdout=)`` park an idle session and resume it with its worker (:meth:`pause_session`);
- with ``vm_snapshots=True``, ``sandbox.create_snapshot()`` saves the whole sandbox (memory and
  files), ``AsyncSandbox.create(snapshot_id)`` starts one from it and
  ``AsyncSandbox.delete_snapshot(snapshot_id)`` deletes it.

Snapshots always also hold what every backend's do (interpreter state name by name, the
session's files packed by the worker, the environment), stored and hash-verified on the host.

Nothing here has run against E2B's service from this machine (no network but the package
registries, no key): the tests drive it through a fake of exactly the SDK surface above, and
a real test runs where ``E2B_API_KEY`` is set and the service is reachable. docs/sandboxes.md
says what was and was not verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import os
import shlex
import socket
from dataclasses import dataclass
from typing import Any

from conch.errors import ConfigurationError, SandboxError, SnapshotError
from conch.sandbox._connection import WorkerConnection, WorkerDied
from conch.sandbox._remote import RemoteWorkerEnvironment
from conch.sandbox._snapshots import Manifest
from conch.sandbox._types import BackendType, Capability, SnapshotId
from conch.sandbox._worker_environment import (
    WORKER_CAPABILITIES,
    InsidePaths,
    ResourceLimits,
    _Session,
)
from conch.sandbox.worker import AGENT_PATH, WORKER_DIR, protocol

logger = logging.getLogger("conch.sandbox")

GUEST_BASE = "/home/user/.conch"
GUEST_WORK = "/home/user/session"
GUEST_SCRATCH = f"{GUEST_BASE}/scratch"
GUEST_TMP = f"{GUEST_BASE}/tmp"
GUEST_INPUTS = "/home/user/inputs"
GUEST_WORKER_DIR = f"{GUEST_BASE}/worker"
_STDIN_CHUNK = 512 * 1024
_STDIN_HIGH_WATER = 4 * 1024 * 1024
_REATTACH_TIMEOUT_S = 30.0
"""How long a resumed worker has to answer its first ping."""

_CAPABILITIES = WORKER_CAPABILITIES | {
    Capability.PROCESS_ISOLATION,
    Capability.FILESYSTEM_ISOLATION,
    Capability.RESOURCE_LIMITS,
}

DEFAULT_LIMITS = ResourceLimits(max_file_bytes=1 << 30, open_files=4096)


def _load_sdk() -> Any:
    return importlib.import_module("e2b")


class _TextFrames:
    """The worker's stdout (text chunks, split anywhere) turned back into a byte stream.

    Lines before the first frame that are not frames (a login shell's greeting) are set
    aside; after it, such a line means the channel is garbled (user code wrote into it)."""

    def __init__(self, *, framed: bool = False) -> None:
        self.reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
        self._pending = bytearray()
        self._framed = framed
        self.noise: list[str] = []
        """Lines that were not frames (before the first frame), for error messages."""

    def feed(self, chunk: str) -> None:
        if self.reader.at_eof():
            return
        self._pending += chunk.encode("utf-8")
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            try:
                frame = protocol.decode_text_frame(line)
            except protocol.FrameError as exc:
                self.reader.set_exception(exc)
                return
            if frame is None and not line.strip():
                continue
            if frame is None and self._framed:
                shown = line[:80].decode("utf-8", "replace")
                self.reader.set_exception(
                    protocol.FrameError(
                        f"the worker's output holds a line that is no frame: {shown!r}"
                    )
                )
                return
            if frame is None:
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    self.noise = [*self.noise[-19:], text]
                    logger.debug("e2b worker stdout (not a frame): %s", text)
            else:
                self._framed = True
                self.reader.feed_data(frame)

    def end(self) -> None:
        if not self.reader.at_eof():
            self.reader.feed_eof()


class _StdinWriter:
    """A stream writer whose bytes go to the worker's stdin through ``send_stdin``, in order:
    one task sends, so frames never overtake each other."""

    def __init__(self, commands: Any, pid: int) -> None:
        self._commands = commands
        self._pid = pid
        self._buffer = bytearray()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False
        self.error: BaseException | None = None
        self._task = asyncio.ensure_future(self._pump())

    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            return
        self._buffer += data
        self._drained.clear()
        self._wake.set()

    async def drain(self) -> None:
        if len(self._buffer) > _STDIN_HIGH_WATER:
            await self._drained.wait()
        if self.error is not None:
            raise ConnectionError(f"sending to the E2B worker's stdin failed: {self.error}")

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._buffer.clear()
        self._wake.set()
        self._drained.set()

    async def _pump(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer and not self._closed:
                chunk = bytes(self._buffer[:_STDIN_CHUNK])
                del self._buffer[:_STDIN_CHUNK]
                try:
                    await self._commands.send_stdin(self._pid, chunk)
                except Exception as exc:
                    self.error = exc
                    logger.warning("sending to the E2B worker's stdin failed: %s", exc)
                    self._closed = True
            self._drained.set()


class _CommandProcess:
    """The :class:`WorkerProcess` of a worker running as an E2B command.

    ``detached``: stopping this connection only disconnects from the command (it keeps
    running in the sandbox, for a pause or a sandbox snapshot)."""

    def __init__(
        self, handle: Any, frames: _TextFrames, writer: _StdinWriter, exit_error: Any = ()
    ) -> None:
        self.handle = handle
        self._exit_error = exit_error
        self.frames = frames
        self.writer = writer
        self.detached = False
        self.failure: BaseException | None = None
        self._returncode: int | None = None
        self._done = asyncio.Event()
        self._watcher = asyncio.ensure_future(self._watch())
        self._kill_task: asyncio.Future | None = None

    async def _watch(self) -> None:
        exit_error = self._exit_error
        try:
            result = await self.handle.wait()
            self._returncode = int(getattr(result, "exit_code", 0) or 0)
        except asyncio.CancelledError:
            self._returncode = -1
            raise
        except Exception as exc:
            if exit_error and isinstance(exc, exit_error):
                self._returncode = int(exc.exit_code)
            else:
                self.failure = exc
                self._returncode = -1
        finally:
            self.frames.end()
            self._done.set()

    @property
    def pid(self) -> int | None:
        return self.handle.pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int | None:
        if self.detached:
            return self._returncode
        await self._done.wait()
        return self._returncode

    def kill(self) -> None:
        if self._done.is_set() or self._kill_task is not None:
            return
        self._kill_task = asyncio.ensure_future(self._stop())

    async def _stop(self) -> None:
        try:
            if self.detached:
                await self.handle.disconnect()
                self.frames.end()
            else:
                await self.handle.kill()
        except Exception as exc:  # the sandbox is gone: there is nothing left to stop
            logger.info("stopping the E2B worker: %s", exc)
            self.frames.end()
            if not self.detached:
                self._watcher.cancel()
                self._returncode = -1
                self._done.set()


@dataclass
class _Box:
    """The session's E2B sandbox and the worker process running in it."""

    sandbox: Any
    worker_pid: int | None = None
    incarnation: str | None = None
    paused: bool = False


class E2BEnvironment(RemoteWorkerEnvironment):
    """Sessions in E2B cloud sandboxes (one per session), spoken to over the worker's stdio.

    ``api_key`` defaults to ``$E2B_API_KEY``; ``template`` is the sandbox template (it must
    have ``python3``; E2B's default ``base`` has). No internet access unless ``network``.
    ``sdk`` replaces the ``e2b`` module (the tests pass a fake of the surface used here)."""

    inside_paths = InsidePaths(GUEST_WORK, GUEST_SCRATCH, GUEST_TMP, GUEST_INPUTS)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        template: str | None = None,
        sandbox_timeout_s: int = 3600,
        network: bool = False,
        vm_snapshots: bool = False,
        python: str = "python3",
        sdk: Any = None,
        **options: Any,
    ) -> None:
        self._sdk = sdk if sdk is not None else _load_sdk()
        self.api_key = api_key or os.environ.get("E2B_API_KEY")
        if not self.api_key and sdk is None:
            raise ConfigurationError(
                "the e2b backend needs an E2B API key: pass api_key= or set E2B_API_KEY"
            )
        self.template = template
        self.sandbox_timeout_s = sandbox_timeout_s
        self.network = network
        self.vm_snapshots = vm_snapshots
        self.python = python
        if vm_snapshots and not hasattr(self._sdk.AsyncSandbox, "create_snapshot"):
            raise ConfigurationError(
                "vm_snapshots needs an e2b SDK with AsyncSandbox.create_snapshot (e2b 2.x, "
                "verified with 2.63): upgrade the e2b package"
            )
        super().__init__(**options)
        self._boxes: dict[str, _Box] = {}
        self._restoring: dict[str, _Box] = {}
        """Sandboxes made from E2B snapshots while a restore runs, by session."""

    # --- what the contract asks -----------------------------------------------------------

    def default_limits(self) -> ResourceLimits:
        return DEFAULT_LIMITS

    def capabilities(self) -> frozenset[Capability]:
        caps = set(_CAPABILITIES)
        if not self.network:
            caps.add(Capability.NETWORK_ISOLATION)
        if self.vm_snapshots:
            caps.add(Capability.VM_SNAPSHOT)
        return frozenset(caps)

    def backend_type(self) -> BackendType:
        return BackendType.E2B

    # --- sandboxes ------------------------------------------------------------------------

    def _api(self) -> dict[str, Any]:
        return {"api_key": self.api_key} if self.api_key else {}

    async def _new_sandbox(self, template: str | None = None) -> Any:
        options: dict[str, Any] = {
            "timeout": self.sandbox_timeout_s,
            "allow_internet_access": self.network,
            **self._api(),
        }
        chosen = template or self.template
        if chosen:
            options["template"] = chosen
        try:
            return await self._sdk.AsyncSandbox.create(**options)
        except Exception as exc:
            raise SandboxError(f"E2B could not create a sandbox: {_describe(exc)}") from exc

    async def _install_worker(self, sandbox: Any) -> None:
        for directory in (GUEST_WORKER_DIR, GUEST_WORK, GUEST_SCRATCH, GUEST_TMP, GUEST_INPUTS):
            await sandbox.files.make_dir(directory)
        for name in ("agent.py", "protocol.py"):
            await sandbox.files.write(
                f"{GUEST_WORKER_DIR}/{name}", (WORKER_DIR / name).read_bytes()
            )

    def worker_config(self) -> dict[str, Any]:
        return {
            "cwd": GUEST_WORK,
            "scratch": GUEST_SCRATCH,
            "limits": self.limits.to_worker(),
            "max_spill_bytes": self._max_spill_bytes,
            "channel": "text",
        }

    def worker_command(self) -> str:
        config = json.dumps(self.worker_config(), separators=(",", ":"))
        agent = f"{GUEST_WORKER_DIR}/{AGENT_PATH.name}"
        return f"exec {shlex.quote(self.python)} -I {shlex.quote(agent)} {shlex.quote(config)}"

    async def _connect(self, session: _Session, worker_config: dict[str, Any]) -> WorkerConnection:
        box = self._boxes.get(session.id)
        if box is not None and box.paused:
            connection = await self._resume(session, box)
            if connection is not None:
                return connection
            session.state_lost = True
            box = None
        if box is not None and not await self._running(box.sandbox):
            await self._kill_box(session.id)
            box = None
        if box is None:
            sandbox = await self._new_sandbox()
            box = self._boxes[session.id] = _Box(sandbox)
            try:
                await self._install_worker(sandbox)
            except Exception as exc:
                await self._kill_box(session.id)
                raise SandboxError(
                    f"could not put the worker into E2B sandbox: {_describe(exc)}"
                ) from exc
        return await self._start_in(session, box)

    async def _running(self, sandbox: Any) -> bool:
        try:
            return bool(await sandbox.is_running())
        except Exception:
            return False

    async def _start_in(self, session: _Session, box: _Box) -> WorkerConnection:
        frames = _TextFrames()
        try:
            handle = await box.sandbox.commands.run(
                self.worker_command(),
                background=True,
                stdin=True,
                on_stdout=frames.feed,
                on_stderr=functools.partial(_log_stderr, session.paths.log),
                cwd=GUEST_WORK,
                envs=self._guest_env(),
                timeout=0,
            )
        except Exception as exc:
            raise SandboxError(
                f"E2B could not start the worker in sandbox "
                f"{getattr(box.sandbox, 'sandbox_id', '?')}: {_describe(exc)}"
            ) from exc
        writer = _StdinWriter(box.sandbox.commands, handle.pid)
        process = _CommandProcess(handle, frames, writer, self._exit_error())
        connection = await WorkerConnection.attach(
            frames.reader, writer, process, log_path=session.paths.log
        )
        box.worker_pid = handle.pid
        reply, _ = await connection.request({"op": "ping"})
        box.incarnation = reply.get("incarnation")
        return connection

    async def _reattach(self, sandbox: Any, pid: int) -> WorkerConnection:
        """Connect to a worker that already runs (after a resume): no hello comes, so a ping
        proves it answers."""
        frames = _TextFrames(framed=True)
        handle = await sandbox.commands.connect(pid, on_stdout=frames.feed, timeout=0)
        writer = _StdinWriter(sandbox.commands, pid)
        process = _CommandProcess(handle, frames, writer, self._exit_error())
        return await WorkerConnection.attach(
            frames.reader, writer, process, hello=False, start_timeout_s=_REATTACH_TIMEOUT_S
        )

    def _exit_error(self) -> Any:
        return getattr(self._sdk, "CommandExitException", ())

    def _guest_env(self) -> dict[str, str]:
        env = {"HOME": GUEST_WORK, "TMPDIR": GUEST_TMP, "LANG": "C.UTF-8"}
        env.update(self._base_env)
        return env

    async def _await_reply(self, session, connection, message, ctx, spill):
        outcome = await super()._await_reply(session, connection, message, ctx, spill)
        process = connection.process
        if outcome.died is not None and isinstance(process, _CommandProcess):
            box = self._boxes.get(session.id)
            sandbox_id = getattr(box.sandbox, "sandbox_id", "?") if box else "?"
            if process.failure is not None:
                what = f"the E2B sandbox {sandbox_id} is gone ({_describe(process.failure)})"
            else:
                what = f"the worker in E2B sandbox {sandbox_id} ended"
            outcome.died = WorkerDied(f"{what}: {outcome.died.reason}", outcome.died.exit_code)
        return outcome

    # --- pause and resume -------------------------------------------------------------------

    async def pause_session(self, session_id: str) -> None:
        """Pause the session's sandbox (E2B keeps its memory and files, and bills storage
        only); the next call in the session resumes it with its variables."""
        session = self._session(session_id, create=False)
        async with session.lock:
            box = self._boxes.get(session_id)
            if box is None or box.paused:
                return
            await self._detach(session)
            try:
                await box.sandbox.pause()
            except Exception as exc:
                raise SandboxError(f"E2B could not pause the sandbox: {_describe(exc)}") from exc
            box.paused = True

    async def _detach(self, session: _Session) -> None:
        connection = session.connection
        session.connection = None
        if connection is not None:
            process = connection.process
            if isinstance(process, _CommandProcess):
                process.detached = True
            await connection.kill()

    async def _resume(self, session: _Session, box: _Box) -> WorkerConnection | None:
        sandbox_id = getattr(box.sandbox, "sandbox_id", None)
        try:
            sandbox = await self._sdk.AsyncSandbox.connect(
                sandbox_id, timeout=self.sandbox_timeout_s, **self._api()
            )
            box.sandbox, box.paused = sandbox, False
            if box.worker_pid is None:
                return None
            connection = await self._reattach(sandbox, box.worker_pid)
        except Exception as exc:
            logger.warning("could not resume E2B sandbox %s: %s", sandbox_id, _describe(exc))
            await self._kill_box(session.id)
            return None
        return connection

    # --- whole-sandbox snapshots -------------------------------------------------------------

    async def _save_machine(self, session: _Session) -> dict[str, Any] | None:
        box = self._boxes.get(session.id)
        if not self.vm_snapshots or box is None:
            return None
        await self._detach(session)  # the sandbox is paused while it is saved
        failure = None
        try:
            info = await box.sandbox.create_snapshot()
        except Exception as exc:
            failure = exc
        try:
            session.connection = await self._reattach(box.sandbox, box.worker_pid)
        except Exception as exc:
            session.state_lost = True
            await self._kill_box(session.id)
            raise SnapshotError(
                f"the E2B worker did not answer after the sandbox snapshot ({_describe(exc)}); "
                "the session's variables were lost and the next call starts a fresh sandbox"
            ) from exc
        if failure is not None:
            raise SnapshotError(f"E2B could not snapshot the sandbox: {_describe(failure)}")
        return {"kind": "e2b", "snapshot_id": info.snapshot_id, "worker_pid": box.worker_pid}

    async def _load_machine(self, session: _Session, manifest: Manifest) -> WorkerConnection | None:
        machine = manifest.data["machine"]
        if machine.get("kind") != "e2b":
            raise SnapshotError(f"snapshot {manifest.snapshot.id} holds no E2B sandbox snapshot")
        sandbox = await self._new_sandbox(template=machine["snapshot_id"])
        try:
            try:
                connection = await self._reattach(sandbox, int(machine["worker_pid"]))
                worker_pid = int(machine["worker_pid"])
            except Exception as exc:
                logger.warning("no worker to reattach to in the restored sandbox: %s", exc)
                await self._install_worker(sandbox)
                box = _Box(sandbox)
                connection = await self._start_in(session, box)
                worker_pid = box.worker_pid
        except BaseException:
            with contextlib.suppress(Exception):
                await sandbox.kill()
            raise
        # The new sandbox becomes the session's once the restore completes; until then the
        # old one stays (see restore_snapshot).
        self._restoring[session.id] = _Box(sandbox, worker_pid)
        return connection

    async def restore_snapshot(self, snapshot, *, session_id=None):
        try:
            report = await super().restore_snapshot(snapshot, session_id=session_id)
        except BaseException:
            owner = self._owner_of(snapshot)
            box = self._restoring.pop(owner, None) if owner else None
            if box is not None:
                with contextlib.suppress(Exception):
                    await box.sandbox.kill()
            raise
        owner = report.snapshot.session_id
        box = self._restoring.pop(owner, None)
        if box is not None:
            old = self._boxes.get(owner)
            self._boxes[owner] = box
            if old is not None and old.sandbox is not box.sandbox:
                with contextlib.suppress(Exception):
                    await old.sandbox.kill()
        return report

    def _owner_of(self, snapshot: SnapshotId | str) -> str | None:
        if isinstance(snapshot, SnapshotId):
            return snapshot.session_id
        try:
            return self._snapshots.load(snapshot).snapshot.session_id
        except Exception:
            return None

    async def delete_snapshot(self, snapshot: SnapshotId | str) -> None:
        snapshot_id = snapshot.id if isinstance(snapshot, SnapshotId) else snapshot
        with contextlib.suppress(Exception):
            await self._delete_remote(self._snapshots.load(snapshot_id))
        await super().delete_snapshot(snapshot)

    async def delete_session_snapshots(self, session_id: str) -> None:
        for snapshot in self._snapshots.list(session_id):
            with contextlib.suppress(Exception):
                await self._delete_remote(self._snapshots.load(snapshot.id))
        await super().delete_session_snapshots(session_id)

    async def _delete_remote(self, manifest: Manifest) -> None:
        machine = manifest.data.get("machine") or {}
        if machine.get("kind") == "e2b":
            await self._sdk.AsyncSandbox.delete_snapshot(machine["snapshot_id"], **self._api())

    # --- lifecycle ---------------------------------------------------------------------------

    async def _kill_box(self, session_id: str) -> None:
        box = self._boxes.pop(session_id, None)
        if box is not None:
            try:
                await box.sandbox.kill()
            except Exception as exc:
                logger.info("killing E2B sandbox: %s", _describe(exc))

    async def _end(self, session_id: str, *, delete_snapshots: bool) -> None:
        if delete_snapshots and _session_id_ok(session_id):
            for snapshot in self._snapshots.list(session_id):
                with contextlib.suppress(Exception):
                    await self._delete_remote(self._snapshots.load(snapshot.id))
        await super()._end(session_id, delete_snapshots=delete_snapshots)
        await self._kill_box(session_id)

    async def cleanup(self) -> None:
        if self._closed:
            return
        await super().cleanup()
        await asyncio.gather(*(self._kill_box(sid) for sid in list(self._boxes)))


def _session_id_ok(session_id: str) -> bool:
    from conch.sandbox._worker_environment import _SESSION_ID

    return bool(_SESSION_ID.match(session_id))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _log_stderr(path, chunk: str) -> None:
    with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as log:
        log.write(chunk)


def e2b_works(api_key: str | None = None) -> tuple[bool, str]:
    """Whether E2B sandboxes can be used from here, and if not, why (no sandbox is made)."""
    return _e2b_works(bool(api_key or os.environ.get("E2B_API_KEY")))


@functools.cache
def _e2b_works(have_key: bool) -> tuple[bool, str]:
    try:
        sdk = _load_sdk()
    except ImportError:
        return False, "the e2b SDK is not installed (pip install 'conch[e2b]')"
    if not have_key:
        return False, "E2B_API_KEY is not set (E2B sandboxes run in E2B's cloud and need a key)"
    domain = os.environ.get("E2B_DOMAIN") or "e2b.app"
    host = f"api.{domain}"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        return False, f"E2B's API ({host}:443) cannot be reached from here: {exc}"
    version = getattr(sdk, "__version__", None) or _sdk_version()
    return True, f"E2B_API_KEY is set and {host} is reachable (e2b SDK {version})"


def _sdk_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("e2b")
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["E2BEnvironment", "e2b_works"]
