"""The store schema and the SQL both dialects share.

Queries are written once with ``:name`` placeholders (SQLite's style) and translated for
psycopg by ``to_pyformat``. Columns hold the same things in both dialects: timestamps are
seconds since the epoch (so lease arithmetic is identical), JSON is kept as text (JSONB would
reorder keys and change what a payload reads back as), and a tombstone is a timestamp.
"""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass

from conch.errors import StoreSchemaError
from conch.store._nodes import NODE_COLUMNS

#: The schema this version of conch writes. A store with a higher version is refused untouched.
SCHEMA_VERSION = 1

_PLACEHOLDER = re.compile(r"(?<![:\w]):(\w+)")


def schema_mismatch(where: str, version: object) -> StoreSchemaError:
    if isinstance(version, int) and version > SCHEMA_VERSION:
        return StoreSchemaError(
            f"{where} was written by a newer conch (store schema version {version}; this conch "
            f"reads version {SCHEMA_VERSION}); it was left untouched: upgrade conch to open it"
        )
    return StoreSchemaError(
        f"{where} has store schema version {version!r}, which this conch (version "
        f"{SCHEMA_VERSION}) does not know; it was left untouched"
    )


def to_pyformat(sql: str) -> str:
    """``:name`` placeholders to psycopg's ``%(name)s``."""
    return _PLACEHOLDER.sub(r"%(\1)s", sql)


def _ddl(*, text: str, real: str, blob: str, seq: str, node_id: str) -> tuple[str, ...]:
    return (
        """CREATE TABLE conch_schema (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL
        )""",
        f"""CREATE TABLE conch_sessions (
            id {text} PRIMARY KEY,
            leaf_node_id {text},
            metadata {text} NOT NULL,
            plugin_state {blob},
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL,
            schema_version INTEGER NOT NULL,
            lease_owner {text},
            lease_token BIGINT NOT NULL DEFAULT 0,
            lease_expires_at {real} NOT NULL DEFAULT 0
        )""",
        # seq gives commit order (parents before children) for listing a session's nodes.
        f"""CREATE TABLE conch_nodes (
            {seq},
            {node_id},
            session_id {text} NOT NULL,
            parent_id {text},
            kind {text} NOT NULL,
            payload {text} NOT NULL,
            created_at {real} NOT NULL,
            snapshot_id {text},
            turn_key {text},
            tombstoned_at {real}
        )""",
        "CREATE INDEX conch_nodes_by_session ON conch_nodes (session_id, seq)",
        f"""CREATE TABLE conch_turns (
            session_id {text} NOT NULL,
            turn_key {text} NOT NULL,
            leaf_node_id {text},
            node_ids {text} NOT NULL,
            committed_at {real} NOT NULL,
            PRIMARY KEY (session_id, turn_key)
        )""",
        f"INSERT INTO conch_schema (id, version) VALUES (1, {SCHEMA_VERSION})",
    )


# SQLite: seq is the rowid (insertion order for free); ids are looked up by a unique index.
SQLITE_DDL = _ddl(
    text="TEXT",
    real="REAL",
    blob="BLOB",
    seq="seq INTEGER PRIMARY KEY",
    node_id="id TEXT NOT NULL UNIQUE",
)
POSTGRES_DDL = _ddl(
    text="TEXT",
    real="DOUBLE PRECISION",
    blob="BYTEA",
    seq="seq BIGINT GENERATED ALWAYS AS IDENTITY",
    node_id="id TEXT PRIMARY KEY",
)

# --- sessions ---------------------------------------------------------------------------------

SESSION_COLUMNS = "id, leaf_node_id, metadata, created_at, updated_at, schema_version, plugin_state"
SELECT_SESSION = f"SELECT {SESSION_COLUMNS} FROM conch_sessions WHERE id = :session"
LIST_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM conch_sessions ORDER BY created_at, id"
INSERT_SESSION = """
    INSERT INTO conch_sessions (id, metadata, created_at, updated_at, schema_version)
    VALUES (:session, :metadata, :now, :now, :version)
    ON CONFLICT (id) DO NOTHING
"""
SESSION_EXISTS = "SELECT 1 FROM conch_sessions WHERE id = :session"
DELETE_SESSION_NODES = "DELETE FROM conch_nodes WHERE session_id = :session"
DELETE_SESSION_TURNS = "DELETE FROM conch_turns WHERE session_id = :session"
DELETE_SESSION = "DELETE FROM conch_sessions WHERE id = :session"

# --- leases and writes ----------------------------------------------------------------------

