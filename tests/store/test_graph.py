"""Rewinding, branches, orphans, snapshots on the path, and the host's disk lifecycle."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from conch.errors import LeaseConflictError, NodeNotFoundError, StoreError
from conch.store import Lease, Node, NodeKind, SessionStore, TurnCommit
from tests.store.conftest import chain


@dataclass
class Branched:
    """A session whose first turn was followed by two branches; the leaf ends branch b.

    root(user_input) ─ reply(answer) ─┬─ a1 ─ a2      (orphaned)
                                      └─ b1 ─ b2      (active)
    """

    session: str
    lease: Lease
    trunk: list[Node]
    a: list[Node]
    b: list[Node]


@pytest.fixture
async def branched(store: SessionStore) -> Branched:
    await store.create_session("s1")
    lease = await store.acquire_lease("s1", "writer")
    trunk = chain("s1", None, "user_input", "answer")
    a = chain("s1", trunk[-1].id, "user_input", "answer")
    b = chain("s1", trunk[-1].id, "user_input", "answer")
    await store.commit_turn(lease, TurnCommit("t1", trunk))
    await store.commit_turn(lease, TurnCommit("t2", a))
    await store.set_leaf(lease, trunk[-1].id)  # rewind
    await store.commit_turn(lease, TurnCommit("t3", b))
    return Branched("s1", lease, trunk, a, b)


def ids(nodes: list[Node]) -> list[str]:
    return [n.id for n in nodes]


async def test_rewinding_then_committing_branches_the_graph(
    store: SessionStore, branched: Branched
) -> None:
    assert ids(await store.load_active_path("s1")) == ids(branched.trunk + branched.b)
    assert await store.orphaned_node_ids("s1") == ids(branched.a)
    assert len(await store.load_all_nodes("s1")) == 6


async def test_an_orphan_stays_readable_until_tombstoned(
    store: SessionStore, branched: Branched
) -> None:
    orphan = await store.get_node("s1", branched.a[1].id)
    assert orphan.payload == {"kind": "answer"}


async def test_a_branch_path_can_be_loaded_without_moving_the_leaf(
    store: SessionStore, branched: Branched
) -> None:
    path = await store.load_active_path("s1", leaf_id=branched.a[1].id)
    assert ids(path) == ids(branched.trunk + branched.a)
    assert (await store.get_session("s1")).leaf_node_id == branched.b[1].id


async def test_moving_the_leaf_to_an_orphan_makes_its_branch_active(
    store: SessionStore, branched: Branched
) -> None:
    await store.set_leaf(branched.lease, branched.a[1].id)

    assert ids(await store.load_active_path("s1")) == ids(branched.trunk + branched.a)
    assert await store.orphaned_node_ids("s1") == ids(branched.b)


async def test_rewinding_to_before_the_first_node_empties_the_path(
    store: SessionStore, branched: Branched
) -> None:
    await store.set_leaf(branched.lease, None)

    assert await store.load_active_path("s1") == []
    assert len(await store.orphaned_node_ids("s1")) == 6


async def test_a_node_of_another_session_is_refused_naming_both_sessions(
    store: SessionStore, branched: Branched
) -> None:
    await store.create_session("s2")
    foreign = branched.trunk[0].id

    with pytest.raises(NodeNotFoundError, match="belongs to session 's1', not to session 's2'"):
        await store.get_node("s2", foreign)
    with pytest.raises(NodeNotFoundError, match="belongs to session 's1', not to session 's2'"):
        await store.load_active_path("s2", leaf_id=foreign)
    s2_lease = await store.acquire_lease("s2", "writer")
    with pytest.raises(NodeNotFoundError, match="belongs to session 's1', not to session 's2'"):
        await store.set_leaf(s2_lease, foreign)
    assert (await store.get_session("s2")).leaf_node_id is None


async def test_an_unknown_node_is_refused(store: SessionStore, branched: Branched) -> None:
    with pytest.raises(NodeNotFoundError, match="has no node 'nope'"):
        await store.get_node("s1", "nope")
    with pytest.raises(NodeNotFoundError, match="has no node 'nope'"):
        await store.set_leaf(branched.lease, "nope")
    assert (await store.get_session("s1")).leaf_node_id == branched.b[1].id


async def test_moving_the_leaf_needs_the_current_lease(
    store: SessionStore, branched: Branched
) -> None:
    await store.release_lease(branched.lease)
    with pytest.raises(LeaseConflictError, match="released"):
        await store.set_leaf(branched.lease, branched.a[1].id)


# --- the host's disk lifecycle -----------------------------------------------------------------


async def test_tombstoned_nodes_can_no_longer_be_read_or_rewound_to(
    store: SessionStore, branched: Branched
) -> None:
    orphans = await store.orphaned_node_ids("s1")
    assert await store.tombstone_nodes("s1", orphans) == 2

    with pytest.raises(NodeNotFoundError, match="was tombstoned"):
        await store.get_node("s1", branched.a[0].id)
    with pytest.raises(NodeNotFoundError, match="tombstoned"):
        await store.set_leaf(branched.lease, branched.a[1].id)
    assert await store.orphaned_node_ids("s1") == []
    assert ids(await store.load_all_nodes("s1")) == ids(branched.trunk + branched.b)
    assert (await store.get_session("s1")).leaf_node_id == branched.b[1].id


async def test_a_node_whose_ancestor_was_tombstoned_cannot_be_rewound_to(
    store: SessionStore, branched: Branched
) -> None:
    await store.tombstone_nodes("s1", [branched.a[0].id])

    with pytest.raises(NodeNotFoundError, match="ancestor"):
        await store.set_leaf(branched.lease, branched.a[1].id)
    with pytest.raises(NodeNotFoundError, match="ancestor"):
        await store.load_active_path("s1", leaf_id=branched.a[1].id)


async def test_tombstoning_the_active_path_is_refused_and_tombstones_nothing(
    store: SessionStore, branched: Branched
) -> None:
    request = [branched.a[0].id, branched.b[0].id]
    with pytest.raises(StoreError, match="active path") as caught:
        await store.tombstone_nodes("s1", request)

    assert branched.b[0].id in str(caught.value)
    assert await store.orphaned_node_ids("s1") == ids(branched.a)


async def test_tombstoning_a_node_of_another_session_is_refused(
    store: SessionStore, branched: Branched
) -> None:
    await store.create_session("s2")
    with pytest.raises(NodeNotFoundError, match="not to session 's2'"):
        await store.tombstone_nodes("s2", [branched.a[0].id])
    assert await store.orphaned_node_ids("s1") == ids(branched.a)


async def test_tombstoning_is_idempotent(store: SessionStore, branched: Branched) -> None:
    assert await store.tombstone_nodes("s1", ids(branched.a)) == 2
    assert await store.tombstone_nodes("s1", ids(branched.a)) == 0


async def test_vacuum_deletes_only_tombstoned_nodes(
    store: SessionStore, branched: Branched
) -> None:
    await store.tombstone_nodes("s1", await store.orphaned_node_ids("s1"))

    assert await store.vacuum() == 2
    assert await store.vacuum() == 0
    with pytest.raises(NodeNotFoundError, match="tombstoned and vacuumed"):
        await store.get_node("s1", branched.a[0].id)
    assert ids(await store.load_active_path("s1")) == ids(branched.trunk + branched.b)


async def test_a_path_cut_by_vacuum_is_refused_not_truncated(
    store: SessionStore, branched: Branched
) -> None:
    # Tombstone only a2's parent: after vacuum, a2 hangs from a node that no longer exists.
    await store.tombstone_nodes("s1", [branched.a[0].id])
    await store.vacuum()

    with pytest.raises(NodeNotFoundError, match="vacuumed"):
        await store.load_active_path("s1", leaf_id=branched.a[1].id)
    with pytest.raises(NodeNotFoundError, match="vacuumed"):
        await store.set_leaf(branched.lease, branched.a[1].id)
    assert await store.orphaned_node_ids("s1") == [branched.a[1].id]


# --- snapshots on the path -------------------------------------------------------------------


async def test_the_nearest_snapshot_is_found_walking_up_from_the_leaf(
    store: SessionStore,
) -> None:
    await store.create_session("s1")
    lease = await store.acquire_lease("s1", "writer")
    root = Node.new("s1", NodeKind.USER_INPUT, snapshot_id="snap-root")
    cell = Node.new("s1", NodeKind.CODE_CELL, parent_id=root.id, snapshot_id="snap-cell")
    out = Node.new("s1", NodeKind.CELL_OUTPUT, parent_id=cell.id)
    side = Node.new("s1", NodeKind.CODE_CELL, parent_id=root.id)
    await store.commit_turn(lease, TurnCommit("t1", [root, cell, out]))
    await store.commit_turn(lease, TurnCommit("t2", [side], leaf_id=out.id))

    assert (await store.nearest_snapshot("s1")).snapshot_id == "snap-cell"
    assert (await store.nearest_snapshot("s1", cell.id)).id == cell.id
    assert (await store.nearest_snapshot("s1", side.id)).snapshot_id == "snap-root"


async def test_no_snapshot_on_the_path_gives_none(store: SessionStore) -> None:
    await store.create_session("s1")
    assert await store.nearest_snapshot("s1") is None
    lease = await store.acquire_lease("s1", "writer")
    await store.commit_turn(lease, TurnCommit("t1", chain("s1", None, "user_input", "answer")))
    assert await store.nearest_snapshot("s1") is None
