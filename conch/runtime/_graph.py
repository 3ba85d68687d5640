"""The in-memory view of one session's graph: its leaf, its active path, and (under
``Residency.KEEP_ALL``) every other live node.

The store is the truth; the graph is what the session's single writer keeps in memory
between turns. Under ``ACTIVE_PATH_ONLY`` it holds exactly the active path, so memory and
resume time follow the path's length, never the history's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from conch.errors import ConfigurationError, SessionParkedError, StoreError
from conch.runtime._environment import Residency
from conch.store import CommitResult, Lease, Node, SessionStore

_PathChange = tuple[int, Sequence[Node]]
"""How many nodes of the current path to keep, and the nodes to append after them."""


class SessionGraph:
    """One session's nodes in memory, loaded from ``store`` according to ``residency``.

    Build one with ``await SessionGraph.load(store, session_id, residency)``. Reads of the
    active path are synchronous; anything that may need the disk is ``async``.
    """

    def __init__(
        self,
        store: SessionStore,
        session_id: str,
        residency: Residency,
        path: Sequence[Node],
        all_nodes: Sequence[Node] | None,
    ) -> None:
        self._store: SessionStore | None = store
        self.session_id = session_id
        self.residency = residency
        self._path: list[Node] = list(path)
        self._position: dict[str, int] = {node.id: i for i, node in enumerate(self._path)}
        # KEEP_ALL only: every live node, in commit order (the order orphans are listed in).
        self._all: dict[str, Node] | None = (
            {node.id: node for node in all_nodes} if all_nodes is not None else None
        )

    @classmethod
    async def load(
        cls, store: SessionStore, session_id: str, residency: Residency = Residency.KEEP_ALL
    ) -> SessionGraph:
        """Read the session from the store: every live node (KEEP_ALL), or only the active
        path, in one query (ACTIVE_PATH_ONLY). Unknown session: ``SessionNotFoundError``."""
        if not isinstance(residency, Residency):
            raise ConfigurationError(
                f"residency must be a Residency (KEEP_ALL or ACTIVE_PATH_ONLY), got {residency!r}"
            )
        if residency is Residency.ACTIVE_PATH_ONLY:
            path = await store.load_active_path(session_id)
            return cls(store, session_id, residency, path, None)
        record = await store.get_session(session_id)
        nodes = await store.load_all_nodes(session_id)
        by_id = {node.id: node for node in nodes}
        path = _walk_up(by_id, record.leaf_node_id)
        if path is None:
            # The leaf's ancestry is not among the live nodes (a concurrent writer, or a
            # damaged store): let the store's own path query say what is wrong.
            path = await store.load_active_path(session_id)
        return cls(store, session_id, residency, path, nodes)

    # --- the active path (in memory) ----------------------------------------------------

    @property
    def leaf_node_id(self) -> str | None:
        """The end of the active path (None: the session is empty or rewound before its
        first node)."""
        self._check_open()
        return self._path[-1].id if self._path else None

    def active_path(self) -> list[Node]:
        """The nodes from the root to the leaf, root first (a copy)."""
        self._check_open()
        return list(self._path)

    def nearest_snapshot_id(self) -> str | None:
        """The snapshot id of the closest node at or above the leaf that has one: the REPL
        state to restore when the session continues from here."""
        self._check_open()
        for node in reversed(self._path):
            if node.snapshot_id is not None:
                return node.snapshot_id
        return None

    @property
    def resident_node_count(self) -> int:
        """How many nodes this graph holds in memory."""
        self._check_open()
        return len(self._all) if self._all is not None else len(self._path)

    # --- history (memory, or disk under ACTIVE_PATH_ONLY) -------------------------------

    async def orphaned_node_ids(self) -> list[str]:
        """Live nodes not on the active path, in commit order: what the host may pass to
        ``tombstone_nodes`` to reclaim disk."""
        store = self._check_open()
        if self._all is None:
            return await store.orphaned_node_ids(self.session_id)
        return [node_id for node_id in self._all if node_id not in self._position]

    async def get_historic_node(self, node_id: str) -> Node:
        """Any live node of the session. Under ACTIVE_PATH_ONLY a node off the path is read
        from the store and not kept: memory stays the size of the path."""
        store = self._check_open()
        if node_id in self._position:
            return self._path[self._position[node_id]]
        if self._all is not None and node_id in self._all:
            return self._all[node_id]
        return await store.get_node(self.session_id, node_id)

    async def tombstone_nodes(self, node_ids: Iterable[str]) -> int:
        """``store.tombstone_nodes`` for this session, dropping the nodes from memory too.

        Under KEEP_ALL, tombstone through the graph (not the store directly) or the
        tombstoned nodes stay in memory and keep being listed as orphans.
        """
        store = self._check_open()
        ids = list(node_ids)
        count = await store.tombstone_nodes(self.session_id, ids)
        if self._all is not None:
            for node_id in ids:
                self._all.pop(node_id, None)
        return count

    # --- changes (after the store has accepted them) ------------------------------------

    async def apply_commit(self, result: CommitResult, nodes: Sequence[Node]) -> None:
        """Take in a turn the store committed: ``result`` from ``commit_turn`` and the
        ``nodes`` of the ``TurnCommit`` it was given.

        A replayed commit (the turn key was committed before, perhaps with other node ids)
        is read back from the store, so memory matches what was actually stored.
        """
        store = self._check_open()
        if result.session_id != self.session_id:
            raise StoreError(
                f"a commit of session {result.session_id!r} cannot be applied to the graph of "
                f"session {self.session_id!r}; apply each commit to its own session's graph"
            )
        committed = [replace(node, turn_key=result.turn_key) for node in nodes]
        if [node.id for node in committed] != list(result.node_ids):
            if result.replayed:
                await self._reload(store)
                return
            raise StoreError(
                f"the nodes given for turn {result.turn_key!r} are not the ones it committed "
                f"({len(nodes)} given, {len(result.node_ids)} committed); pass the "
                "TurnCommit's own nodes"
            )
        if self._all is not None:
            for node in committed:
                self._all[node.id] = node
        change = self._path_to(result.leaf_node_id, {node.id: node for node in committed})
        if change is None:
            # The new leaf hangs from a node that is not resident (a branch off an orphan
            # under ACTIVE_PATH_ONLY): one path query.
            change = 0, await store.load_active_path(self.session_id, result.leaf_node_id)
        self._change_path(*change)

    async def move_leaf(self, lease: Lease, node_id: str | None) -> None:
        """Rewind (or branch) the session to ``node_id`` (None: before its first node).

        The store checks the node (it must be a live node of this session whose path is
        intact) and records the new leaf under ``lease``; only then does memory change.
        Under ACTIVE_PATH_ONLY the new path is read from the store and the old one dropped.
        """
        store = self._check_open()
        if lease.session_id != self.session_id:
            raise StoreError(
                f"the lease is for session {lease.session_id!r}, not {self.session_id!r}; "
                "move the leaf with this session's lease"
            )
        if node_id is None:
            path: list[Node] = []
        else:
            # Reading the path first validates the target; a refused set_leaf below then
            # leaves memory as it was.
            path = await store.load_active_path(self.session_id, node_id)
            if self._all is not None:
                # Share the resident objects rather than holding the path's nodes twice.
                path = [self._all.get(node.id, node) for node in path]
        await store.set_leaf(lease, node_id)
        self._change_path(0, path)

    # --- parking ----------------------------------------------------------------------

    def release(self) -> SessionStore:
        """Drop every node and the store reference; returns the store. The graph cannot
        be used afterwards (``SessionParkedError``)."""
        store = self._check_open()
        self._store = None
        self._path, self._position, self._all = [], {}, None
        return store

    @property
    def store(self) -> SessionStore:
        return self._check_open()

    # --- internals --------------------------------------------------------------------

    def _check_open(self) -> SessionStore:
        if self._store is None:
            raise SessionParkedError(
                f"the graph of session {self.session_id!r} was released (the session was "
                "parked); resume the session to use it again"
            )
        return self._store

    def _path_to(self, leaf_id: str | None, new: dict[str, Node]) -> _PathChange | None:
        """How the path changes to end at ``leaf_id``, from memory alone (None: the path
        leaves memory).

        Walks up only until it meets the current path, so extending the leaf costs
        O(new nodes), not O(path).
        """
        tail: list[Node] = []
        current = leaf_id
        while current is not None:
            if current in self._position:
                return self._position[current] + 1, tail[::-1]
            node = new.get(current) or (self._all.get(current) if self._all else None)
            if node is None:
                return None
            tail.append(node)
            current = node.parent_id
        return 0, tail[::-1]

    def _change_path(self, keep: int, tail: Sequence[Node]) -> None:
        """Keep the first ``keep`` nodes of the path and append ``tail``."""
        for node in self._path[keep:]:
            del self._position[node.id]
        del self._path[keep:]
        for node in tail:
            self._position[node.id] = len(self._path)
            self._path.append(node)

    async def _reload(self, store: SessionStore) -> None:
        fresh = await SessionGraph.load(store, self.session_id, self.residency)
        self._path, self._position, self._all = fresh._path, fresh._position, fresh._all


def _walk_up(by_id: dict[str, Node], leaf_id: str | None) -> list[Node] | None:
    path: list[Node] = []
    current = leaf_id
    while current is not None:
        node = by_id.get(current)
        if node is None:
            return None
        path.append(node)
        current = node.parent_id
    path.reverse()
    return path
