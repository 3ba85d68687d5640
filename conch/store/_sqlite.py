"""The embedded default store: one SQLite file in WAL mode.

Durability. The journal is a write-ahead log, and by default (``synchronous="full"``) it is
fsynced on every commit: a commit that returned survives a crash of the process (``kill -9``)
and a power loss. On the 2-core VM it was built on, that cost 0.1-0.3 ms per commit.
``synchronous="normal"`` skips the per-commit fsync: a commit that returned still survives a
crash of the process, but a power loss or OS crash can lose the last commits (never leaving
a partial turn or a corrupt file). Choose it for throughput on disks with slow fsync.

Threads. Every call runs on one dedicated thread per store that owns the connection, so a
transaction is one hop from the event loop and never interleaves with another call of the
same store. Several processes may open the same file; SQLite serialises their writers and
the lease decides who may write a session.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from conch.errors import (
    ConchError,
    StoreCorruptedError,
    StoreError,
    StoreSchemaError,
)
from conch.store import _schema as sql
from conch.store._graph import (
    check_tombstones,
    check_turn,
    lease_params,
    missing_node_error,
    nearest_from_rows,
    no_session,
    path_from_rows,
    replayed_result,
    session_exists,
    session_from_row,
)
from conch.store._lease import (
    DEFAULT_LEASE_TTL_S,
    Lease,
    LeaseState,
    check_current,
    check_owner,
    check_ttl,
    grant,
)
from conch.store._nodes import (
    CommitResult,
    Node,
    PreparedTurn,
    SessionRecord,
    TurnCommit,
    check_id,
    encode_json,
    new_id,
    node_from_row,
    prepare_turn,
    utc_from_timestamp,
)

T = TypeVar("T")
Synchronous = Literal["normal", "full"]

_SQLITE_HEADER = b"SQLite format 3\x00"
_IDS_IN = "id IN (SELECT value FROM json_each(:ids))"


class SqliteSessionStore:
    """A ``SessionStore`` in one SQLite file: ``await SqliteSessionStore.open(path)``."""

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self._conn = conn
        self._executor = executor
        self._clock = clock
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: Synchronous = "full",
        busy_timeout_s: float = 5.0,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SqliteSessionStore:
        """Open (or create) the store at ``path`` (``":memory:"`` for a private one).

        ``max_bytes`` caps the database file: a commit that would grow it further fails like
        a full disk does. ``clock`` is what lease expiry is measured with.
        """
        if synchronous not in ("normal", "full"):
            raise StoreError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        path = str(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conch-sqlite")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(
                executor, _connect, path, synchronous, busy_timeout_s, max_bytes
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, conn, executor, clock)

    async def __aenter__(self) -> SqliteSessionStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"SqliteSessionStore({self.path!r})"

    # --- plumbing --------------------------------------------------------------------------

    async def _run(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError(f"cannot {action}: the store {self.path} is closed; open it again")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, action, fn, args)

    def _guarded(self, action: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise _translate(exc, action, self.path) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so a transaction
        that has read the lease state cannot lose a race to another process's writer."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back on its own (e.g. on a full disk).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write_state(
        self, conn: sqlite3.Connection, session_id: str
    ) -> tuple[str | None, LeaseState]:
        row = conn.execute(sql.SELECT_WRITE_STATE, {"session": session_id}).fetchone()
        if row is None:
            raise no_session(session_id, self.path)
        return row[0], LeaseState(row[1], row[2], row[3])

    def _require_session(self, session_id: str) -> None:
        if self._conn.execute(sql.SESSION_EXISTS, {"session": session_id}).fetchone() is None:
            raise no_session(session_id, self.path)

    # --- sessions --------------------------------------------------------------------------

    async def create_session(
        self, session_id: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> SessionRecord:
        session_id = check_id(session_id if session_id is not None else new_id(), "session id")
        encoded = encode_json(metadata or {}, "session metadata")

        def create() -> SessionRecord:
            now = self._clock()
            with self._write() as conn:
                inserted = conn.execute(
                    sql.INSERT_SESSION,
                    {
                        "session": session_id,
                        "metadata": encoded,
                        "now": now,
                        "version": sql.SCHEMA_VERSION,
                    },
                ).rowcount
                if not inserted:
                    raise session_exists(session_id, self.path)
                return session_from_row(
                    conn.execute(sql.SELECT_SESSION, {"session": session_id}).fetchone()
                )

        return await self._run("create a session", create)

    async def get_session(self, session_id: str) -> SessionRecord:
        def get() -> SessionRecord:
            row = self._conn.execute(sql.SELECT_SESSION, {"session": session_id}).fetchone()
            if row is None:
                raise no_session(session_id, self.path)
            return session_from_row(row)

        return await self._run("read a session", get)

    async def list_sessions(self) -> list[SessionRecord]:
        def list_() -> list[SessionRecord]:
            return [session_from_row(row) for row in self._conn.execute(sql.LIST_SESSIONS)]

        return await self._run("list sessions", list_)

    async def delete_session(self, session_id: str) -> None:
        def delete() -> None:
            with self._write() as conn:
                params = {"session": session_id}
                if conn.execute(sql.SESSION_EXISTS, params).fetchone() is None:
                    raise no_session(session_id, self.path)
                conn.execute(sql.DELETE_SESSION_NODES, params)
                conn.execute(sql.DELETE_SESSION_TURNS, params)
                conn.execute(sql.DELETE_SESSION, params)

        await self._run("delete a session", delete)

    # --- leases ----------------------------------------------------------------------------

    async def acquire_lease(
        self, session_id: str, owner: str, ttl_s: float = DEFAULT_LEASE_TTL_S
    ) -> Lease:
        owner, ttl_s = check_owner(owner), check_ttl(ttl_s)

        def acquire() -> Lease:
            with self._write() as conn:
                _, state = self._write_state(conn, session_id)
                lease = grant(session_id, state, owner, ttl_s, self._clock())
                conn.execute(sql.GRANT_LEASE, lease_params(lease))
                return lease

        return await self._run("acquire a lease", acquire)

    async def renew_lease(self, lease: Lease, ttl_s: float | None = None) -> Lease:
        ttl_s = check_ttl(lease.ttl_s if ttl_s is None else ttl_s)

        def renew() -> Lease:
            with self._write() as conn:
                _, state = self._write_state(conn, lease.session_id)
                check_current(lease, state, "renew the lease")
                renewed = Lease(
                    lease.session_id, lease.owner, lease.token, self._clock() + ttl_s, ttl_s
                )
                conn.execute(sql.RENEW_LEASE, lease_params(renewed))
                return renewed

        return await self._run("renew a lease", renew)

    async def release_lease(self, lease: Lease) -> None:
        def release() -> None:
            with self._write() as conn:
                conn.execute(sql.RELEASE_LEASE, lease_params(lease))

        await self._run("release a lease", release)

    # --- fenced writes ---------------------------------------------------------------------

    async def commit_turn(self, lease: Lease, commit: TurnCommit) -> CommitResult:
        turn = prepare_turn(lease.session_id, commit)

        def commit_() -> CommitResult:
            with self._write() as conn:
                return _commit_in_txn(self, conn, lease, turn)

        return await self._run(f"commit turn {turn.turn_key!r}", commit_)

    async def set_leaf(self, lease: Lease, node_id: str | None) -> None:
        if node_id is not None:
            check_id(node_id, "node id")

        def set_leaf() -> None:
            with self._write() as conn:
                _, state = self._write_state(conn, lease.session_id)
                check_current(lease, state, "move the leaf")
                if node_id is not None:
                    self._check_path(conn, lease.session_id, node_id)
                conn.execute(
                    sql.MOVE_LEAF,
                    {
                        "session": lease.session_id,
                        "leaf": node_id,
                        "now": self._clock(),
                        "state": None,
                    },
                )

        await self._run("move the leaf", set_leaf)

    def _check_path(self, conn: sqlite3.Connection, session_id: str, node_id: str) -> list[Node]:
        """The intact path from the root to ``node_id``, or ``NodeNotFoundError``."""
        rows = conn.execute(
            sql.SQLITE_PATHS.active_path, {"session": session_id, "leaf": node_id}
        ).fetchall()
        if not rows:
            self._raise_missing_node(session_id, node_id)
        return path_from_rows(rows, session_id, node_id)

    # --- reads -----------------------------------------------------------------------------

    async def load_active_path(self, session_id: str, leaf_id: str | None = None) -> list[Node]:
        def load() -> list[Node]:
            rows = self._conn.execute(
                sql.SQLITE_PATHS.active_path, {"session": session_id, "leaf": leaf_id}
            ).fetchall()
            if not rows:
                if leaf_id is not None:
                    self._raise_missing_node(session_id, leaf_id)
                self._require_session(session_id)
            return path_from_rows(rows, session_id, leaf_id)

        return await self._run("load the active path", load)

    async def load_all_nodes(self, session_id: str) -> list[Node]:
        def load() -> list[Node]:
            rows = self._conn.execute(sql.ALL_NODES, {"session": session_id}).fetchall()
            if not rows:
                self._require_session(session_id)
            return [node_from_row(row) for row in rows]

        return await self._run("load the session's nodes", load)

    async def get_node(self, session_id: str, node_id: str) -> Node:
        def get() -> Node:
            row = self._conn.execute(sql.GET_NODE, {"id": node_id}).fetchone()
            if row is None or row[1] != session_id or row[8] is not None:
                self._raise_missing_node(session_id, node_id, row)
            return node_from_row(row)

        return await self._run("read a node", get)

    async def get_turn(self, session_id: str, turn_key: str) -> CommitResult | None:
        check_id(turn_key, "turn_key")

        def get() -> CommitResult | None:
            row = self._conn.execute(
                sql.SELECT_TURN, {"session": session_id, "turn_key": turn_key}
            ).fetchone()
            return None if row is None else replayed_result(session_id, turn_key, row)

        return await self._run("read a turn", get)

    async def nearest_snapshot(self, session_id: str, node_id: str | None = None) -> Node | None:
        def nearest() -> Node | None:
            rows = self._conn.execute(
                sql.SQLITE_PATHS.nearest_snapshot, {"session": session_id, "leaf": node_id}
            ).fetchall()
            if not rows:
                if node_id is not None:
                    self._raise_missing_node(session_id, node_id)
                self._require_session(session_id)
                return None
            return nearest_from_rows(rows, session_id, node_id)

        return await self._run("find the nearest snapshot", nearest)

    def _raise_missing_node(
        self, session_id: str, node_id: str, row: tuple[Any, ...] | None = None
    ) -> None:
        if row is None:
            row = self._conn.execute(sql.GET_NODE, {"id": node_id}).fetchone()
        if row is None:
            self._require_session(session_id)
        raise missing_node_error(session_id, node_id, row)

    # --- disk lifecycle --------------------------------------------------------------------

    async def orphaned_node_ids(self, session_id: str) -> list[str]:
        def orphans() -> list[str]:
            self._require_session(session_id)
            return [
                row[0]
                for row in self._conn.execute(
                    sql.SQLITE_PATHS.orphaned_node_ids, {"session": session_id, "leaf": None}
                )
            ]

        return await self._run("list orphaned nodes", orphans)

    async def tombstone_nodes(self, session_id: str, node_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(node_ids))
        if not ids:
            return 0

        def tombstone() -> int:
            with self._write() as conn:
                self._write_state(conn, session_id)
                found = conn.execute(
                    f"SELECT id, session_id, tombstoned_at FROM conch_nodes WHERE {_IDS_IN}",
                    {"ids": json.dumps(ids)},
                ).fetchall()
                active = {
                    row[0]
                    for row in conn.execute(
                        sql.SQLITE_PATHS.active_path_ids, {"session": session_id, "leaf": None}
                    )
                }
                count = check_tombstones(session_id, ids, found, active)
                now = self._clock()
                conn.executemany(
                    sql.TOMBSTONE_NODE, [{"id": i, "session": session_id, "now": now} for i in ids]
                )
                return count

        return await self._run("tombstone nodes", tombstone)

    async def vacuum(self) -> int:
        def vacuum() -> int:
            with self._write() as conn:
                deleted = conn.execute(sql.VACUUM_NODES).rowcount
            # Give the freed pages back to the file system without rewriting the whole file
            # (the store is created with auto_vacuum=INCREMENTAL), and fold the log back in.
            self._conn.execute("PRAGMA incremental_vacuum").fetchall()
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._conn.execute("PRAGMA optimize")
            return deleted

        return await self._run("vacuum the store", vacuum)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            try:
                self._conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass  # a failing optimisation hint must not keep the store open
            self._conn.close()

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, close)
        finally:
            self._executor.shutdown(wait=False)


# --- the commit transaction ---------------------------------------------------------------------


def _commit_in_txn(
    store: SqliteSessionStore, conn: sqlite3.Connection, lease: Lease, turn: PreparedTurn
) -> CommitResult:
    """Everything a commit does inside its transaction (the caller begins and commits it)."""
    session_id = lease.session_id
    leaf_before, state = store._write_state(conn, session_id)
    stored = conn.execute(
        sql.SELECT_TURN, {"session": session_id, "turn_key": turn.turn_key}
    ).fetchone()
    if stored is not None:
        return replayed_result(session_id, turn.turn_key, stored)
    check_current(lease, state, f"commit turn {turn.turn_key!r}")
    found = conn.execute(
        f"SELECT id, session_id, tombstoned_at FROM conch_nodes WHERE {_IDS_IN}",
        {"ids": json.dumps(turn.ids_to_check())},
    ).fetchall()
    check_turn(session_id, turn, found)
    now = store._clock()
    conn.executemany(sql.INSERT_NODE, turn.rows)
    leaf = turn.leaf_id if turn.node_ids or turn.leaf_id is not None else leaf_before
    conn.execute(
        sql.INSERT_TURN,
        {
            "session": session_id,
            "turn_key": turn.turn_key,
            "leaf": leaf,
            "node_ids": json.dumps(turn.node_ids),
            "now": now,
        },
    )
    conn.execute(
        sql.MOVE_LEAF, {"session": session_id, "leaf": leaf, "now": now, "state": turn.plugin_state}
    )
    return CommitResult(session_id, turn.turn_key, leaf, turn.node_ids, utc_from_timestamp(now))


# --- opening and errors ------------------------------------------------------------------------


def _connect(
    path: str, synchronous: Synchronous, busy_timeout_s: float, max_bytes: int | None
) -> sqlite3.Connection:
    """Open the store's connection, creating the schema in a new file.

    An existing file is inspected read-only first, so a file that is not a conch store, or
    one from a newer conch, is refused before anything could write to it.
    """
    in_memory = path == ":memory:"
    if not in_memory:
        file = Path(path)
        if file.is_dir():
            raise StoreError(f"the store path {path} is a directory; give a file path")
        if file.exists() and file.stat().st_size > 0:
            _inspect(path)
        file.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: transactions are begun and ended explicitly by _write().
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # auto_vacuum only takes effect on a file that has no header yet (ignored afterwards),
        # so it comes before anything that writes one, WAL mode included.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if not in_memory:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(
                    f"SQLite could not put {path} in WAL mode (it stays in {mode!r}); the file "
                    "system may not support shared memory: use a local disk"
                )
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        if max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, int(max_bytes) // page_size)}")
        conn.execute("BEGIN IMMEDIATE")
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'conch_schema'")
        if exists.fetchone() is None:
            for statement in sql.SQLITE_DDL:
                conn.execute(statement)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.close()
        raise _translate(exc, "open the store", path) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _inspect(path: str) -> None:
    """Refuse, without writing a byte, a file that is not a conch store this conch can use."""
    with open(path, "rb") as file:
        header = file.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        raise _not_a_database(path)
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _translate(exc, "open the store", path) from exc
    try:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            return
        if "conch_schema" not in tables:
            raise StoreSchemaError(
                f"{path} is a SQLite database but not a conch session store (it has no "
                "conch_schema table); it was left untouched: point the store at another file"
            )
        row = conn.execute("SELECT version FROM conch_schema").fetchone()
    except sqlite3.DatabaseError as exc:
        raise _not_a_database(path, exc) from exc
    finally:
        conn.close()
    version = row[0] if row else None
    if version != sql.SCHEMA_VERSION:
        raise sql.schema_mismatch(path, version)


def _not_a_database(path: str, cause: object = None) -> StoreCorruptedError:
    detail = f" ({cause})" if cause else ""
    return StoreCorruptedError(
        f"{path} is not a SQLite database conch can read{detail}; it was left untouched. "
        "Point the store at a new file, or restore this one from a backup"
    )


def _translate(exc: sqlite3.Error, action: str, path: str) -> ConchError:
    """A store error that says what failed and what to do, for a SQLite failure."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_FULL":
        return StoreError(
            f"cannot {action}: the disk holding {path} is full (or the store reached its "
            "max_bytes limit); nothing of it was written and earlier commits are intact. "
            "Free space and retry"
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return _not_a_database(path, exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError(
            f"cannot {action}: {path} stayed locked by another connection for longer than the "
            "busy timeout; retry, or raise busy_timeout_s"
        )
    if name.startswith("SQLITE_READONLY"):
        return StoreError(f"cannot {action}: {path} is read-only; check the file's permissions")
    if name.startswith("SQLITE_CANTOPEN"):
        return StoreError(
            f"cannot {action}: SQLite cannot open {path} ({exc}); check that the directory "
            "exists and is writable"
        )
    return StoreError(f"cannot {action}: SQLite failed on {path}: {exc} ({name or 'no code'})")


@dataclass(frozen=True, slots=True)
class SqliteSessionStoreFactory:
    """Opens ``SqliteSessionStore``s on one file (the embedded default)."""

    path: str | Path
    synchronous: Synchronous = "full"
    busy_timeout_s: float = 5.0
    max_bytes: int | None = None

    async def open(self) -> SqliteSessionStore:
        return await SqliteSessionStore.open(
            self.path,
            synchronous=self.synchronous,
            busy_timeout_s=self.busy_timeout_s,
            max_bytes=self.max_bytes,
        )
