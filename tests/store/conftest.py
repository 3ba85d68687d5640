"""Fixtures of the store tests: one contract, run against every backend.

``store`` is parametrized over SQLite (a file in tmp_path) and PostgreSQL (one database,
emptied before each test, on a throwaway server: see ``conch.testing.postgres``); the
PostgreSQL params are skipped, with the reason, where no server can run. Stores measure
lease expiry with ``clock``, a clock the tests move by hand, so nothing waits for time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conch.store import (
    Node,
    NodeKind,
    PostgresSessionStore,
    SessionStore,
    SqliteSessionStore,
)
from conch.testing.postgres import PostgresServer

OpenStore = Callable[[], Awaitable[SessionStore]]


@dataclass
class FakeClock:
    """Seconds since the epoch, moved only by ``advance``."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def open_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[OpenStore]:
    """Opens stores on one backing database (each call: another connection or pool)."""
    opened: list[SessionStore] = []
    if backend == "sqlite":
        path = tmp_path / "store.db"

        async def open_() -> SessionStore:
            opened.append(await SqliteSessionStore.open(path, clock=clock))
            return opened[-1]

        yield open_
    else:
        dsn = request.getfixturevalue("postgres_database")
        server: PostgresServer = request.getfixturevalue("postgres_server")
        server.empty_database(dsn.rsplit("/", 1)[1])

        async def open_() -> SessionStore:
            opened.append(await PostgresSessionStore.open(dsn, max_size=4, clock=clock))
            return opened[-1]

        yield open_
    for each in opened:
        await each.close()


@pytest.fixture
async def store(open_store: OpenStore) -> SessionStore:
    return await open_store()


def chain(session_id: str, parent_id: str | None, *kinds: str, **payload: object) -> list[Node]:
    """Nodes of the given kinds, each the child of the one before, the first under parent_id."""
    nodes: list[Node] = []
    for kind in kinds:
        node = Node.new(session_id, NodeKind(kind), {"kind": kind, **payload}, parent_id=parent_id)
        nodes.append(node)
        parent_id = node.id
    return nodes
