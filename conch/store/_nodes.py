"""Value types of the session graph: nodes, sessions, turn commits and their results.

These are plain frozen records; the stores turn them into rows and back. Everything a store
can reject without touching the database (bad ids, payloads that are not JSON, a turn whose
nodes do not hang together) is checked here, so both backends refuse the same input with the
same message.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from conch.errors import StoreError

#: Longest session, node, turn-key or snapshot id a store accepts.
MAX_ID_LENGTH = 255


class NodeKind(enum.StrEnum):
    """What a node of the session graph records."""

    USER_INPUT = "user_input"
    MODEL_REPLY = "model_reply"
    CODE_CELL = "code_cell"
    CELL_OUTPUT = "cell_output"
    SUB_CALL = "sub_call"
    ANSWER = "answer"
    SYSTEM = "system"
    ERROR = "error"
    """A turn that failed: what went wrong, kept so the history shows it."""


def node_kind(kind: NodeKind | str, where: str = "a node") -> NodeKind:
    try:
        return NodeKind(kind)
    except ValueError:
        kinds = ", ".join(k.value for k in NodeKind)
        raise StoreError(f"{where} has unknown kind {kind!r}; use one of {kinds}") from None


def new_id() -> str:
    """A fresh 32-hex-digit id whose leading digits are the time in milliseconds.

    Time-ordered ids keep index inserts near the end of the B-tree, which keeps commits
    fast as the history grows; the 80 random bits make collisions practically impossible.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def utc_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a session graph. Treat ``payload`` as read-only."""

    id: str
    session_id: str
    parent_id: str | None
    kind: NodeKind
    payload: Mapping[str, Any]
    created_at: datetime
    snapshot_id: str | None = None
    """The sandbox snapshot taken at this node, if any (restored when the leaf moves here)."""
    turn_key: str | None = None
    """The turn that committed this node; stamped by the store at commit."""

    @classmethod
    def new(
        cls,
        session_id: str,
        kind: NodeKind | str,
        payload: Mapping[str, Any] | None = None,
        *,
        parent_id: str | None = None,
        snapshot_id: str | None = None,
    ) -> Node:
        """A node with a fresh id and the current time."""
        return cls(
            id=new_id(),
            session_id=session_id,
            parent_id=parent_id,
            kind=node_kind(kind),
            payload=dict(payload or {}),
            created_at=datetime.now(UTC),
            snapshot_id=snapshot_id,
        )


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What a store knows about a session besides its nodes."""

    id: str
    leaf_node_id: str | None
    """The end of the active path (None: the session has no nodes yet, or was rewound to
    before its first node)."""
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    schema_version: int
    """The store schema version the session was created under."""
    plugin_state: bytes | None = None
    """The plugin state saved by the latest turn that carried one."""


@dataclass(frozen=True, slots=True)
class TurnCommit:
    """Everything one turn writes, committed atomically by ``SessionStore.commit_turn``.

    ``nodes`` are in parent-before-child order. ``leaf_id`` defaults to the last node (or,
    for a turn without nodes, the current leaf). ``turn_key`` makes the commit idempotent:
    committing the same key again stores nothing and returns the first result.
    """

    turn_key: str
    nodes: Sequence[Node] = ()
    leaf_id: str | None = None
    plugin_state: bytes | None = None
    """Opaque plugin state to save with the turn (None leaves the saved state as it is)."""

    @property
    def new_leaf_id(self) -> str | None:
        if self.leaf_id is not None:
            return self.leaf_id
        return self.nodes[-1].id if self.nodes else None


@dataclass(frozen=True, slots=True)
class CommitResult:
    session_id: str
    turn_key: str
    leaf_node_id: str | None
    node_ids: tuple[str, ...]
    committed_at: datetime
    replayed: bool = False
    """True when the turn key had been committed before and nothing was written now."""


# --- validation and row encoding shared by both backends ---------------------------------


def check_id(value: object, what: str) -> str:
    """Refuse ids a store cannot hold faithfully (empty, too long, not text, NUL)."""
    if not isinstance(value, str) or not value:
        raise StoreError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise StoreError(
            f"{what} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}: "
            "use a shorter id (a UUID or a hash)"
        )
    if "\x00" in value:
        raise StoreError(f"{what} {value!r} contains a NUL character; remove it")
    return value


def encode_json(value: Mapping[str, Any], what: str) -> str:
    """Strict JSON text: NaN and infinities are refused so every backend can read it back."""
    if not isinstance(value, Mapping):
        raise StoreError(f"{what} must be a JSON object (a dict), got {type(value).__name__}")
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"{what} cannot be stored as JSON ({exc}); convert it to dicts, lists, strings, "
            "finite numbers, booleans and None first"
        ) from exc


