"""Background turns under the host's control: start, status, cancel, wait.

A runtime hands work to a ``BackgroundTaskHost`` instead of spawning tasks itself, so the
embedder decides where background turns run (the event loop by default; a worker pool or
a job queue in a server) and can see and stop every one of them.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from conch.errors import BackgroundTaskNotFoundError, ConfigurationError


class TaskState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """What a host knows about one task. A finished task carries its ``result`` (succeeded)
    or its ``error`` (failed); the error is reported, never raised into the waiter."""

    task_id: str
    name: str
    state: TaskState
    result: Any = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.state is not TaskState.RUNNING


Work = Callable[[], Awaitable[Any]]
"""What a host runs: a callable making a fresh awaitable (e.g. ``lambda: runtime.turn(q)``),
so a host may create it wherever the work will actually run."""


@runtime_checkable
class BackgroundTaskHost(Protocol):
    async def start(self, work: Work, *, name: str = "") -> str:
        """Start ``work``; returns its task id at once."""
        ...

    async def status(self, task_id: str) -> TaskStatus:
        """The task's state now. Unknown id: ``BackgroundTaskNotFoundError``."""
        ...

    async def cancel(self, task_id: str) -> bool:
        """Stop the task and wait until it has stopped; False if it had already finished."""
        ...

    async def wait(self, task_id: str, timeout_s: float | None = None) -> TaskStatus:
        """The finished task's status. ``TimeoutError`` after ``timeout_s`` (the task keeps
        running)."""
        ...


class EventLoopTaskHost:
    """Runs each task as an ``asyncio.Task`` on the running event loop (the default host).

    Finished tasks are remembered for ``status`` and ``wait`` up to ``keep_finished`` of
    them, oldest forgotten first, so a long-lived process does not grow without bound.
    """

    def __init__(self, *, keep_finished: int = 1000) -> None:
        if not isinstance(keep_finished, int) or keep_finished < 1:
            # At least one, so wait() can report the task it has just seen finish.
            raise ConfigurationError(
                f"keep_finished must be an int of at least 1, got {keep_finished!r}"
            )
        self._keep_finished = keep_finished
        self._running: dict[str, tuple[str, asyncio.Task[Any]]] = {}
        self._finished: OrderedDict[str, TaskStatus] = OrderedDict()
        self._ids = itertools.count(1)

    async def start(self, work: Work, *, name: str = "") -> str:
        if not callable(work):
            raise ConfigurationError(
                f"start() takes a callable that returns an awaitable (e.g. lambda: "
                f"runtime.turn(query)), got {type(work).__name__}"
            )
        task_id = f"task-{next(self._ids)}"
        task = asyncio.create_task(self._run(work), name=name or task_id)
        self._running[task_id] = (name, task)
        task.add_done_callback(lambda done: self._finish(task_id, name, done))
        return task_id

    async def status(self, task_id: str) -> TaskStatus:
        if task_id in self._running:
            name, _ = self._running[task_id]
            return TaskStatus(task_id, name, TaskState.RUNNING)
        if task_id in self._finished:
            return self._finished[task_id]
        raise BackgroundTaskNotFoundError(
            f"no background task {task_id!r} on this host (never started here, or finished "
            f"long ago: the host remembers the last {self._keep_finished} finished tasks)"
        )

    async def cancel(self, task_id: str) -> bool:
        status = await self.status(task_id)
        if status.done:
            return False
        _, task = self._running[task_id]
        task.cancel()
        # Wait for the task's own cleanup (a turn's finally blocks) before reporting.
        await asyncio.wait([task])
        return (await self.status(task_id)).state is TaskState.CANCELLED

    async def wait(self, task_id: str, timeout_s: float | None = None) -> TaskStatus:
        status = await self.status(task_id)
        if not status.done:
            _, task = self._running[task_id]
            # asyncio.wait neither raises the task's error nor cancels it on timeout.
            done, _ = await asyncio.wait([task], timeout=timeout_s)
            if not done:
                raise TimeoutError(
                    f"background task {task_id!r} still runs after {timeout_s} s; wait "
                    "again, or cancel it"
                )
        return await self.status(task_id)

    async def close(self) -> None:
        """Cancel every running task and wait for them to stop."""
        tasks = [task for _, task in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    @staticmethod
    async def _run(work: Work) -> Any:
        return await work()

    def _finish(self, task_id: str, name: str, task: asyncio.Task[Any]) -> None:
        self._running.pop(task_id, None)
        if task.cancelled():
            status = TaskStatus(task_id, name, TaskState.CANCELLED)
        elif (error := task.exception()) is not None:  # retrieved: asyncio logs nothing
            status = TaskStatus(task_id, name, TaskState.FAILED, error=error)
        else:
            status = TaskStatus(task_id, name, TaskState.SUCCEEDED, result=task.result())
        self._finished[task_id] = status
        while len(self._finished) > self._keep_finished:
            self._finished.popitem(last=False)
