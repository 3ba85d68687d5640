"""Parking: an idle session costs a small, fixed handle; resuming reads it back."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from conch.runtime import (
    ParkedSession,
    Residency,
    SessionGraph,
    SessionParkedError,
    park_graph,
    resume_graph,
)
from conch.store import Node, NodeKind, SessionStore, TurnCommit, new_id

if TYPE_CHECKING:
    from conftest import Writer


@dataclass(frozen=True, slots=True)
class Policy:
    """A stand-in for the runtime's per-session settings."""

    residency: Residency = Residency.ACTIVE_PATH_ONLY


def deep_size(obj: object, shared: tuple[object, ...]) -> int:
    """Bytes reachable from ``obj``, not counting ``shared`` objects (the store, shared by
    every session) or anything reachable only through them."""
    seen = {id(each) for each in shared}
    total, todo = 0, [obj]
    while todo:
        each = todo.pop()
        if id(each) in seen or isinstance(each, type):
            continue
        seen.add(id(each))
        total += sys.getsizeof(each)
        todo.extend(gc.get_referents(each))
    return total


async def test_parking_keeps_id_store_and_policy_and_releases_the_graph(
    store: SessionStore, writer: Writer, session_id: str
) -> None:
    await writer.history(path_length=4, orphans=2)
    graph = await SessionGraph.load(store, session_id)
    policy = Policy()

    parked = park_graph(graph, policy)

    assert (parked.session_id, parked.store, parked.policy) == (session_id, store, policy)
    with pytest.raises(SessionParkedError):
        graph.active_path()


@pytest.mark.parametrize("residency", list(Residency), ids=lambda r: r.value)
async def test_a_resumed_session_has_the_path_it_was_parked_with(
    store: SessionStore, writer: Writer, session_id: str, residency: Residency
) -> None:
    path_ids = await writer.history(path_length=4, orphans=2)
    parked = park_graph(await SessionGraph.load(store, session_id, residency), Policy())

    resumed = await resume_graph(parked, residency)

    assert [node.id for node in resumed.active_path()] == path_ids
    assert resumed.residency is residency


async def test_a_parked_handle_holds_nothing_of_the_graph(
    sqlite_store: SessionStore,
) -> None:
    record = await sqlite_store.create_session()
    lease = await sqlite_store.acquire_lease(record.id, "w")
    parent = None
    for turn in range(20):
        nodes = []
        for _ in range(25):
            node = Node.new(record.id, NodeKind.MODEL_REPLY, {"text": "x" * 200}, parent_id=parent)
            nodes.append(node)
            parent = node.id
        await sqlite_store.commit_turn(lease, TurnCommit(f"t{turn}", nodes))
    graph = await SessionGraph.load(sqlite_store, record.id, Residency.KEEP_ALL)
    assert graph.resident_node_count == 500

    parked = park_graph(graph, Policy())

    assert deep_size(parked, shared=(sqlite_store, Residency.ACTIVE_PATH_ONLY)) < 1024


async def test_ten_thousand_parked_sessions_take_under_a_kilobyte_each(
    sqlite_store: SessionStore,
) -> None:
    policy = Policy()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # The session id is a per-session cost, so it is made inside the measurement.
        parked = [ParkedSession(new_id(), sqlite_store, policy) for _ in range(10_000)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert len(parked) == 10_000
    assert used / 10_000 < 1024
