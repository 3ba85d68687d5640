"""Fixtures of the runtime tests.

``store`` is a real session store, parametrized over SQLite (a file in tmp_path) and
PostgreSQL (a throwaway server from ``conch.testing.postgres``, one database emptied before
each test); the PostgreSQL params are skipped, with the reason, where no server can run.
``lease`` is the writer's lease on ``session_id``, a session created in that store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from conch.store import (
    CommitResult,
    Lease,
    Node,
    NodeKind,
    PostgresSessionStore,
    SessionStore,
    TurnCommit,
)
from conch.store import SqliteSessionStore as SqliteStore
from conch.testing.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStore]:
    if request.param == "sqlite":
        opened: SessionStore = await SqliteStore.open(tmp_path / "s.db")
    else:
        dsn = request.getfixturevalue("postgres_database")
        server: PostgresServer = request.getfixturevalue("postgres_server")
        server.empty_database(dsn.rsplit("/", 1)[1])
        opened = await PostgresSessionStore.open(dsn, max_size=2)
    yield opened
    await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SessionStore]:
    opened = await SqliteStore.open(tmp_path / "s.db")
    yield opened
    await opened.close()


@pytest.fixture
def session_id() -> str:
    return "session-1"


@pytest.fixture
async def lease(store: SessionStore, session_id: str) -> Lease:
    await store.create_session(session_id)
    return await store.acquire_lease(session_id, "test-writer")


@dataclass
class Writer:
    """Commits turns to ``session_id`` the way a runtime would."""

    store: SessionStore
    lease: Lease
    session_id: str
    turns: int = 0

    async def turn(
        self,
        parent_id: str | None,
        length: int = 2,
        *,
        snapshot_ids: Sequence[str | None] = (),
        turn_key: str | None = None,
    ) -> tuple[CommitResult, list[Node]]:
        """Commit ``length`` chained nodes under ``parent_id`` (node i carries
        ``snapshot_ids[i]``); returns the store's result and the committed nodes."""
        self.turns += 1
        nodes: list[Node] = []
        for step in range(length):
            snapshot = snapshot_ids[step] if step < len(snapshot_ids) else None
            kind = NodeKind.USER_INPUT if step == 0 else NodeKind.MODEL_REPLY
            node = Node.new(
                self.session_id, kind, {"step": step}, parent_id=parent_id, snapshot_id=snapshot
            )
            nodes.append(node)
            parent_id = node.id
        commit = TurnCommit(turn_key or f"turn-{self.turns}", nodes)
        return await self.store.commit_turn(self.lease, commit), nodes

    async def history(self, path_length: int, orphans: int) -> list[str]:
        """A main path of ``path_length`` nodes, plus ``orphans`` nodes on side branches
        (one 2-node turn each, hanging off the path). Returns the path's ids."""
        _, path = await self.turn(None, path_length)
        for branch in range(orphans // 2):
            await self.turn(path[branch % path_length].id, 2)
        await self.store.set_leaf(self.lease, path[-1].id)
        return [node.id for node in path]


@pytest.fixture
def writer(store: SessionStore, lease: Lease, session_id: str) -> Writer:
    return Writer(store, lease, session_id)