def check_plugin_state(state: object) -> bytes | None:
    if state is None or isinstance(state, bytes):
        return state
    raise StoreError(
        f"plugin_state must be bytes or None, got {type(state).__name__}; "
        "serialise it (e.g. json.dumps(...).encode()) before committing"
    )


@dataclass(frozen=True, slots=True)
class PreparedTurn:
    """A ``TurnCommit`` checked and encoded, ready for one transaction."""

    turn_key: str
    rows: list[dict[str, Any]]
    node_ids: tuple[str, ...]
    external_parent_ids: frozenset[str]
    """Parents the turn hangs from that must already be live nodes of the session."""
    leaf_id: str | None
    leaf_is_new: bool
    plugin_state: bytes | None

    def ids_to_check(self) -> list[str]:
        """Existing nodes the turn names (its own ids, its parents, an old leaf), sorted:
        the commit reads their rows to refuse duplicates, strangers and tombstones."""
        ids = set(self.node_ids) | self.external_parent_ids
        if self.leaf_id is not None and not self.leaf_is_new:
            ids.add(self.leaf_id)
        return sorted(ids)


def prepare_turn(session_id: str, commit: TurnCommit) -> PreparedTurn:
    """Check a turn on its own (no database needed) and encode its nodes as rows."""
    if not isinstance(commit, TurnCommit):
        raise StoreError(f"commit_turn expects a TurnCommit, got {type(commit).__name__}")
    turn_key = check_id(commit.turn_key, "turn_key")
    seen: set[str] = set()
    external: set[str] = set()
    rows: list[dict[str, Any]] = []
    for position, node in enumerate(commit.nodes):
        where = f"node #{position} of turn {turn_key!r}"
        if not isinstance(node, Node):
            raise StoreError(f"{where} is a {type(node).__name__}, not a Node")
        check_id(node.id, f"the id of {where}")
        if node.session_id != session_id:
            raise StoreError(
                f"{where} ({node.id!r}) belongs to session {node.session_id!r}, but the lease "
                f"is for session {session_id!r}: build the turn's nodes with the lease's session"
            )
        if node.id in seen:
            raise StoreError(f"{where} repeats node id {node.id!r}; every node needs its own id")
        if node.turn_key not in (None, turn_key):
            raise StoreError(
                f"{where} carries turn key {node.turn_key!r}, not {turn_key!r}; leave it None "
                "and the store stamps it"
            )
        if node.parent_id is not None:
            check_id(node.parent_id, f"the parent id of {where}")
            if node.parent_id == node.id:
                raise StoreError(f"{where} ({node.id!r}) names itself as its parent")
            if node.parent_id not in seen:
                external.add(node.parent_id)
        if node.snapshot_id is not None:
            check_id(node.snapshot_id, f"the snapshot id of {where}")
        kind = node_kind(node.kind, where)
        seen.add(node.id)
        rows.append(
            {
                "id": node.id,
                "session": session_id,
                "parent": node.parent_id,
                "kind": kind.value,
                "payload": encode_json(node.payload, f"the payload of {where}"),
                "created_at": node.created_at.timestamp(),
                "snapshot": node.snapshot_id,
                "turn_key": turn_key,
            }
        )
    leaf_id = commit.new_leaf_id
    if leaf_id is not None:
        check_id(leaf_id, "leaf_id")
    # Parents that appear later in the same turn are a mistake, not an external parent.
    late = external & seen
    if late:
        raise StoreError(
            f"turn {turn_key!r} lists a child before its parent ({sorted(late)}); "
            "order the nodes parent first"
        )
    return PreparedTurn(
        turn_key=turn_key,
        rows=rows,
        node_ids=tuple(node.id for node in commit.nodes),
        external_parent_ids=frozenset(external),
        leaf_id=leaf_id,
        leaf_is_new=leaf_id in seen,
        plugin_state=check_plugin_state(commit.plugin_state),
    )


#: The columns of a node row, in the order every node query selects them.
NODE_COLUMNS = "id, session_id, parent_id, kind, payload, created_at, snapshot_id, turn_key"


def node_from_row(row: Sequence[Any]) -> Node:
    """Build a ``Node`` from a row selected as ``NODE_COLUMNS``."""
    node_id, session_id, parent_id, kind, payload, created_at, snapshot_id, turn_key = row[:8]
    return Node(
        id=node_id,
        session_id=session_id,
        parent_id=parent_id,
        kind=NodeKind(kind),
        payload=json.loads(payload),
        created_at=utc_from_timestamp(created_at),
        snapshot_id=snapshot_id,
        turn_key=turn_key,
    )
