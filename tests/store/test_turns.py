"""Sessions and turn commits: what every SessionStore keeps, on every backend."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from conch.errors import NodeNotFoundError, SessionNotFoundError, StoreError
from conch.store import Node, NodeKind, SessionStore, TurnCommit
from tests.store.conftest import OpenStore, chain


@pytest.fixture
async def session(store: SessionStore) -> str:
    await store.create_session("s1", {"title": "first"})
    return "s1"


@pytest.fixture
async def lease(store: SessionStore, session: str):
    return await store.acquire_lease(session, "writer-a")


async def test_a_new_session_is_empty_and_listed(store: SessionStore) -> None:
    record = await store.create_session("s1", {"title": "café", "tags": ["a", "b"]})
    await store.create_session("s2")

    assert record.leaf_node_id is None
    assert record.metadata == {"title": "café", "tags": ["a", "b"]}
    assert await store.load_active_path("s1") == []
    assert [s.id for s in await store.list_sessions()] == ["s1", "s2"]
    assert await store.get_session("s1") == record


async def test_a_session_id_is_generated_when_none_is_given(store: SessionStore) -> None:
    record = await store.create_session()
    assert (await store.get_session(record.id)).id == record.id


async def test_creating_an_existing_session_is_refused(store: SessionStore, session: str) -> None:
    with pytest.raises(StoreError, match="already exists"):
        await store.create_session(session)
    assert (await store.get_session(session)).metadata == {"title": "first"}


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_session("nope"),
        lambda s: s.load_active_path("nope"),
        lambda s: s.load_all_nodes("nope"),
        lambda s: s.orphaned_node_ids("nope"),
        lambda s: s.acquire_lease("nope", "w"),
        lambda s: s.delete_session("nope"),
    ],
    ids=["get", "active_path", "all_nodes", "orphans", "lease", "delete"],
)
async def test_an_unknown_session_is_named_in_the_error(store: SessionStore, call) -> None:
    with pytest.raises(SessionNotFoundError, match="'nope'"):
        await call(store)


async def test_a_turn_is_stored_with_its_leaf_and_path(
    store: SessionStore, session: str, lease
) -> None:
    nodes = chain(session, None, "user_input", "model_reply", "code_cell", "cell_output")
    result = await store.commit_turn(lease, TurnCommit("turn-1", nodes))

    assert result.leaf_node_id == nodes[-1].id
    assert result.node_ids == tuple(n.id for n in nodes)
    assert not result.replayed
    assert (await store.get_session(session)).leaf_node_id == nodes[-1].id
    path = await store.load_active_path(session)
    assert [n.id for n in path] == [n.id for n in nodes]
    assert path[0].parent_id is None
    assert all(n.turn_key == "turn-1" for n in path)


async def test_a_node_reads_back_exactly_as_written(
    store: SessionStore, session: str, lease
) -> None:
    payload = {"text": "naïve ✓ 😀", "nested": {"list": [1, 2.5, None, True]}, "z": 1, "a": 2}
    node = Node.new(session, NodeKind.MODEL_REPLY, payload, snapshot_id="snap-7")
    await store.commit_turn(lease, TurnCommit("t", [node]))

    stored = await store.get_node(session, node.id)
    assert stored.payload == payload
    assert list(stored.payload) == ["text", "nested", "z", "a"]  # key order kept
    assert stored.kind is NodeKind.MODEL_REPLY
    assert stored.snapshot_id == "snap-7"
    assert stored.created_at == node.created_at
    assert stored.turn_key == "t"


async def test_a_turn_continues_the_path_from_the_current_leaf(
    store: SessionStore, session: str, lease
) -> None:
    first = chain(session, None, "user_input", "answer")
    second = chain(session, first[-1].id, "user_input", "answer")
    await store.commit_turn(lease, TurnCommit("t1", first))
    await store.commit_turn(lease, TurnCommit("t2", second))

    assert [n.id for n in await store.load_active_path(session)] == [n.id for n in first + second]


async def test_committing_a_turn_key_again_returns_the_stored_result_and_writes_nothing(
    store: SessionStore, session: str, lease
) -> None:
    nodes = chain(session, None, "user_input", "answer")
    first = await store.commit_turn(lease, TurnCommit("t1", nodes, plugin_state=b"one"))
    # A retry that rebuilt the turn (new node ids) must not store a second copy.
    retry = chain(session, None, "user_input", "answer")
    again = await store.commit_turn(lease, TurnCommit("t1", retry, plugin_state=b"two"))

    assert again.replayed
    assert (again.leaf_node_id, again.node_ids) == (first.leaf_node_id, first.node_ids)
    assert again.committed_at == first.committed_at
    assert [n.id for n in await store.load_all_nodes(session)] == [n.id for n in nodes]
    assert (await store.get_session(session)).plugin_state == b"one"


async def test_get_turn_tells_whether_a_turn_key_was_committed(
    store: SessionStore, session: str, lease
) -> None:
    assert await store.get_turn(session, "t1") is None
    first = await store.commit_turn(lease, TurnCommit("t1", chain(session, None, "user_input")))

    stored = await store.get_turn(session, "t1")

    assert stored is not None and stored.replayed
    assert (stored.leaf_node_id, stored.node_ids) == (first.leaf_node_id, first.node_ids)
    assert await store.get_turn("another-session", "t1") is None


async def test_the_same_turn_committed_concurrently_is_stored_once(
    open_store: OpenStore, store: SessionStore, session: str, lease
) -> None:
    other = await open_store()
    nodes = chain(session, None, "user_input", "answer")
    results = await asyncio.gather(
        store.commit_turn(lease, TurnCommit("t1", nodes)),
        other.commit_turn(lease, TurnCommit("t1", nodes)),
    )

    assert sorted(r.replayed for r in results) == [False, True]
    assert len(await store.load_all_nodes(session)) == 2


async def test_plugin_state_is_saved_with_a_turn_and_kept_when_a_turn_has_none(
    store: SessionStore, session: str, lease
) -> None:
    first = chain(session, None, "user_input")
    await store.commit_turn(lease, TurnCommit("t1", first, plugin_state=b"\x00state\xff"))
    await store.commit_turn(lease, TurnCommit("t2", chain(session, first[-1].id, "answer")))

    assert (await store.get_session(session)).plugin_state == b"\x00state\xff"


async def test_the_new_leaf_can_be_named_explicitly(
    store: SessionStore, session: str, lease
) -> None:
    nodes = chain(session, None, "user_input", "model_reply")
    result = await store.commit_turn(lease, TurnCommit("t1", nodes, leaf_id=nodes[0].id))

    assert result.leaf_node_id == nodes[0].id
    assert await store.orphaned_node_ids(session) == [nodes[1].id]


def _node(session_id: str, node_id: str, parent_id: str | None = None) -> Node:
    """A node with a chosen id."""
    template = Node.new(session_id, NodeKind.USER_INPUT, parent_id=parent_id)
    return Node(node_id, session_id, parent_id, template.kind, {}, template.created_at)


@pytest.mark.parametrize(
    ("make_nodes", "error", "message"),
    [
        (
            lambda s: [_node(s, "mine", parent_id="no-such-node")],
            NodeNotFoundError,
            "has no node 'no-such-node'",
        ),
        (
            lambda s: [_node(s, "mine", parent_id="node-of-s2")],
            NodeNotFoundError,
            "belongs to session 's2', not to session 's1'",
        ),
        (lambda s: [Node.new("s2", "user_input")], StoreError, "belongs to session 's2'"),
        (
            lambda s: list(reversed(chain(s, None, "user_input", "answer"))),
            StoreError,
            "before its parent",
        ),
        (lambda s: [Node.new(s, "user_input", {"x": object()})], StoreError, "JSON"),
        (lambda s: [Node.new(s, "user_input", {"x": float("nan")})], StoreError, "JSON"),
        (lambda s: [_node(s, "a"), _node(s, "b"), _node(s, "b")], StoreError, "repeats"),
        (lambda s: [_node(s, "node-of-s2")], StoreError, "already exist"),
        (lambda s: [replace(_node(s, "k"), kind="bogus")], StoreError, "unknown kind 'bogus'"),
    ],
    ids=[
        "unknown-parent",
        "parent-in-other-session",
        "node-of-other-session",
        "child-before-parent",
        "payload-not-json",
        "payload-nan",
        "repeated-id",
        "id-taken",
        "unknown-kind",
    ],
)
async def test_a_bad_turn_is_refused_whole_and_the_session_is_unchanged(
    store: SessionStore, session: str, lease, make_nodes, error, message
) -> None:
    await store.create_session("s2")
    other = await store.acquire_lease("s2", "writer-b")
    await store.commit_turn(other, TurnCommit("s2-t1", [_node("s2", "node-of-s2")]))
    good = chain(session, None, "user_input")
    await store.commit_turn(lease, TurnCommit("good", good, plugin_state=b"good"))

    with pytest.raises(error, match=message):
        await store.commit_turn(lease, TurnCommit("bad", make_nodes(session), plugin_state=b"bad"))

    record = await store.get_session(session)
    assert (record.leaf_node_id, record.plugin_state) == (good[0].id, b"good")
    assert [n.id for n in await store.load_all_nodes(session)] == [good[0].id]
    # The refused key was not burnt: the turn can still be committed properly.
    retry = await store.commit_turn(lease, TurnCommit("bad", chain(session, good[0].id, "answer")))
    assert not retry.replayed


async def test_deleting_a_session_removes_it_and_its_nodes(
    store: SessionStore, session: str, lease
) -> None:
    nodes = chain(session, None, "user_input")
    await store.commit_turn(lease, TurnCommit("t1", nodes))
    await store.delete_session(session)

    with pytest.raises(SessionNotFoundError):
        await store.get_session(session)
    with pytest.raises(SessionNotFoundError):
        await store.get_node(session, nodes[0].id)
    # The id is free again, and so are the node ids.
    await store.create_session(session)
    fresh = await store.acquire_lease(session, "writer-b")
    await store.commit_turn(fresh, TurnCommit("t1", nodes))
