"""A FAKE of the ``e2b`` SDK: only the surface ``conch.sandbox.e2b`` uses, run locally.

This is not E2B and talks to no service. It exists so the e2b backend's code path (worker
start, the text-mode channel over stdin/stdout callbacks, pause and resume, sandbox
snapshots, faults) can be tested on a machine without an E2B key or network. It follows the
SDK's documented behaviour (e2b 2.x, ``e2b/sandbox_async``):

- ``AsyncSandbox.create(template=, timeout=, allow_internet_access=, api_key=)``,
  ``AsyncSandbox.connect(sandbox_id, timeout=, api_key=)`` (resumes a paused sandbox),
  ``AsyncSandbox.delete_snapshot(snapshot_id, api_key=)``; on a sandbox: ``sandbox_id``,
  ``is_running()``, ``kill()``, ``pause()``, ``create_snapshot()`` (returns an object with
  ``snapshot_id``), ``files.make_dir(path)``, ``files.write(path, data)``;
- ``commands.run(cmd, background=True, stdin=True, on_stdout=, on_stderr=, cwd=, envs=,
  timeout=)`` runs ``/bin/bash -l -c cmd`` and returns a handle with ``pid``, ``wait()``
  (raises ``CommandExitException`` on a non-zero exit), ``kill()``, ``disconnect()``;
  ``commands.send_stdin(pid, data)``; ``commands.connect(pid, on_stdout=, timeout=)``;
- output reaches ``on_stdout`` as ``str``, decoded with an incremental UTF-8 decoder with
  ``errors="replace"`` exactly as the SDK does (so binary output would be damaged, which is
  why the worker speaks text mode there); output while disconnected is not delivered.

How a "sandbox" is faked: a directory standing in for ``/home/user``, and commands run under
bubblewrap with it mounted there, no network, and the system read-only. A sandbox snapshot
copies that directory (no process memory: a sandbox started from it has no worker running,
which makes the backend fall back to its pickled state, as it must on a real failure).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shutil
import signal
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GUEST_HOME = "/home/user"


class SandboxException(Exception):
    pass


class NotFoundException(SandboxException):
    pass


class SandboxNotRunningException(SandboxException):
    pass


class CommandExitException(SandboxException):
    def __init__(self, exit_code: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(f"command exited with code {exit_code}")
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.error = None


@dataclass
class CommandResult:
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    error: str | None = None


@dataclass
class SnapshotInfo:
    snapshot_id: str
    names: list[str] = field(default_factory=list)


class _Process:
    """One running command: its process, and which handle currently receives its output."""

    def __init__(self, pid: int, process: asyncio.subprocess.Process) -> None:
        self.pid = pid
        self.process = process
        self.listener: Any = None
        self.done = asyncio.Event()
        self.exit_code: int | None = None
        self._tasks = [
            asyncio.ensure_future(self._forward(process.stdout, "stdout")),
            asyncio.ensure_future(self._forward(process.stderr, "stderr")),
        ]
        self._waiter = asyncio.ensure_future(self._wait())

    async def _forward(self, stream: asyncio.StreamReader, name: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := await stream.read(32 * 1024):
            text = decoder.decode(chunk)
            listener = self.listener
            if text and listener is not None:
                callback = listener.on_stdout if name == "stdout" else listener.on_stderr
                if callback is not None:
                    result = callback(text)
                    if asyncio.iscoroutine(result):
                        await result

    async def _wait(self) -> None:
        code = await self.process.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.exit_code = code if code >= 0 else 128 - code
        self.done.set()

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


class CommandHandle:
    def __init__(self, state: _SandboxState, process: _Process, on_stdout, on_stderr) -> None:
        self._state = state
        self._process = process
        self.on_stdout = on_stdout
        self.on_stderr = on_stderr
        self._disconnected = asyncio.Event()
        process.listener = self

    @property
    def pid(self) -> int:
        return self._process.pid

    async def wait(self) -> CommandResult:
        done = asyncio.ensure_future(self._process.done.wait())
        cut = asyncio.ensure_future(self._disconnected.wait())
        lost = asyncio.ensure_future(self._state.lost.wait())
        try:
            await asyncio.wait({done, cut, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (done, cut, lost):
                task.cancel()
        if self._process.done.is_set():
            if self._process.exit_code:
                raise CommandExitException(self._process.exit_code)
            return CommandResult(exit_code=0)
        if self._state.lost.is_set():
            raise SandboxNotRunningException(
                f"The sandbox {self._state.sandbox_id} was not found or is not running"
            )
        raise SandboxException("disconnected from the command")

    async def kill(self) -> bool:
        self._state.check_running()
        if self._process.done.is_set():
            return False
        self._process.signal(signal.SIGKILL)
        return True

    async def disconnect(self) -> None:
        if self._process.listener is self:
            self._process.listener = None
        self._disconnected.set()


class Commands:
    def __init__(self, state: _SandboxState) -> None:
        self._state = state

    async def run(
        self,
        cmd: str,
        background: bool | None = None,
        envs: dict[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout=None,
        on_stderr=None,
        stdin: bool | None = None,
        timeout: float | None = 60,
        request_timeout: float | None = None,
    ) -> CommandHandle:
        self._state.check_running()
        if not background:
            raise NotImplementedError("this fake implements background commands only")
        process = await self._state.spawn(cmd, envs or {}, cwd, bool(stdin))
        self._state.limit(process, timeout)
        return CommandHandle(self._state, process, on_stdout, on_stderr)

    async def send_stdin(self, pid: int, data: str | bytes, request_timeout=None) -> None:
        self._state.check_running()
        process = self._state.processes.get(pid)
        if process is None or process.done.is_set() or process.process.stdin is None:
            raise NotFoundException(f"process with pid {pid} not found")
        process.process.stdin.write(data.encode() if isinstance(data, str) else data)
        await process.process.stdin.drain()

    async def connect(
        self,
        pid: int,
        timeout: float | None = 60,
        request_timeout=None,
        on_stdout=None,
        on_stderr=None,
    ) -> CommandHandle:
        self._state.check_running()
        process = self._state.processes.get(pid)
        if process is None or process.done.is_set():
            raise NotFoundException(f"process with pid {pid} not found")
        self._state.limit(process, timeout)
        return CommandHandle(self._state, process, on_stdout, on_stderr)


class Files:
    def __init__(self, state: _SandboxState) -> None:
        self._state = state

    async def make_dir(self, path: str, user=None, request_timeout=None) -> bool:
        self._state.check_running()
        target = self._state.host_path(path)
        existed = target.exists()
        target.mkdir(parents=True, exist_ok=True)
        return not existed

    async def write(self, path: str, data: str | bytes, user=None, request_timeout=None):
        self._state.check_running()
        target = self._state.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)


class _SandboxState:
    def __init__(self, fake: FakeE2B, sandbox_id: str, home: Path, options: dict) -> None:
        self.fake = fake
        self.sandbox_id = sandbox_id
        self.home = home
        self.options = options
        self.processes: dict[int, _Process] = {}
        self.next_pid = 1000
        self.paused = False
        self.lost = asyncio.Event()
        """Set when the sandbox is killed or times out: streams to it end with an error."""
        self.command_timeouts: list[float | None] = []
        """The ``timeout`` of every ``commands.run`` and ``commands.connect``, in order."""

    def limit(self, process: _Process, timeout: float | None) -> None:
        """The SDK's command ``timeout``: the command is ended after that many seconds
        (60 unless the caller says otherwise); 0 or None is no limit. Recorded for tests."""
        self.command_timeouts.append(timeout)
        if timeout:
            asyncio.get_running_loop().call_later(timeout, process.signal, signal.SIGKILL)

    def check_running(self) -> None:
        if self.lost.is_set():
            raise SandboxNotRunningException(f"sandbox {self.sandbox_id} is not running")
        if self.paused:
            raise SandboxException(f"sandbox {self.sandbox_id} is paused")

    def host_path(self, path: str) -> Path:
        if path != GUEST_HOME and not path.startswith(GUEST_HOME + "/"):
            raise SandboxException(f"this fake keeps files under {GUEST_HOME} only, not {path}")
        return self.home / path[len(GUEST_HOME) :].lstrip("/")

    async def spawn(self, cmd: str, envs: dict[str, str], cwd: str | None, stdin: bool):
        from conch.sandbox.bwrap import _namespace_args, _readonly_system_args

        argv = [shutil.which("bwrap") or "bwrap", *_namespace_args(False)]
        argv += [*_readonly_system_args(), "--proc", "/proc", "--dev", "/dev"]
        argv += ["--tmpfs", "/tmp", "--bind", str(self.home), GUEST_HOME]
        argv += ["--chdir", cwd or GUEST_HOME, "--clearenv"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": GUEST_HOME, **envs}
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += ["/bin/bash", "-l", "-c", cmd]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.next_pid += 1
        running = _Process(self.next_pid, process)
        self.processes[self.next_pid] = running
        return running

    def stop_all(self, signum: int) -> None:
        for process in self.processes.values():
            if not process.done.is_set():
                process.signal(signum)


class FakeE2B:
    """Stands in for the ``e2b`` module: pass it as ``E2BEnvironment(sdk=FakeE2B(dir))``."""

    CommandExitException = CommandExitException
    SandboxException = SandboxException
    NotFoundException = NotFoundException

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sandboxes: dict[str, _SandboxState] = {}
        self.snapshots: dict[str, Path] = {}
        self.calls: list[str] = []
        """Every SDK call made, in order (``create``, ``run``, ``pause``, ...), for tests."""
        self.fail_next: dict[str, Exception] = {}
        """Make the next call of a name raise (e.g. ``{"create_snapshot": ...}``)."""
        fake = self

        class AsyncSandbox(_AsyncSandbox):
            _fake = fake

        self.AsyncSandbox = AsyncSandbox

    def record(self, name: str) -> None:
        self.calls.append(name)
        failure = self.fail_next.pop(name, None)
        if failure is not None:
            raise failure

    def kill_from_outside(self, sandbox_id: str) -> None:
        """What E2B does at a sandbox's timeout (or a kill from its dashboard)."""
        state = self.sandboxes[sandbox_id]
        state.stop_all(signal.SIGKILL)
        state.lost.set()

    def cleanup(self) -> None:
        for state in self.sandboxes.values():
            state.stop_all(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


class _AsyncSandbox:
    _fake: FakeE2B

    def __init__(self, state: _SandboxState) -> None:
        self._state = state
        self.sandbox_id = state.sandbox_id
        self.commands = Commands(state)
        self.files = Files(state)

    @classmethod
    async def create(cls, template: str | None = None, timeout=None, **options: Any):
        cls._fake.record("create")
        sandbox_id = f"fake{uuid.uuid4().hex[:12]}"
        home = cls._fake.root / sandbox_id / "home"
        if template is not None and template in cls._fake.snapshots:
            shutil.copytree(cls._fake.snapshots[template], home, symlinks=True)
        elif template not in (None, "base"):
            raise NotFoundException(f"template '{template}' not found")
        else:
            home.mkdir(parents=True)
        state = _SandboxState(cls._fake, sandbox_id, home, {"template": template, **options})
        cls._fake.sandboxes[sandbox_id] = state
        return cls(state)

    @classmethod
    async def connect(cls, sandbox_id: str, timeout=None, **options: Any):
        cls._fake.record("connect")
        state = cls._fake.sandboxes.get(sandbox_id)
        if state is None or state.lost.is_set():
            raise NotFoundException(f"sandbox {sandbox_id} not found")
        if state.paused:
            state.stop_all(signal.SIGCONT)
            state.paused = False
        return cls(state)

    @classmethod
    async def delete_snapshot(cls, snapshot_id: str, **options: Any) -> bool:
        cls._fake.record("delete_snapshot")
        path = cls._fake.snapshots.pop(snapshot_id, None)
        if path is None:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

    async def is_running(self, request_timeout=None) -> bool:
        return not self._state.lost.is_set() and not self._state.paused

    async def kill(self, **options: Any) -> bool:
        self._fake.record("kill")
        if self._state.lost.is_set():
            return False
        self._state.stop_all(signal.SIGKILL)
        self._state.lost.set()
        return True

    async def pause(self, **options: Any) -> bool:
        self._fake.record("pause")
        self._state.check_running()
        self._state.stop_all(signal.SIGSTOP)
        self._state.paused = True
        # A paused sandbox's streams end: the SDK's handles see their connection close.
        for process in self._state.processes.values():
            if process.listener is not None:
                await process.listener.disconnect()
        return True

    async def create_snapshot(self, name: str | None = None, **options: Any) -> SnapshotInfo:
        self._fake.record("create_snapshot")
        self._state.check_running()
        snapshot_id = f"snapshot-{uuid.uuid4().hex[:12]}:latest"
        target = self._fake.root / "snapshots" / snapshot_id.replace(":", "_")
        shutil.copytree(self._state.home, target, symlinks=True)
        self._fake.snapshots[snapshot_id] = target
        return SnapshotInfo(snapshot_id=snapshot_id, names=[snapshot_id])


def fake_python() -> str:
    """The interpreter the fake's sandboxes run the worker with (the host's, read-only)."""
    return sys.executable
