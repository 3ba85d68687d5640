"""The ``SessionStore`` contract every backend keeps, and the factory that opens one."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from conch.store._lease import DEFAULT_LEASE_TTL_S, Lease
from conch.store._nodes import CommitResult, Node, SessionRecord, TurnCommit


@runtime_checkable
class SessionStore(Protocol):
    """Durable session graphs: sessions, nodes, turns, leases and the disk lifecycle.

    One store serves many sessions and is safe to share between tasks of one event loop.
    Reads need no lease; every write to a session's graph needs the session's current
    lease, checked inside the write's own transaction.
    """

    # --- sessions ------------------------------------------------------------------------

    async def create_session(
        self, session_id: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> SessionRecord:
        """Create an empty session (a fresh id when none is given). Existing id: StoreError."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord:
        """The session's record. Unknown id: ``SessionNotFoundError``."""
        ...

    async def list_sessions(self) -> list[SessionRecord]:
        """Every session, oldest first."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Delete the session, its nodes and turns, whoever holds its lease."""
        ...

    # --- one writer per session ---------------------------------------------------------

    async def acquire_lease(
        self, session_id: str, owner: str, ttl_s: float = DEFAULT_LEASE_TTL_S
    ) -> Lease:
        """Become the session's writer. Held by another live writer: ``LeaseConflictError``."""
        ...

    async def renew_lease(self, lease: Lease, ttl_s: float | None = None) -> Lease:
        """Extend a current lease (same token). Taken over: ``LeaseConflictError``."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Give the session up. Releasing a lease that is no longer current does nothing."""
        ...

    # --- writes (fenced) -----------------------------------------------------------------

    async def commit_turn(self, lease: Lease, commit: TurnCommit) -> CommitResult:
        """Store a turn's nodes, move the leaf and save plugin state in one transaction.

        A turn key committed before is not written again: its stored result comes back
        with ``replayed=True``.
        """
        ...

    async def set_leaf(self, lease: Lease, node_id: str | None) -> None:
        """Move the leaf (rewind or branch) to a live node of the session (None: empty)."""
        ...

    # --- reads ---------------------------------------------------------------------------

    async def load_active_path(self, session_id: str, leaf_id: str | None = None) -> list[Node]:
        """The nodes from the root to ``leaf_id`` (default: the session's leaf), root first.

        Costs O(path length), however large the history.
        """
        ...

    async def load_all_nodes(self, session_id: str) -> list[Node]:
        """Every live (not tombstoned) node of the session, in commit order."""
        ...

    async def get_node(self, session_id: str, node_id: str) -> Node:
        """One node, on the active path or not. Tombstoned, unknown or of another session:
        ``NodeNotFoundError`` saying which."""
        ...

    async def get_turn(self, session_id: str, turn_key: str) -> CommitResult | None:
        """What committing ``turn_key`` stored (``replayed=True``), or None if it never was:
        lets a writer retrying a turn skip the work the first attempt already committed."""
        ...

    async def nearest_snapshot(self, session_id: str, node_id: str | None = None) -> Node | None:
        """The closest node at or above ``node_id`` (default: the leaf) that carries a
        snapshot id, or None when no node on that path has one."""
        ...

    # --- disk lifecycle (the host's) ---------------------------------------------------

    async def orphaned_node_ids(self, session_id: str) -> list[str]:
        """Live nodes that are not on the active path, in commit order."""
        ...

    async def tombstone_nodes(self, session_id: str, node_ids: Iterable[str]) -> int:
        """Mark nodes deleted; returns how many were newly tombstoned. Refuses (and
        tombstones nothing) if any id is on the active path or not a node of the session."""
        ...

    async def vacuum(self) -> int:
        """Physically delete every tombstoned node; returns how many were deleted."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


@runtime_checkable
class SessionStoreFactory(Protocol):
    """Opens stores of one kind and place; what a runtime environment is configured with."""

    async def open(self) -> SessionStore:
        """A new open store; the caller owns it and closes it."""
        ...
