"""The host's end of one running worker: start it, send requests, serve its callbacks.

A reader task owns the worker's output stream. It resolves replies (``res``) to the
waiting request, appends streamed output (``out``) to spill files, runs host functions for
callbacks (``call``) and sends back their results (``ret``), and notices when the worker
dies (end of stream, a keeper's ``exit`` frame, or a garbled frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from conch.errors import ProtocolError, SandboxError
from conch.sandbox._types import HostFunction
from conch.sandbox.worker import protocol

logger = logging.getLogger("conch.sandbox")

_STREAM_LIMIT = 16 * 1024 * 1024
_PIPE_BYTES = 1024 * 1024
_WRITE_CHUNK = 1024 * 1024
_START_TIMEOUT_S = 30.0


class WorkerDied(SandboxError):
    """The worker process ended (or garbled its channel) while a request was outstanding."""

    def __init__(self, reason: str, exit_code: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class SpillFiles:
    """Where a request's streamed output goes: one file per stream, opened on first use."""

    directory: Path
    stem: str
    paths: dict[str, Path] = field(default_factory=dict)
    _files: dict[str, BinaryIO] = field(default_factory=dict)

    def write(self, stream: str, data: bytes) -> None:
        handle = self._files.get(stream)
        if handle is None:
            path = self.directory / f"{self.stem}.{stream}"
            handle = self._files[stream] = open(path, "wb")  # noqa: SIM115 (closed in close())
            self.paths[stream] = path
        handle.write(data)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


@dataclass(frozen=True)
class LaunchSpec:
    """How a backend starts its worker: the argv and the process settings around it."""

    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    pass_fds: Sequence[int] = ()
    log_path: Path | None = None
    keeper: bool = False
    """The worker runs under a keeper process that reports its exit status in a frame
    (the launched process's own status is then the keeper's, not the worker's)."""


class WorkerProcess(Protocol):
    """What the host controls of a running worker, whatever runs it (a child process, a
    container, a VM): whether it has ended, waiting for that, and a hard stop.

    It may also have an ``end_reason`` attribute (``str | None``): why it ended when no
    keeper reported it (e.g. "the container was removed from outside"), read after ``wait``."""

    @property
    def pid(self) -> int | None:
        """The host-side process id, for logs (``None`` when there is none, e.g. a VM)."""

    @property
    def returncode(self) -> int | None:
        """``None`` while running; the exit status once it has ended."""

    async def wait(self) -> int | None: ...

    def kill(self) -> None:
        """Stop it at once, with everything it started (best effort, never raises)."""


