"""EventLoopTaskHost: background work the host can start, watch, cancel and wait for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conch.runtime import (
    BackgroundTaskHost,
    BackgroundTaskNotFoundError,
    EventLoopTaskHost,
    TaskState,
)


@pytest.fixture
async def host() -> AsyncIterator[EventLoopTaskHost]:
    tasks = EventLoopTaskHost()
    yield tasks
    await tasks.close()


def test_the_default_host_keeps_the_protocol() -> None:
    assert isinstance(EventLoopTaskHost(), BackgroundTaskHost)


async def test_waiting_returns_the_result(host: EventLoopTaskHost) -> None:
    async def answer() -> int:
        return 42

    task_id = await host.start(answer, name="answer")
    status = await host.wait(task_id)

    assert (status.state, status.result, status.name) == (TaskState.SUCCEEDED, 42, "answer")


async def test_a_failure_is_reported_not_raised(host: EventLoopTaskHost) -> None:
    async def fail() -> None:
        raise ValueError("bad turn")

    status = await host.wait(await host.start(fail))

    assert status.state is TaskState.FAILED
    assert isinstance(status.error, ValueError)


async def test_a_running_task_can_be_seen_and_cancelled(host: EventLoopTaskHost) -> None:
    release = asyncio.Event()
    cleaned_up = []

    async def long_turn() -> None:
        try:
            await release.wait()
        finally:
            cleaned_up.append(True)

    task_id = await host.start(long_turn)
    await asyncio.sleep(0)
    assert (await host.status(task_id)).state is TaskState.RUNNING

    assert await host.cancel(task_id) is True
    assert cleaned_up == [True]
    assert (await host.status(task_id)).state is TaskState.CANCELLED
    assert await host.cancel(task_id) is False


async def test_a_wait_that_times_out_leaves_the_task_running(host: EventLoopTaskHost) -> None:
    release = asyncio.Event()
    task_id = await host.start(release.wait)

    with pytest.raises(TimeoutError, match="still runs"):
        await host.wait(task_id, timeout_s=0)

    release.set()
    assert (await host.wait(task_id)).state is TaskState.SUCCEEDED


async def test_an_unknown_task_id_is_reported(host: EventLoopTaskHost) -> None:
    with pytest.raises(BackgroundTaskNotFoundError, match="no background task 'task-99'"):
        await host.status("task-99")


async def test_only_the_latest_finished_tasks_are_remembered() -> None:
    host = EventLoopTaskHost(keep_finished=2)

    async def nothing() -> None:
        return None

    ids = [await host.start(nothing) for _ in range(3)]
    for task_id in ids[1:]:
        await host.wait(task_id)
    await asyncio.sleep(0)

    with pytest.raises(BackgroundTaskNotFoundError):
        await host.status(ids[0])
    assert (await host.status(ids[2])).done


async def test_closing_the_host_cancels_what_still_runs() -> None:
    host = EventLoopTaskHost()
    task_id = await host.start(asyncio.Event().wait)

    await host.close()

    assert (await host.status(task_id)).state is TaskState.CANCELLED
