"""Rules of the session graph that both backends enforce on the rows they read.

The backends differ in how they talk to their database; what a row means, and which writes
a row forbids, is decided here once so both refuse the same things with the same words.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from conch.errors import NodeNotFoundError, SessionNotFoundError, StoreError
from conch.store._lease import Lease
from conch.store._nodes import (
    CommitResult,
    Node,
    PreparedTurn,
    SessionRecord,
    node_from_row,
    utc_from_timestamp,
)

#: A row of ``SELECT id, session_id, tombstoned_at FROM conch_nodes``.
NodeState = Sequence[Any]


def no_session(session_id: str, where: str) -> SessionNotFoundError:
    return SessionNotFoundError(
        f"no session {session_id!r} in {where}; check the id, or create the session first"
    )


def session_exists(session_id: str, where: str) -> StoreError:
    return StoreError(
        f"session {session_id!r} already exists in {where}; resume it, or create the new "
        "session under another id"
    )


def missing_node_error(session_id: str, node_id: str, row: Sequence[Any] | None) -> StoreError:
    """The error for a node that cannot be read in ``session_id`` (``row``: its row, if any)."""
    if row is None:
        return NodeNotFoundError(
            f"session {session_id!r} has no node {node_id!r} (it never existed, or it was "
            "tombstoned and vacuumed); check the id"
        )
    if row[1] != session_id:
        return NodeNotFoundError(
            f"node {node_id!r} belongs to session {row[1]!r}, not to session {session_id!r}; "
            "nodes can only be read or rewound to within their own session"
        )
    return NodeNotFoundError(
        f"node {node_id!r} of session {session_id!r} was tombstoned; it can no longer be read "
        "or rewound to"
    )


def session_from_row(row: Sequence[Any]) -> SessionRecord:
    """Build a record from a row selected as ``SESSION_COLUMNS``."""
    session_id, leaf, metadata, created_at, updated_at, version, plugin_state = row
    return SessionRecord(
        id=session_id,
        leaf_node_id=leaf,
        metadata=json.loads(metadata),
        created_at=utc_from_timestamp(created_at),
        updated_at=utc_from_timestamp(updated_at),
        schema_version=version,
        plugin_state=bytes(plugin_state) if plugin_state is not None else None,
    )


def lease_params(lease: Lease) -> dict[str, Any]:
    return {
        "session": lease.session_id,
        "owner": lease.owner,
        "token": lease.token,
        "expires_at": lease.expires_at,
    }


def replayed_result(session_id: str, turn_key: str, row: Sequence[Any]) -> CommitResult:
    """The stored result of a turn key committed before (a row of ``SELECT_TURN``)."""
    leaf, node_ids, committed_at = row
    return CommitResult(
        session_id,
        turn_key,
        leaf,
        tuple(json.loads(node_ids)),
        utc_from_timestamp(committed_at),
        replayed=True,
    )


def check_turn(session_id: str, turn: PreparedTurn, found: Sequence[NodeState]) -> None:
    """Refuse a turn whose new ids exist already, or whose parents or leaf are not live
    nodes of the session. ``found``: the rows of every id the turn names."""
    rows = {row[0]: row for row in found}
    taken = [node_id for node_id in turn.node_ids if node_id in rows]
    if taken:
        owners = sorted({rows[node_id][1] for node_id in taken})
        raise StoreError(
            f"turn {turn.turn_key!r} was not committed: node ids {taken} already exist (in "
            f"session(s) {owners}); node ids are unique across the store: use fresh ids "
            "(Node.new makes them)"
        )
    named = set(turn.external_parent_ids)
    if turn.leaf_id is not None and not turn.leaf_is_new:
        named.add(turn.leaf_id)
    for node_id in sorted(named):
        row = rows.get(node_id)
        if row is None or row[1] != session_id or row[2] is not None:
            error = missing_node_error(session_id, node_id, row)
            raise type(error)(f"turn {turn.turn_key!r} was not committed: {error}")


def path_from_rows(
    rows: Sequence[Sequence[Any]], session_id: str, leaf_id: str | None
) -> list[Node]:
    """Check a root-first path read by the recursive query and build its nodes.

    The query follows parent ids blindly; this is where a path that leaves the session,
    passes a tombstoned node or stops at a vacuumed parent is refused.
    """
    if not rows:
        return []
    end = rows[-1][0]
    for row in rows:
        node_id, owner, tombstoned_at = row[0], row[1], row[8]
        if owner != session_id:
            raise NodeNotFoundError(
                f"node {node_id!r} belongs to session {owner!r}, not to session "
                f"{session_id!r}; a session's path can only run through its own nodes"
            )
        if tombstoned_at is not None:
            what = "is" if node_id == end else f"(an ancestor of {end!r}) is"
            raise NodeNotFoundError(
                f"node {node_id!r} of session {session_id!r} {what} tombstoned; a path through "
                "it can no longer be loaded or rewound to: pick a node whose path is intact"
            )
    if rows[0][2] is not None:
        raise NodeNotFoundError(
            f"the path to {leaf_id or end!r} in session {session_id!r} stops at {rows[0][0]!r}, "
            f"whose parent {rows[0][2]!r} was tombstoned and vacuumed; pick a node whose path "
            "is intact"
        )
    return [node_from_row(row) for row in rows]


def nearest_from_rows(
    rows: Sequence[Sequence[Any]], session_id: str, node_id: str | None
) -> Node | None:
    """The first node carrying a snapshot in a leaf-first walk (``nearest_snapshot`` rows)."""
    end = rows[0]
    if end[1] != session_id or end[8] is not None:
        raise missing_node_error(session_id, node_id or end[0], end)
    for row in rows:
        if row[1] != session_id:
            break
        if row[6] is not None:
            return node_from_row(row)
    return None


def check_tombstones(
    session_id: str, ids: Sequence[str], found: Sequence[NodeState], active: set[str]
) -> int:
    """Refuse tombstoning active-path nodes or nodes of other sessions; returns how many of
    ``ids`` are live (and so will be newly tombstoned)."""
    on_path = [node_id for node_id in ids if node_id in active]
    if on_path:
        raise StoreError(
            f"nothing was tombstoned: nodes {on_path} are on the active path of session "
            f"{session_id!r}; only orphans can be tombstoned (ask orphaned_node_ids() again, "
            "the leaf may have moved)"
        )
    rows = {row[0]: row for row in found}
    for node_id in ids:
        row = rows.get(node_id)
        if row is None or row[1] != session_id:
            error = missing_node_error(session_id, node_id, row)
            raise NodeNotFoundError(f"nothing was tombstoned: {error}")
    return sum(1 for node_id in ids if rows[node_id][2] is None)