class ChildProcess:
    """A worker started as a host child process, in a process group of its own."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int | None:
        return await self._process.wait()

    def kill(self) -> None:
        if self._process.returncode is not None:
            return
        # os.kill, not process.kill(): Popen.send_signal() polls first and would reap
        # the child under asyncio's watcher, which then reports a bogus status of 255.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self._process.pid, signal.SIGKILL)


class WorkerConnection:
    """One framed channel to one worker: any byte stream pair (a child's pipes, a unix or
    vsock socket, a container's attached stream) plus the :class:`WorkerProcess` behind it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        process: WorkerProcess,
        *,
        keeper: bool = False,
    ) -> None:
        self.process = process
        self._reader = reader
        self._writer = writer
        self._keeper = keeper
        self.pid: int | None = None  # the worker's pid as the worker sees it
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[tuple[dict, bytes]]] = {}
        self._spills: dict[int, SpillFiles] = {}
        self._host_functions: Mapping[str, HostFunction] = {}
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._hello: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._reported_exit: int | None = None
        self._write_lock = asyncio.Lock()
        self.death: WorkerDied | None = None
        self._reader_task = asyncio.create_task(self._read_loop(), name="conch-worker-reader")

    # --- lifecycle ----------------------------------------------------------------------

    @classmethod
    async def start(cls, spec: LaunchSpec) -> WorkerConnection:
        """Start the worker as a child process and speak to it over its stdin and stdout."""
        log = open(spec.log_path, "ab") if spec.log_path else None  # noqa: SIM115
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log if log is not None else asyncio.subprocess.DEVNULL,
                env=dict(spec.env) if spec.env is not None else None,
                cwd=spec.cwd,
                pass_fds=tuple(spec.pass_fds),
                start_new_session=True,  # its own process group: killed as a whole
                limit=_STREAM_LIMIT,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start the sandbox worker ({spec.argv[0]}): {exc}") from exc
        finally:
            if log is not None:
                log.close()
        _widen_pipes(process)
        assert process.stdin is not None and process.stdout is not None
        return await cls.attach(
            process.stdout,
            process.stdin,
            ChildProcess(process),
            keeper=spec.keeper,
            log_path=spec.log_path,
        )

    @classmethod
    async def attach(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        process: WorkerProcess,
        *,
        keeper: bool = False,
        log_path: Path | None = None,
        start_timeout_s: float = _START_TIMEOUT_S,
        hello: bool = True,
    ) -> WorkerConnection:
        """Speak to a worker that is already running, once it says hello on the stream.

        Backends whose worker is not a plain child (a container, a VM, a restored
        checkpoint) connect the stream themselves and hand it over here. If no hello comes,
        the worker is killed and the error quotes the tail of its log. ``hello=False`` is for
        a worker that said hello long ago (one restored from a checkpoint): a ping must be
        answered instead."""
        connection = cls(reader, writer, process, keeper=keeper)
        try:
            if hello:
                greeting = await asyncio.wait_for(
                    asyncio.shield(connection._hello), start_timeout_s
                )
            else:
                connection._hello.add_done_callback(_retrieve)  # no hello is awaited
                greeting, _ = await asyncio.wait_for(
                    connection.request({"op": "ping"}), start_timeout_s
                )
        except (TimeoutError, WorkerDied, ProtocolError) as exc:
            await connection.kill()
            detail = _tail(log_path)
            raise SandboxError(
                f"the sandbox worker did not start: {exc}."
                + (f" Its log says: {detail}" if detail else "")
            ) from exc
        connection.pid = greeting.get("pid")
        return connection

    @property
    def alive(self) -> bool:
        return self.death is None and self.process.returncode is None

    async def kill(self) -> None:
        """Kill the worker (with everything it started) and wait for the reader to finish."""
        if self.process.returncode is None:
            self.process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.process.wait(), 10)
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader_task, 10)
        for task in list(self._callback_tasks):
            task.cancel()
        self._fail_pending(WorkerDied("the worker was stopped", self.exit_code))

    async def shutdown(self, timeout_s: float = 2.0) -> None:
        if self.alive:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.request({"op": "shutdown"}), timeout_s)
        await self.kill()

    @property
    def exit_code(self) -> int | None:
        if self._keeper:  # the process we started is the keeper; only its report counts
            return self._reported_exit
        return self.process.returncode

    # --- requests ---------------------------------------------------------------------

    async def request(
        self,
        message: dict[str, Any],
        body: bytes | memoryview = b"",
        *,
        host_functions: Mapping[str, HostFunction] | None = None,
        spill: SpillFiles | None = None,
        request_id: int | None = None,
    ) -> tuple[dict, bytes]:
        """Send one request and wait for its reply. Raises WorkerDied if the worker ends."""
        if self.death is not None:
            raise self.death
        if request_id is None:
            request_id = self.new_request_id()
        future: asyncio.Future[tuple[dict, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if spill is not None:
            self._spills[request_id] = spill
        self._host_functions = host_functions or {}
        try:
            await self._send({**message, "id": request_id}, body)
            return await future
        finally:
            self._pending.pop(request_id, None)
            self._spills.pop(request_id, None)

    def new_request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def send_interrupt(self, request_id: int) -> None:
        """Interrupt the request if it is still running (a stale interrupt is ignored)."""
        if self.alive:
            with contextlib.suppress(Exception):
                await self._send({"op": "interrupt", "target": request_id})

    async def _send(self, message: dict, body: bytes | memoryview = b"") -> None:
        """Write one frame. Frames never interleave: a large body holds the write lock
        while it is fed to the pipe in chunks (asyncio's pipe transport copies its whole
        pending buffer on every partial write, so one huge write() is quadratic)."""
        async with self._write_lock:
            stdin = self._writer
            if stdin.is_closing():
                raise self.death or WorkerDied("the worker's channel is closed", self.exit_code)
            stdin.write(protocol.encode_header(message, len(body)))
            if len(body) <= _WRITE_CHUNK:
                if body:
                    stdin.write(body)
                return
            view = memoryview(body)
            for start in range(0, len(view), _WRITE_CHUNK):
                stdin.write(view[start : start + _WRITE_CHUNK])
                await stdin.drain()

    # --- reading ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        stdout = self._reader
        reason = "the worker exited"
        try:
            while True:
                try:
                    header = await stdout.readexactly(protocol.HEADER_SIZE)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        reason = "the worker exited in the middle of a frame"
                    break
                json_length, body_length = protocol.decode_header(header)
                message = protocol.decode_message(await stdout.readexactly(json_length))
                body = await stdout.readexactly(body_length) if body_length else b""
                self._dispatch(message, body)
        except protocol.FrameError as exc:
            reason = f"the worker sent a garbled frame ({exc})"
            logger.warning("conch worker %s: %s", self.process.pid, reason)
            self.process.kill()
        except asyncio.IncompleteReadError:
            reason = "the worker exited in the middle of a frame"
        except (ConnectionError, OSError) as exc:
            reason = f"the worker's channel failed: {exc}"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.wait(), 5)
        if self.exit_code is None:  # nobody reported how the worker ended: ask what ran it
            reason = getattr(self.process, "end_reason", None) or reason
        self.death = WorkerDied(reason, self.exit_code)
        if not self._hello.done():
            self._hello.set_exception(self.death)
        self._fail_pending(self.death)

    def _dispatch(self, message: dict, body: bytes) -> None:
        op = message["op"]
        if op == "res":
            future = self._pending.get(message.get("id"))
            if future is not None and not future.done():
                future.set_result((message, body))
        elif op == "out":
            spill = self._spills.get(message.get("id"))
            if spill is not None:
                spill.write(str(message.get("stream")), body)
        elif op == "call":
            task = asyncio.create_task(self._serve_call(message))
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_tasks.discard)
        elif op == "hello":
            if not self._hello.done():
                self._hello.set_result(message)
        elif op == "exit":
            self._reported_exit = message.get("code")
        else:
            raise protocol.FrameError(f"unknown frame op {op!r} from the worker")

    async def _serve_call(self, message: dict) -> None:
        name = message.get("name")
        function = self._host_functions.get(name) if isinstance(name, str) else None
        reply: dict[str, Any] = {"op": "ret", "id": message.get("id")}
        if function is None:
            available = ", ".join(sorted(self._host_functions)) or "none"
            reply["error"] = f"no host function named {name!r} (available: {available})"
        else:
            try:
                value = function(message.get("payload"))
                if inspect.isawaitable(value):
                    value = await value
                reply["value"] = value
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reply["error"] = f"{type(exc).__name__}: {exc}"
        try:
            await self._send(reply)
        except (TypeError, ValueError) as exc:  # encoding fails before anything is written
            reply = {"op": "ret", "id": message.get("id"), "error": f"TypeError: {exc}"}
            with contextlib.suppress(Exception):
                await self._send(reply)
        except Exception:  # the worker is gone: nobody is waiting for the reply
            pass

    def _fail_pending(self, error: WorkerDied) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)


def _retrieve(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


def _widen_pipes(process: asyncio.subprocess.Process) -> None:
    """Ask for 1 MiB pipe buffers: snapshots move tens of MB through them in one go."""
    for stream in (process.stdin, process.stdout):
        transport = getattr(stream, "transport", None) or getattr(stream, "_transport", None)
        pipe = transport.get_extra_info("pipe") if transport is not None else None
        if pipe is not None:
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


def _tail(path: Path | None, limit: int = 2000) -> str:
    if path is None or not path.exists():
        return ""
    data = path.read_bytes()[-limit:]
    return data.decode("utf-8", "replace").strip()
