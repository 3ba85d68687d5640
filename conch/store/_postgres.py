"""The PostgreSQL store: psycopg 3, async, over a connection pool.

Same schema and queries as the SQLite store (see ``_schema``). Every write transaction
starts by locking the session's row (``SELECT ... FOR UPDATE``), so lease checks, leaf
moves and tombstones of one session are serialised across processes and hosts, and a
writer whose lease was taken over finds out inside the very transaction that would write.
Durability is the server's: a commit that returned is on disk under PostgreSQL's defaults.

psycopg is an optional dependency (``pip install 'conch[postgres]'``); it is imported when
a store is opened, so ``conch.store`` imports without it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conch.errors import ConchError, StoreError
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
    SessionRecord,
    TurnCommit,
    check_id,
    encode_json,
    new_id,
    node_from_row,
    prepare_turn,
    utc_from_timestamp,
)

if TYPE_CHECKING:
    from psycopg import AsyncCursor
    from psycopg_pool import AsyncConnectionPool

# Serialises schema creation when several processes open a fresh database at once.
_SCHEMA_LOCK_KEY = 0x636F6E6368  # "conch"
_IDS_IN = "id = ANY(%(ids)s)"


@functools.cache
def _q(statement: str) -> str:
    return sql.to_pyformat(statement)


class PostgresSessionStore:
    """A ``SessionStore`` in PostgreSQL. Open it with ``await PostgresSessionStore.open(dsn)``."""

    def __init__(self, pool: AsyncConnectionPool, where: str, clock: Callable[[], float]) -> None:
        self._pool = pool
        self.where = where
        self._clock = clock
        self._closed = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> PostgresSessionStore:
        """Connect a pool to ``dsn`` and create the schema in an empty database.

        ``clock`` is what lease expiry is measured with. Leases stay safe under clock skew
        between hosts (fencing tokens decide who writes); skew only moves when a takeover
        becomes possible.
        """
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool, PoolTimeout
        except ImportError as exc:
            raise StoreError(
                "the PostgreSQL store needs psycopg 3: pip install 'conch[postgres]'"
            ) from exc
        where = _describe(dsn)
        pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=connect_timeout_s,
            kwargs={"connect_timeout": max(1, int(connect_timeout_s))},
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout_s)
            store = cls(pool, where, clock)
            await store._ensure_schema()
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error | PoolTimeout):
                raise StoreError(
                    f"cannot open the PostgreSQL store at {where}: {exc}; check that the "
                    "server runs, the DSN is right and the role may connect"
                ) from exc
            raise
        return store

    async def _ensure_schema(self) -> None:
        async with self._txn("open the store") as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            await cur.execute("SELECT to_regclass('conch_schema'), to_regclass('conch_sessions')")
            schema_table, sessions_table = await cur.fetchone()
            if schema_table is None:
                if sessions_table is not None:
                    raise StoreError(
                        f"the database at {self.where} has conch tables but no conch_schema "
                        "table; it was left untouched: use an empty database"
                    )
                for statement in sql.POSTGRES_DDL:
                    await cur.execute(statement)
                return
            await cur.execute("SELECT version FROM conch_schema")
            row = await cur.fetchone()
            version = row[0] if row else None
            if version != sql.SCHEMA_VERSION:
                raise sql.schema_mismatch(f"the database at {self.where}", version)

    async def __aenter__(self) -> PostgresSessionStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"PostgresSessionStore({self.where!r})"

    # --- plumbing --------------------------------------------------------------------------

    @asynccontextmanager
    async def _txn(self, action: str) -> AsyncIterator[AsyncCursor[Any]]:
        """One transaction on a pooled connection, with psycopg errors made store errors."""
        if self._closed:
            raise StoreError(f"cannot {action}: the store at {self.where} is closed")
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except ConchError:
            raise
        except (psycopg.Error, PoolTimeout) as exc:
            raise _translate(exc, action, self.where) from exc

    async def _write_state(
        self, cur: AsyncCursor[Any], session_id: str
    ) -> tuple[str | None, LeaseState]:
        await cur.execute(_q(sql.SELECT_WRITE_STATE) + " FOR UPDATE", {"session": session_id})
        row = await cur.fetchone()
        if row is None:
            raise no_session(session_id, self.where)
        return row[0], LeaseState(row[1], row[2], row[3])

    async def _require_session(self, cur: AsyncCursor[Any], session_id: str) -> None:
        await cur.execute(_q(sql.SESSION_EXISTS), {"session": session_id})
        if await cur.fetchone() is None:
            raise no_session(session_id, self.where)

    async def _raise_missing_node(
        self, cur: AsyncCursor[Any], session_id: str, node_id: str, row: Any = None
    ) -> None:
        if row is None:
            await cur.execute(_q(sql.GET_NODE), {"id": node_id})
            row = await cur.fetchone()
        if row is None:
            await self._require_session(cur, session_id)
        raise missing_node_error(session_id, node_id, row)

    # --- sessions --------------------------------------------------------------------------

    async def create_session(
        self, session_id: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> SessionRecord:
        session_id = check_id(session_id if session_id is not None else new_id(), "session id")
        params = {
            "session": session_id,
            "metadata": encode_json(metadata or {}, "session metadata"),
            "now": self._clock(),
            "version": sql.SCHEMA_VERSION,
        }
        async with self._txn("create a session") as cur:
            await cur.execute(_q(sql.INSERT_SESSION), params)
            if cur.rowcount != 1:
                raise session_exists(session_id, self.where)
            await cur.execute(_q(sql.SELECT_SESSION), {"session": session_id})
            return session_from_row(await cur.fetchone())

    async def get_session(self, session_id: str) -> SessionRecord:
        async with self._txn("read a session") as cur:
            await cur.execute(_q(sql.SELECT_SESSION), {"session": session_id})
            row = await cur.fetchone()
        if row is None:
            raise no_session(session_id, self.where)
        return session_from_row(row)

    async def list_sessions(self) -> list[SessionRecord]:
        async with self._txn("list sessions") as cur:
            await cur.execute(_q(sql.LIST_SESSIONS))
            return [session_from_row(row) for row in await cur.fetchall()]

    async def delete_session(self, session_id: str) -> None:
        params = {"session": session_id}
        async with self._txn("delete a session") as cur:
            await self._write_state(cur, session_id)
            await cur.execute(_q(sql.DELETE_SESSION_NODES), params)
            await cur.execute(_q(sql.DELETE_SESSION_TURNS), params)
            await cur.execute(_q(sql.DELETE_SESSION), params)

    # --- leases ----------------------------------------------------------------------------

    async def acquire_lease(
        self, session_id: str, owner: str, ttl_s: float = DEFAULT_LEASE_TTL_S
    ) -> Lease:
        owner, ttl_s = check_owner(owner), check_ttl(ttl_s)
        async with self._txn("acquire a lease") as cur:
            _, state = await self._write_state(cur, session_id)
            lease = grant(session_id, state, owner, ttl_s, self._clock())
            await cur.execute(_q(sql.GRANT_LEASE), lease_params(lease))
            return lease

    async def renew_lease(self, lease: Lease, ttl_s: float | None = None) -> Lease:
        ttl_s = check_ttl(lease.ttl_s if ttl_s is None else ttl_s)
        async with self._txn("renew a lease") as cur:
            _, state = await self._write_state(cur, lease.session_id)
            check_current(lease, state, "renew the lease")
            renewed = Lease(
                lease.session_id, lease.owner, lease.token, self._clock() + ttl_s, ttl_s
            )
            await cur.execute(_q(sql.RENEW_LEASE), lease_params(renewed))
            return renewed

    async def release_lease(self, lease: Lease) -> None:
        async with self._txn("release a lease") as cur:
            await cur.execute(_q(sql.RELEASE_LEASE), lease_params(lease))

    # --- fenced writes ---------------------------------------------------------------------

    async def commit_turn(self, lease: Lease, commit: TurnCommit) -> CommitResult:
        turn = prepare_turn(lease.session_id, commit)
        session_id = lease.session_id
        async with self._txn(f"commit turn {turn.turn_key!r}") as cur:
            leaf_before, state = await self._write_state(cur, session_id)
            await cur.execute(
                _q(sql.SELECT_TURN), {"session": session_id, "turn_key": turn.turn_key}
            )
            stored = await cur.fetchone()
            if stored is not None:
                return replayed_result(session_id, turn.turn_key, stored)
            check_current(lease, state, f"commit turn {turn.turn_key!r}")
            await cur.execute(
                f"SELECT id, session_id, tombstoned_at FROM conch_nodes WHERE {_IDS_IN}",
                {"ids": turn.ids_to_check()},
            )
            check_turn(session_id, turn, await cur.fetchall())
            now = self._clock()
            if turn.rows:
                await cur.executemany(_q(sql.INSERT_NODE), turn.rows)
            leaf = turn.leaf_id if turn.node_ids or turn.leaf_id is not None else leaf_before
            await cur.execute(
                _q(sql.INSERT_TURN),
                {
                    "session": session_id,
                    "turn_key": turn.turn_key,
                    "leaf": leaf,
                    "node_ids": _json_list(turn.node_ids),
                    "now": now,
                },
            )
            await cur.execute(
                _q(sql.MOVE_LEAF),
                {"session": session_id, "leaf": leaf, "now": now, "state": turn.plugin_state},
            )
        return CommitResult(session_id, turn.turn_key, leaf, turn.node_ids, utc_from_timestamp(now))

    async def set_leaf(self, lease: Lease, node_id: str | None) -> None:
        if node_id is not None:
            check_id(node_id, "node id")
        async with self._txn("move the leaf") as cur:
            _, state = await self._write_state(cur, lease.session_id)
            check_current(lease, state, "move the leaf")
            if node_id is not None:
                await cur.execute(
                    sql.POSTGRES_PATHS.active_path, {"session": lease.session_id, "leaf": node_id}
                )
                rows = await cur.fetchall()
                if not rows:
                    await self._raise_missing_node(cur, lease.session_id, node_id)
                path_from_rows(rows, lease.session_id, node_id)
            await cur.execute(
                _q(sql.MOVE_LEAF),
                {"session": lease.session_id, "leaf": node_id, "now": self._clock(), "state": None},
            )

    # --- reads -----------------------------------------------------------------------------

    async def load_active_path(self, session_id: str, leaf_id: str | None = None) -> list[Node]:
        async with self._txn("load the active path") as cur:
            await cur.execute(
                sql.POSTGRES_PATHS.active_path, {"session": session_id, "leaf": leaf_id}
            )
            rows = await cur.fetchall()
            if not rows:
                if leaf_id is not None:
                    await self._raise_missing_node(cur, session_id, leaf_id)
                await self._require_session(cur, session_id)
        return path_from_rows(rows, session_id, leaf_id)

    async def load_all_nodes(self, session_id: str) -> list[Node]:
        async with self._txn("load the session's nodes") as cur:
            await cur.execute(_q(sql.ALL_NODES), {"session": session_id})
            rows = await cur.fetchall()
            if not rows:
                await self._require_session(cur, session_id)
        return [node_from_row(row) for row in rows]

    async def get_node(self, session_id: str, node_id: str) -> Node:
        async with self._txn("read a node") as cur:
            await cur.execute(_q(sql.GET_NODE), {"id": node_id})
            row = await cur.fetchone()
            if row is None or row[1] != session_id or row[8] is not None:
                await self._raise_missing_node(cur, session_id, node_id, row)
        return node_from_row(row)

    async def get_turn(self, session_id: str, turn_key: str) -> CommitResult | None:
        check_id(turn_key, "turn_key")
        async with self._txn("read a turn") as cur:
            await cur.execute(_q(sql.SELECT_TURN), {"session": session_id, "turn_key": turn_key})
            row = await cur.fetchone()
        return None if row is None else replayed_result(session_id, turn_key, row)

    async def nearest_snapshot(self, session_id: str, node_id: str | None = None) -> Node | None:
        async with self._txn("find the nearest snapshot") as cur:
            await cur.execute(
                sql.POSTGRES_PATHS.nearest_snapshot, {"session": session_id, "leaf": node_id}
            )
            rows = await cur.fetchall()
            if not rows:
                if node_id is not None:
                    await self._raise_missing_node(cur, session_id, node_id)
                await self._require_session(cur, session_id)
                return None
        return nearest_from_rows(rows, session_id, node_id)

    # --- disk lifecycle --------------------------------------------------------------------

    async def orphaned_node_ids(self, session_id: str) -> list[str]:
        async with self._txn("list orphaned nodes") as cur:
            await self._require_session(cur, session_id)
            await cur.execute(
                sql.POSTGRES_PATHS.orphaned_node_ids, {"session": session_id, "leaf": None}
            )
            return [row[0] for row in await cur.fetchall()]

    async def tombstone_nodes(self, session_id: str, node_ids: Iterable[str]) -> int:
        ids = list(dict.fromkeys(node_ids))
        if not ids:
            return 0
        async with self._txn("tombstone nodes") as cur:
            await self._write_state(cur, session_id)
            await cur.execute(
                f"SELECT id, session_id, tombstoned_at FROM conch_nodes WHERE {_IDS_IN}",
                {"ids": ids},
            )
            found = await cur.fetchall()
            await cur.execute(
                sql.POSTGRES_PATHS.active_path_ids, {"session": session_id, "leaf": None}
            )
            active = {row[0] for row in await cur.fetchall()}
            count = check_tombstones(session_id, ids, found, active)
            now = self._clock()
            await cur.executemany(
                _q(sql.TOMBSTONE_NODE), [{"id": i, "session": session_id, "now": now} for i in ids]
            )
            return count

    async def vacuum(self) -> int:
        # Space is reclaimed by PostgreSQL's autovacuum; a VACUUM here would block on, and
        # slow down, every other session sharing the table.
        async with self._txn("vacuum the store") as cur:
            await cur.execute(sql.VACUUM_NODES)
            return max(cur.rowcount, 0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()


def _json_list(values: Iterable[str]) -> str:
    import json

    return json.dumps(list(values))


def _describe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
    except Exception:
        return "the configured PostgreSQL server"
    user = f"{info['user']}@" if info.get("user") else ""
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{host}{port}/{info.get('dbname') or ''}"


def _translate(exc: Exception, action: str, where: str) -> StoreError:
    from psycopg import errors
    from psycopg_pool import PoolTimeout

    if isinstance(exc, errors.DiskFull):
        return StoreError(
            f"cannot {action}: the PostgreSQL server at {where} is out of disk space; nothing of "
            "it was written and earlier commits are intact. Free space and retry"
        )
    if isinstance(exc, PoolTimeout | errors.OperationalError):
        return StoreError(
            f"cannot {action}: lost or could not get a connection to PostgreSQL at {where} "
            f"({exc}); check that the server runs, then retry"
        )
    if isinstance(exc, errors.UniqueViolation):
        return StoreError(
            f"cannot {action}: a row with the same key was written concurrently ({exc}); retry"
        )
    return StoreError(f"cannot {action}: PostgreSQL at {where} failed: {exc}")


@dataclass(frozen=True, slots=True)
class PostgresSessionStoreFactory:
    """Opens ``PostgresSessionStore``s on one database."""

    dsn: str
    min_size: int = 1
    max_size: int = 8
    connect_timeout_s: float = 10.0

    async def open(self) -> PostgresSessionStore:
        return await PostgresSessionStore.open(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            connect_timeout_s=self.connect_timeout_s,
        )
