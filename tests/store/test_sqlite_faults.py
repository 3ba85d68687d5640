"""Faults of the embedded store: files that are not stores, crashes, full disks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conch.errors import StoreCorruptedError, StoreError, StoreSchemaError
from conch.store import Node, SqliteSessionStore, SqliteSessionStoreFactory, TurnCommit
from tests.store.conftest import FakeClock, chain


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture
async def new_store(tmp_path: Path) -> AsyncIterator[SqliteSessionStore]:
    store = await SqliteSessionStore.open(tmp_path / "store.db")
    yield store
    await store.close()


# --- files that are not stores this conch can use ---------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is a text file\n" * 100,
        os.urandom(8192),
        b"SQLite format 3\x00" + b"\xff" * 4000,
    ],
    ids=["text", "random", "sqlite-header-then-garbage"],
)
async def test_a_file_that_is_not_a_database_is_refused_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    before = fingerprint(path)

    with pytest.raises(StoreCorruptedError, match="not a SQLite database") as caught:
        await SqliteSessionStore.open(path)

    assert str(path) in str(caught.value)
    assert "new file" in str(caught.value)
    assert fingerprint(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


async def test_a_sqlite_database_of_another_program_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.close()
    before = fingerprint(path)

    with pytest.raises(StoreSchemaError, match="not a conch session store"):
        await SqliteSessionStore.open(path)
    assert fingerprint(path) == before


async def test_a_store_from_a_future_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SqliteSessionStore.open(path)
    await store.create_session("s1")
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE conch_schema SET version = 99")
    conn.close()
    before = fingerprint(path)

    with pytest.raises(StoreSchemaError, match=r"newer conch \(store schema version 99") as caught:
        await SqliteSessionStore.open(path)

    assert "left untouched" in str(caught.value)
    assert fingerprint(path) == before


async def test_a_store_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        await SqliteSessionStore.open(tmp_path)


async def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    store = await SqliteSessionStoreFactory(tmp_path / "a" / "b" / "store.db").open()
    await store.create_session("s1")
    await store.close()
    assert (tmp_path / "a" / "b" / "store.db").is_file()


async def test_a_closed_store_says_so(new_store: SqliteSessionStore) -> None:
    await new_store.close()
    with pytest.raises(StoreError, match="closed"):
        await new_store.list_sessions()


# --- kill -9 in the middle of a turn ---------------------------------------------------------

# The child commits turn t1, then starts t2 and stops inside its transaction, after every
# write of the turn and before COMMIT, until the parent kills it.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from conch.store import Node, SqliteSessionStore, TurnCommit, _sqlite

    commit_in_txn = _sqlite._commit_in_txn

    def stop_before_commit(store, conn, lease, turn):
        result = commit_in_txn(store, conn, lease, turn)
        if turn.turn_key == "t2":
            print(json.dumps({"inside": list(turn.node_ids)}), flush=True)
            sys.stdin.readline()  # blocks until killed
        return result

    _sqlite._commit_in_txn = stop_before_commit

    async def main():
        store = await SqliteSessionStore.open(sys.argv[1])
        await store.create_session("s1")
        lease = await store.acquire_lease("s1", "child", ttl_s=3600)
        first = Node.new("s1", "user_input", {"text": "first"})
        await store.commit_turn(lease, TurnCommit("t1", [first], plugin_state=b"after-t1"))
        print(json.dumps({"t1": first.id}), flush=True)
        second = Node.new("s1", "user_input", {"text": "second"}, parent_id=first.id)
        reply = Node.new("s1", "answer", {"text": "never"}, parent_id=second.id)
        await store.commit_turn(lease, TurnCommit("t2", [second, reply], plugin_state=b"t2"))

    asyncio.run(main())
    """
)


