"""Parked sessions: what an idle session costs while nobody is using it.

``park_graph`` turns a loaded ``SessionGraph`` into a ``ParkedSession`` that keeps only the
session id, the (shared) store and the runtime's per-session policy: no nodes, no plugin
instances, no model client. ``resume_graph`` loads the graph again from the store, which
under ``Residency.ACTIVE_PATH_ONLY`` costs one path query however long the history is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from conch.runtime._environment import Residency
from conch.runtime._graph import SessionGraph
from conch.store import SessionStore

PolicyT = TypeVar("PolicyT")


@dataclass(frozen=True, slots=True)
class ParkedSession(Generic[PolicyT]):
    """A session put aside: enough to resume it, nothing more.

    ``policy`` is whatever the runtime needs besides the environment to resume the session
    (its per-session settings); it must itself hold no graph, client or connection.
    """

    session_id: str
    store: SessionStore
    """Shared with every other session on the same store: not a per-session cost."""
    policy: PolicyT


def park_graph(graph: SessionGraph, policy: PolicyT) -> ParkedSession[PolicyT]:
    """Release ``graph`` (its nodes become garbage) and return the handle to resume it."""
    session_id = graph.session_id
    store = graph.release()
    return ParkedSession(session_id, store, policy)


async def resume_graph(
    parked: ParkedSession[PolicyT], residency: Residency = Residency.KEEP_ALL
) -> SessionGraph:
    """Load the parked session's graph from its store again."""
    return await SessionGraph.load(parked.store, parked.session_id, residency)
