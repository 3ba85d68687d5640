"""Stores are opened through factories, and every store keeps the SessionStore protocol."""

from __future__ import annotations

from pathlib import Path

from conch.store import (
    PostgresSessionStoreFactory,
    SessionStore,
    SessionStoreFactory,
    SqliteSessionStoreFactory,
)
from conch.testing.postgres import PostgresServer


async def test_the_sqlite_factory_opens_stores_on_one_file(tmp_path: Path) -> None:
    factory = SqliteSessionStoreFactory(tmp_path / "store.db")
    assert isinstance(factory, SessionStoreFactory)

    first, second = await factory.open(), await factory.open()
    try:
        assert isinstance(first, SessionStore)
        await first.create_session("s1")
        assert [s.id for s in await second.list_sessions()] == ["s1"]
    finally:
        await first.close()
        await second.close()


async def test_the_postgres_factory_opens_stores_on_one_database(
    postgres_server: PostgresServer,
) -> None:
    factory = PostgresSessionStoreFactory(postgres_server.create_database())
    assert isinstance(factory, SessionStoreFactory)

    async with await factory.open() as first, await factory.open() as second:
        assert isinstance(first, SessionStore)
        await first.create_session("s1")
        assert [s.id for s in await second.list_sessions()] == ["s1"]