async def test_kill_9_mid_turn_keeps_the_last_turn_and_shows_nothing_of_the_next(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "store.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        t1 = json.loads(child.stdout.readline())["t1"]
        inside = json.loads(child.stdout.readline())["inside"]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    clock.advance(7200)  # the dead child's lease has expired
    store = await SqliteSessionStore.open(path, clock=clock)
    try:
        record = await store.get_session("s1")
        assert (record.leaf_node_id, record.plugin_state) == (t1, b"after-t1")
        assert [n.id for n in await store.load_all_nodes("s1")] == [t1]
        assert [n.id for n in await store.load_active_path("s1")] == [t1]
        # t2 was never committed: a new writer's t2 is a fresh commit, not a replay.
        lease = await store.acquire_lease("s1", "parent")
        retry = await store.commit_turn(lease, TurnCommit("t2", chain("s1", t1, "user_input")))
        assert not retry.replayed
        assert not set(inside) & {n.id for n in await store.load_all_nodes("s1")}
    finally:
        await store.close()


# --- a full disk during a commit ---------------------------------------------------------------


@pytest.fixture(params=["tmpfs", "max_bytes"])
def small_store_path(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Path, int | None]]:
    """A store path whose storage really runs out: a 1 MiB tmpfs, or (as a stand-in where
    mounting is not allowed) the store's own max_bytes cap, which fails the same way."""
    if request.param == "max_bytes":
        yield tmp_path / "store.db", 256 * 1024
        return
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a tmpfs can only be mounted as root; the max_bytes variant covers this")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); max_bytes covers this"
        )
    try:
        yield mount / "store.db", None
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_fails_the_commit_cleanly_and_the_store_stays_usable(
    small_store_path: tuple[Path, int | None],
) -> None:
    path, max_bytes = small_store_path
    store = await SqliteSessionStore.open(path, max_bytes=max_bytes)
    try:
        await store.create_session("s1")
        lease = await store.acquire_lease("s1", "writer")
        first = chain("s1", None, "user_input")
        await store.commit_turn(lease, TurnCommit("t1", first, plugin_state=b"t1"))
        huge = Node.new(
            "s1", "cell_output", {"out": os.urandom(1_500_000).hex()}, parent_id=first[0].id
        )

        with pytest.raises(StoreError, match=r"is full.*earlier commits are intact"):
            await store.commit_turn(lease, TurnCommit("t2", [huge], plugin_state=b"t2"))

        record = await store.get_session("s1")
        assert (record.leaf_node_id, record.plugin_state) == (first[0].id, b"t1")
        assert [n.id for n in await store.load_all_nodes("s1")] == [first[0].id]
        small = await store.commit_turn(lease, TurnCommit("t2", chain("s1", first[0].id, "answer")))
        assert not small.replayed
    finally:
        await store.close()


# --- how the embedded store reads ------------------------------------------------------------


def test_the_active_path_query_looks_nodes_up_by_id_and_never_scans_the_history(
    tmp_path: Path,
) -> None:
    """Loading the active path must cost O(path): every step is an index lookup."""
    from conch.store import _schema

    path = tmp_path / "store.db"
    conn = sqlite3.connect(path)
    for statement in _schema.SQLITE_DDL:
        conn.execute(statement)
    paths = _schema.SQLITE_PATHS
    for query in (paths.active_path, paths.nearest_snapshot, paths.active_path_ids):
        plan = conn.execute(f"EXPLAIN QUERY PLAN {query}", {"session": "s", "leaf": "n"}).fetchall()
        details = [row[3] for row in plan]
        assert not [d for d in details if d.startswith("SCAN conch_nodes")], details
        assert any("USING INDEX" in d and "conch_nodes" in d for d in details), details
    conn.close()


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_both_durability_levels_commit(tmp_path: Path, synchronous: str) -> None:
    store = await SqliteSessionStore.open(tmp_path / "store.db", synchronous=synchronous)
    await store.create_session("s1")
    lease = await store.acquire_lease("s1", "writer")
    nodes = chain("s1", None, "user_input")
    await store.commit_turn(lease, TurnCommit("t1", nodes))
    await store.close()

    reopened = await SqliteSessionStore.open(tmp_path / "store.db")
    try:
        assert [node.id for node in await reopened.load_active_path("s1")] == [nodes[0].id]
    finally:
        await reopened.close()


async def test_an_unknown_durability_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="'normal' or 'full'"):
        await SqliteSessionStore.open(tmp_path / "store.db", synchronous="sometimes")  # type: ignore[arg-type]
