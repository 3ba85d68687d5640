"""What only the PostgreSQL store has to show (needs a server: skipped with the reason if none)."""

from __future__ import annotations

import socket

import psycopg
import pytest

from conch.errors import StoreError, StoreSchemaError
from conch.store import PostgresSessionStore, PostgresSessionStoreFactory
from conch.testing.postgres import PostgresServer


@pytest.fixture
def dsn(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


async def test_a_database_from_a_future_schema_version_is_refused_untouched(dsn: str) -> None:
    store = await PostgresSessionStoreFactory(dsn).open()
    await store.create_session("s1")
    await store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE conch_schema SET version = 99")

    with pytest.raises(StoreSchemaError, match=r"newer conch \(store schema version 99"):
        await PostgresSessionStore.open(dsn)

    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT version FROM conch_schema").fetchall() == [(99,)]
        assert conn.execute("SELECT id FROM conch_sessions").fetchall() == [("s1",)]


async def test_stores_opening_a_fresh_database_at_once_create_the_schema_once(dsn: str) -> None:
    import asyncio

    stores = await asyncio.gather(*(PostgresSessionStore.open(dsn) for _ in range(4)))
    for store in stores:
        await store.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM conch_schema").fetchone() == (1,)


async def test_an_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dsn = f"postgresql://conch:secret@127.0.0.1:{port}/nothing"

    with pytest.raises(StoreError, match="check that the server runs") as caught:
        await PostgresSessionStore.open(dsn, connect_timeout_s=1)
    assert "secret" not in str(caught.value)


async def test_the_path_walk_probes_the_index_at_every_table_size(dsn: str) -> None:
    """A plain join is planned as a hash join over a scan of the whole table while the table
    is small; the walk must stay one index probe per step (O(path)) regardless."""
    from conch.store import _schema

    store = await PostgresSessionStore.open(dsn)
    await store.close()
    paths = _schema.POSTGRES_PATHS
    with psycopg.connect(dsn) as conn:
        for query in (paths.active_path, paths.nearest_snapshot, paths.active_path_ids):
            plan = "\n".join(
                row[0] for row in conn.execute(f"EXPLAIN {query}", {"session": "s", "leaf": "n"})
            )
            assert "Seq Scan on conch_nodes" not in plan, plan
            assert "Index Scan using conch_nodes_pkey" in plan, plan
