"""SessionGraph: one session's nodes in memory, kept in step with a real store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pytest

from conch.errors import ConfigurationError, LeaseConflictError, NodeNotFoundError, StoreError
from conch.runtime import Residency, SessionGraph, SessionParkedError
from conch.store import CommitResult, Lease, Node, SessionStore

if TYPE_CHECKING:
    from conftest import Writer


@pytest.fixture(params=list(Residency), ids=lambda r: r.value)
def residency(request: pytest.FixtureRequest) -> Residency:
    return request.param


def ids(nodes: Sequence[Node]) -> list[str]:
    return [node.id for node in nodes]


async def test_an_empty_session_has_no_leaf_and_no_path(
    store: SessionStore, lease: Lease, session_id: str, residency: Residency
) -> None:
    graph = await SessionGraph.load(store, session_id, residency)

    assert graph.leaf_node_id is None
    assert graph.active_path() == []
    assert graph.resident_node_count == 0
    assert graph.nearest_snapshot_id() is None
    assert await graph.orphaned_node_ids() == []


async def test_loads_the_same_active_path_and_orphans_as_the_store(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    path_ids = await writer.history(path_length=6, orphans=4)

    graph = await SessionGraph.load(store, session_id, residency)

    assert ids(graph.active_path()) == path_ids
    assert graph.leaf_node_id == path_ids[-1]
    assert await graph.orphaned_node_ids() == await store.orphaned_node_ids(session_id)
    assert len(await graph.orphaned_node_ids()) == 4


@pytest.mark.parametrize("orphans", [0, 10, 60])
async def test_active_path_only_keeps_exactly_the_path_however_large_the_history(
    store: SessionStore, writer: Writer, session_id: str, orphans: int
) -> None:
    await writer.history(path_length=5, orphans=orphans)

    active_only = await SessionGraph.load(store, session_id, Residency.ACTIVE_PATH_ONLY)
    keep_all = await SessionGraph.load(store, session_id, Residency.KEEP_ALL)

    assert active_only.resident_node_count == len(active_only.active_path()) == 5
    assert keep_all.resident_node_count == 5 + orphans


async def test_a_historic_node_is_read_from_disk_without_becoming_resident(
    store: SessionStore, writer: Writer, session_id: str
) -> None:
    await writer.history(path_length=3, orphans=2)
    graph = await SessionGraph.load(store, session_id, Residency.ACTIVE_PATH_ONLY)
    [orphan_id, *_] = await graph.orphaned_node_ids()

    orphan = await graph.get_historic_node(orphan_id)

    assert orphan.id == orphan_id
    assert orphan == await store.get_node(session_id, orphan_id)
    assert graph.resident_node_count == 3


async def test_a_historic_node_on_the_path_comes_from_memory(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    path_ids = await writer.history(path_length=3, orphans=0)
    graph = await SessionGraph.load(store, session_id, residency)

    assert (await graph.get_historic_node(path_ids[1])) is graph.active_path()[1]


async def test_an_unknown_historic_node_is_reported(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    await writer.history(path_length=2, orphans=0)
    graph = await SessionGraph.load(store, session_id, residency)

    with pytest.raises(NodeNotFoundError, match="no node 'nope'"):
        await graph.get_historic_node("nope")


async def test_applying_a_commit_extends_the_path_as_a_reload_would_see_it(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    await writer.history(path_length=2, orphans=2)
    graph = await SessionGraph.load(store, session_id, residency)

    result, nodes = await writer.turn(graph.leaf_node_id, 3)
    await graph.apply_commit(result, nodes)

    reloaded = await SessionGraph.load(store, session_id, residency)
    assert graph.active_path() == reloaded.active_path()  # turn keys stamped, too
    assert graph.leaf_node_id == nodes[-1].id
    assert graph.resident_node_count == reloaded.resident_node_count


async def test_applying_a_commit_that_branches_off_an_orphan_switches_the_path(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    await writer.history(path_length=4, orphans=2)
    graph = await SessionGraph.load(store, session_id, residency)
    orphans_before = await graph.orphaned_node_ids()

    result, nodes = await writer.turn(orphans_before[-1], 1)
    await graph.apply_commit(result, nodes)

    expected = await store.load_active_path(session_id)
    assert graph.active_path() == expected
    assert ids(expected)[-2:] == [orphans_before[-1], nodes[0].id]
    assert await graph.orphaned_node_ids() == await store.orphaned_node_ids(session_id)
    if residency is Residency.ACTIVE_PATH_ONLY:
        assert graph.resident_node_count == len(expected)


async def test_a_replayed_commit_leaves_memory_matching_what_was_stored(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    first, _ = await writer.turn(None, 2, turn_key="retried")
    graph = await SessionGraph.load(store, session_id, residency)

    # A retry after a lost reply rebuilds the turn with fresh node ids.
    replay, retried_nodes = await writer.turn(None, 2, turn_key="retried")
    await graph.apply_commit(replay, retried_nodes)

    assert replay.replayed
    assert ids(graph.active_path()) == list(first.node_ids)


async def test_a_commit_of_another_session_is_refused(
    store: SessionStore, writer: Writer, session_id: str
) -> None:
    result, nodes = await writer.turn(None, 1)
    graph = await SessionGraph.load(store, session_id)
    foreign = CommitResult("other", result.turn_key, None, (), result.committed_at)

    with pytest.raises(StoreError, match="apply each commit to its own session's graph"):
        await graph.apply_commit(foreign, [])
    assert ids(graph.active_path()) == ids(nodes)


async def test_a_commit_applied_with_the_wrong_nodes_is_refused(
    store: SessionStore, writer: Writer, session_id: str
) -> None:
    graph = await SessionGraph.load(store, session_id)
    result, nodes = await writer.turn(None, 2)

    with pytest.raises(StoreError, match="pass the TurnCommit's own nodes"):
        await graph.apply_commit(result, nodes[:1])
    assert graph.active_path() == []


async def test_moving_the_leaf_rewinds_in_memory_and_in_the_store(
    store: SessionStore, writer: Writer, session_id: str, lease: Lease, residency: Residency
) -> None:
    path_ids = await writer.history(path_length=5, orphans=2)
    graph = await SessionGraph.load(store, session_id, residency)

    await graph.move_leaf(lease, path_ids[1])

    assert ids(graph.active_path()) == path_ids[:2]
    assert (await store.get_session(session_id)).leaf_node_id == path_ids[1]
    assert set(path_ids[2:]) <= set(await graph.orphaned_node_ids())
    assert await graph.orphaned_node_ids() == await store.orphaned_node_ids(session_id)
    if residency is Residency.ACTIVE_PATH_ONLY:
        assert graph.resident_node_count == 2


async def test_moving_the_leaf_onto_a_branch_loads_that_branch(
    store: SessionStore, writer: Writer, session_id: str, lease: Lease, residency: Residency
) -> None:
    await writer.history(path_length=3, orphans=2)
    graph = await SessionGraph.load(store, session_id, residency)
    branch_tip = (await graph.orphaned_node_ids())[-1]

    await graph.move_leaf(lease, branch_tip)

    assert graph.active_path() == await store.load_active_path(session_id)
    assert graph.leaf_node_id == branch_tip


async def test_moving_the_leaf_before_the_first_node_empties_the_path(
    store: SessionStore, writer: Writer, session_id: str, lease: Lease, residency: Residency
) -> None:
    path_ids = await writer.history(path_length=3, orphans=0)
    graph = await SessionGraph.load(store, session_id, residency)

    await graph.move_leaf(lease, None)

    assert graph.leaf_node_id is None
    assert await graph.orphaned_node_ids() == path_ids


async def test_a_refused_rewind_leaves_the_graph_as_it_was(
    store: SessionStore, writer: Writer, session_id: str, lease: Lease, residency: Residency
) -> None:
    path_ids = await writer.history(path_length=3, orphans=2)
    graph = await SessionGraph.load(store, session_id, residency)
    orphans = await graph.orphaned_node_ids()
    await graph.tombstone_nodes(orphans)

    with pytest.raises(NodeNotFoundError, match="tombstoned"):
        await graph.move_leaf(lease, orphans[-1])
    assert ids(graph.active_path()) == path_ids


async def test_a_rewind_with_a_stale_lease_is_refused_and_changes_nothing(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    path_ids = await writer.history(path_length=3, orphans=0)
    graph = await SessionGraph.load(store, session_id, residency)
    stale = writer.lease
    await store.acquire_lease(session_id, "test-writer")  # a new grant fences the old one

    with pytest.raises(LeaseConflictError):
        await graph.move_leaf(stale, path_ids[0])
    assert ids(graph.active_path()) == path_ids
    assert (await store.get_session(session_id)).leaf_node_id == path_ids[-1]


async def test_nearest_snapshot_is_the_closest_one_at_or_above_the_leaf(
    store: SessionStore, writer: Writer, session_id: str, lease: Lease, residency: Residency
) -> None:
    _, nodes = await writer.turn(None, 4, snapshot_ids=["snap-a", None, "snap-c", None])
    graph = await SessionGraph.load(store, session_id, residency)
    assert graph.nearest_snapshot_id() == "snap-c"

    await graph.move_leaf(lease, nodes[1].id)
    assert graph.nearest_snapshot_id() == "snap-a"


async def test_tombstoning_through_the_graph_forgets_the_nodes(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    path_ids = await writer.history(path_length=3, orphans=4)
    graph = await SessionGraph.load(store, session_id, residency)

    assert await graph.tombstone_nodes(await graph.orphaned_node_ids()) == 4
    await store.vacuum()

    assert await graph.orphaned_node_ids() == []
    assert graph.resident_node_count == 3
    with pytest.raises(StoreError, match="on the active path"):
        await graph.tombstone_nodes(path_ids[:1])


async def test_a_released_graph_says_it_was_parked(
    store: SessionStore, writer: Writer, session_id: str
) -> None:
    await writer.history(path_length=2, orphans=0)
    graph = await SessionGraph.load(store, session_id)

    assert graph.release() is store
    with pytest.raises(SessionParkedError, match="resume the session"):
        graph.active_path()


async def test_an_unknown_residency_is_refused(sqlite_store: SessionStore) -> None:
    with pytest.raises(ConfigurationError, match="must be a Residency"):
        await SessionGraph.load(sqlite_store, "s", "everything")  # type: ignore[arg-type]
