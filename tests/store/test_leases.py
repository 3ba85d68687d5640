"""One writer per session: fenced leases with a time to live."""

from __future__ import annotations

import asyncio

import pytest

from conch.errors import LeaseConflictError, StoreError
from conch.store import Lease, SessionStore, TurnCommit
from tests.store.conftest import FakeClock, OpenStore, chain


@pytest.fixture
async def session(store: SessionStore) -> str:
    await store.create_session("s1")
    return "s1"


async def commit_one(store: SessionStore, lease: Lease, key: str) -> None:
    leaf = (await store.get_session(lease.session_id)).leaf_node_id
    await store.commit_turn(lease, TurnCommit(key, chain(lease.session_id, leaf, "user_input")))


async def test_a_second_live_writer_is_refused_with_the_holder_named(
    store: SessionStore, session: str
) -> None:
    await store.acquire_lease(session, "writer-a", ttl_s=30)

    with pytest.raises(LeaseConflictError, match=r"'writer-a'.*only one writer"):
        await store.acquire_lease(session, "writer-b")


async def test_an_expired_lease_can_be_taken_over_and_its_holder_cannot_commit(
    store: SessionStore, session: str, clock: FakeClock
) -> None:
    a = await store.acquire_lease(session, "writer-a", ttl_s=10)
    await commit_one(store, a, "a-1")
    clock.advance(11)
    b = await store.acquire_lease(session, "writer-b", ttl_s=10)

    assert b.token > a.token
    with pytest.raises(LeaseConflictError, match=r"taken over by 'writer-b'.*nothing was written"):
        await commit_one(store, a, "a-2")
    with pytest.raises(LeaseConflictError, match="taken over"):
        await store.renew_lease(a)
    assert [n.turn_key for n in await store.load_all_nodes(session)] == ["a-1"]
    await commit_one(store, b, "b-1")


async def test_an_expired_lease_nobody_took_over_still_commits(
    store: SessionStore, session: str, clock: FakeClock
) -> None:
    # Fencing, not the clock, decides who may write: nobody else can have written.
    a = await store.acquire_lease(session, "writer-a", ttl_s=10)
    clock.advance(60)
    await commit_one(store, a, "late")
    assert [n.turn_key for n in await store.load_all_nodes(session)] == ["late"]


async def test_renewing_keeps_the_lease_from_being_taken_over(
    store: SessionStore, session: str, clock: FakeClock
) -> None:
    a = await store.acquire_lease(session, "writer-a", ttl_s=10)
    clock.advance(8)
    renewed = await store.renew_lease(a)
    clock.advance(8)

    assert renewed.token == a.token
    assert renewed.expires_at == pytest.approx(clock.now + 2)
    with pytest.raises(LeaseConflictError):
        await store.acquire_lease(session, "writer-b")
    await commit_one(store, renewed, "t1")


async def test_a_released_lease_frees_the_session_at_once_and_cannot_write(
    store: SessionStore, session: str
) -> None:
    a = await store.acquire_lease(session, "writer-a")
    await store.release_lease(a)

    with pytest.raises(LeaseConflictError, match="released"):
        await commit_one(store, a, "t1")
    b = await store.acquire_lease(session, "writer-b")
    assert b.token > a.token
    await store.release_lease(a)  # a stale release does nothing
    await commit_one(store, b, "t1")


async def test_the_same_owner_acquiring_again_fences_its_earlier_lease(
    store: SessionStore, session: str
) -> None:
    # A writer that restarted reclaims its session without waiting for the TTL.
    before = await store.acquire_lease(session, "writer-a")
    after = await store.acquire_lease(session, "writer-a")

    assert after.token == before.token + 1
    with pytest.raises(LeaseConflictError, match="taken over"):
        await commit_one(store, before, "t1")
    await commit_one(store, after, "t1")


async def test_fencing_tokens_only_grow(store: SessionStore, session: str) -> None:
    tokens = []
    for owner in ["a", "b", "a", "c"]:
        lease = await store.acquire_lease(session, owner)
        tokens.append(lease.token)
        await store.release_lease(lease)
    assert tokens == sorted(set(tokens))


async def test_concurrent_writers_get_exactly_one_lease(
    open_store: OpenStore, store: SessionStore, session: str
) -> None:
    others = [await open_store() for _ in range(3)]
    results = await asyncio.gather(
        *(s.acquire_lease(session, f"writer-{i}") for i, s in enumerate([store, *others])),
        return_exceptions=True,
    )

    leases = [r for r in results if isinstance(r, Lease)]
    refused = [r for r in results if isinstance(r, LeaseConflictError)]
    assert (len(leases), len(refused)) == (1, 3)


async def test_a_taken_over_writer_racing_the_new_one_cannot_commit(
    open_store: OpenStore, store: SessionStore, session: str, clock: FakeClock
) -> None:
    other = await open_store()
    a = await store.acquire_lease(session, "writer-a", ttl_s=1)
    clock.advance(2)
    b = await other.acquire_lease(session, "writer-b")
    results = await asyncio.gather(
        commit_one(store, a, "from-a"), commit_one(other, b, "from-b"), return_exceptions=True
    )

    assert isinstance(results[0], LeaseConflictError)
    assert results[1] is None
    assert [n.turn_key for n in await store.load_all_nodes(session)] == ["from-b"]


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan")])
async def test_a_nonsense_ttl_is_refused(store: SessionStore, session: str, ttl: float) -> None:
    with pytest.raises(StoreError, match="TTL"):
        await store.acquire_lease(session, "writer-a", ttl_s=ttl)


async def test_a_lease_of_another_session_cannot_write_this_one(
    store: SessionStore, session: str
) -> None:
    await store.create_session("s2")
    s2_lease = await store.acquire_lease("s2", "writer-a")
    with pytest.raises(StoreError, match="belongs to session 's1'"):
        await store.commit_turn(s2_lease, TurnCommit("t", chain(session, None, "user_input")))