# The write transaction's first read; Postgres appends FOR UPDATE to lock the row.
SELECT_WRITE_STATE = """
    SELECT leaf_node_id, lease_owner, lease_token, lease_expires_at
    FROM conch_sessions WHERE id = :session
"""
GRANT_LEASE = """
    UPDATE conch_sessions SET lease_owner = :owner, lease_token = :token,
        lease_expires_at = :expires_at
    WHERE id = :session
"""
RENEW_LEASE = """
    UPDATE conch_sessions SET lease_expires_at = :expires_at
    WHERE id = :session AND lease_token = :token AND lease_owner = :owner
"""
RELEASE_LEASE = """
    UPDATE conch_sessions SET lease_owner = NULL, lease_expires_at = 0
    WHERE id = :session AND lease_token = :token AND lease_owner = :owner
"""
SELECT_TURN = """
    SELECT leaf_node_id, node_ids, committed_at FROM conch_turns
    WHERE session_id = :session AND turn_key = :turn_key
"""
INSERT_NODE = """
    INSERT INTO conch_nodes
        (id, session_id, parent_id, kind, payload, created_at, snapshot_id, turn_key)
    VALUES (:id, :session, :parent, :kind, :payload, :created_at, :snapshot, :turn_key)
"""
INSERT_TURN = """
    INSERT INTO conch_turns (session_id, turn_key, leaf_node_id, node_ids, committed_at)
    VALUES (:session, :turn_key, :leaf, :node_ids, :now)
"""
MOVE_LEAF = """
    UPDATE conch_sessions SET leaf_node_id = :leaf, updated_at = :now,
        plugin_state = COALESCE(:state, plugin_state)
    WHERE id = :session
"""
SELECT_NODE_STATE = "SELECT session_id, tombstoned_at FROM conch_nodes WHERE id = :id"

# --- reads ----------------------------------------------------------------------------------

# The walk starts at the given leaf or, when none is given, the session's leaf, so loading the
# current path is one statement (one consistent read) and O(path): each step is a lookup of
# the parent by its unique id, never a scan of the session's history.
_ANCHOR = """
    id = COALESCE(CAST(:leaf AS TEXT),
                  (SELECT leaf_node_id FROM conch_sessions WHERE id = :session))
"""
_PATH_COLUMNS = NODE_COLUMNS + ", tombstoned_at"
_N_PATH_COLUMNS = ", ".join(f"n.{c.strip()}" for c in _PATH_COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class PathQueries:
    """The queries that walk from a node up to the root, in one dialect.

    Each takes ``:session`` and ``:leaf`` (None: the session's leaf).
    """

    active_path: str
    """The path's nodes (``_PATH_COLUMNS``), root first."""
    nearest_snapshot: str
    """The path's nodes leaf first, stopping at the first one that carries a snapshot."""
    active_path_ids: str
    orphaned_node_ids: str
    """Live nodes of the session off the active path, in commit order."""


def _path_queries(step: str) -> PathQueries:
    """``step``: the FROM clause joining the walk so far (``path``) to the parent row (``n``)."""
    walk = f"""
        WITH RECURSIVE path(depth, {_PATH_COLUMNS}) AS (
            SELECT 0, {_PATH_COLUMNS} FROM conch_nodes WHERE {_ANCHOR}
            UNION ALL
            SELECT path.depth + 1, {_N_PATH_COLUMNS} {step}
    """
    return PathQueries(
        active_path=f"{walk} ) SELECT {_PATH_COLUMNS} FROM path ORDER BY depth DESC",
        nearest_snapshot=(
            f"{walk} WHERE path.snapshot_id IS NULL ) "
            f"SELECT {_PATH_COLUMNS} FROM path ORDER BY depth"
        ),
        active_path_ids=f"{walk} ) SELECT id FROM path",
        orphaned_node_ids=f"""{walk} )
            SELECT id FROM conch_nodes
            WHERE session_id = :session AND tombstoned_at IS NULL
              AND id NOT IN (SELECT id FROM path)
            ORDER BY seq
        """,
    )


# SQLite always looks the parent up through the unique index on id.
SQLITE_PATHS = _path_queries("FROM conch_nodes AS n JOIN path ON n.id = path.parent_id")
# PostgreSQL plans a plain join as a hash join over a sequential scan while the table is
# small (measured: 50 scans of the whole table for a 50-node path); the LIMIT keeps the
# lookup a separate index probe per step, so the walk stays O(path) at every table size.
POSTGRES_PATHS = PathQueries(
    *(
        to_pyformat(query)
        for query in astuple(
            _path_queries(
                f"FROM path CROSS JOIN LATERAL (SELECT {_PATH_COLUMNS} FROM conch_nodes "
                "WHERE id = path.parent_id LIMIT 1) AS n"
            )
        )
    )
)

ALL_NODES = f"""
    SELECT {NODE_COLUMNS} FROM conch_nodes
    WHERE session_id = :session AND tombstoned_at IS NULL ORDER BY seq
"""
GET_NODE = f"SELECT {_PATH_COLUMNS} FROM conch_nodes WHERE id = :id"

TOMBSTONE_NODE = """
    UPDATE conch_nodes SET tombstoned_at = :now
    WHERE id = :id AND session_id = :session AND tombstoned_at IS NULL
"""
VACUUM_NODES = "DELETE FROM conch_nodes WHERE tombstoned_at IS NOT NULL"
