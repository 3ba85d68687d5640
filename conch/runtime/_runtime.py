"""``Runtime``: one durable session. Turns commit atomically; REPL state follows the graph.

::

    env = RuntimeEnvironment.builder().with_session_store_factory(
        SqliteSessionStoreFactory("sessions.db")).build()
    async with await Runtime.open(env, "support-42", model="openai:gpt-4o-mini") as runtime:
        first = await runtime.turn("Which service failed first?", context=Path("app.log"))
        second = await runtime.turn("And when did it recover?")   # same REPL, same context
        await runtime.rewind(first.node_id)                        # REPL as after turn one

A turn runs one RLM conversation step in the session's own sandbox session, commits its
nodes (see ``_transcript``) with the plugins' state in one transaction, and by default
snapshots the REPL onto its last node. Rewinding moves the leaf and restores the nearest
snapshot at or above it; so does opening the session in a new process. ``park()`` frees
everything but a small handle; ``Runtime.resume`` picks it up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from conch._home import conch_home
from conch.errors import (
    ConchError,
    ConfigurationError,
    LeaseConflictError,
    RuntimeStateError,
    SessionNotFoundError,
    SnapshotError,
    SnapshotLimitError,
)
from conch.lm import LanguageModel, Message, Usage
from conch.rlm import (
    RLM,
    Budget,
    CellReview,
    RLMResult,
    RunHooks,
    TerminationReason,
    TurnSetup,
    check_context,
)
from conch.runtime._background import EventLoopTaskHost
from conch.runtime._environment import RuntimeEnvironment
from conch.runtime._graph import SessionGraph
from conch.runtime._parked import ParkedSession
from conch.runtime._plugins import CellAction, PluginSession, TurnInfo, TurnOutcome
from conch.runtime._prompt import PromptContribution, PromptLayer, PromptSlot
from conch.runtime._transcript import (
    DEFAULT_HISTORY_TURNS,
    TurnEnd,
    history_messages,
    loaded_context,
    turn_count,
    turn_end_of,
    turn_nodes,
)
from conch.sandbox import Capability, ExecutionEnvironment
from conch.sandbox import create as create_sandbox
from conch.store import (
    DEFAULT_LEASE_TTL_S,
    CommitResult,
    Lease,
    Node,
    SessionStore,
    TurnCommit,
    new_id,
)
from conch.trace import MemoryTraceSink, MultiSink, TraceSink

logger = logging.getLogger("conch.runtime")

#: Snapshots a runtime keeps per session in a sandbox it creates (oldest pruned first).
DEFAULT_KEEP_SNAPSHOTS = 100
_UNLIMITED_ITERATIONS = 1_000_000
_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class SnapshotPolicy(enum.StrEnum):
    """When a turn saves the REPL onto its last node."""

    EVERY_TURN = "every_turn"
    """Every turn (the default, when the sandbox can snapshot): any node can be rewound to
    with its variables."""
    ON_REQUEST = "on_request"
    """Only turns run with ``turn(..., snapshot=True)``."""


@dataclass(frozen=True, slots=True)
class RuntimePolicy:
    """A session's runtime settings: what a parked session keeps to resume the same way.
    Holds no client, connection or node."""

    owner: str
    """Who writes the session (the lease owner)."""
    snapshots: SnapshotPolicy = SnapshotPolicy.EVERY_TURN
    max_history_turns: int = DEFAULT_HISTORY_TURNS
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    owns_store: bool = False
    """The store was opened from the environment's factory for this session: closing the
    runtime closes it."""


@dataclass(frozen=True, slots=True)
class ReplRestore:
    """How the REPL was brought to the leaf's state (after opening, resuming or rewinding)."""

    node_id: str | None
    """The node whose snapshot was restored (None: the REPL starts empty)."""
    snapshot_id: str | None
    restored: tuple[str, ...] = ()
    """Variables restored."""
    failed: tuple[str, ...] = ()
    """Variables the snapshot could not bring back, with why."""
    skipped: tuple[str, ...] = ()
    """Newer snapshots on the path that could not be used (deleted or damaged), with why."""

    @property
    def fresh(self) -> bool:
        return self.snapshot_id is None


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What one turn produced (or, ``replayed``, what the same turn key committed before)."""

    answer: str | None
    termination_reason: str
    """A ``conch.rlm.TerminationReason`` value (``"final"`` for an answered turn), or
    ``"error"`` when the turn raised."""
    node_id: str
    """The turn's last node: the session's leaf after the turn."""
    turn_key: str
    failed: bool
    """No answer where the ``TerminationPolicy`` requires one, or the turn raised."""
    snapshot_id: str | None = None
    iterations: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    duration_s: float = 0.0
    error: str | None = None
    replayed: bool = False
    """The turn key had been committed before: nothing ran now."""
    repl: ReplRestore | None = None
    """How the REPL was restored before the turn ran (None: it was already in step)."""
    snapshot_error: str | None = None
    """Why the turn's snapshot could not be saved (the turn is committed without one)."""


class _PluginHooks(RunHooks):
    """A session's plugins as the loop's hooks."""

    def __init__(self, plugins: PluginSession) -> None:
        self._plugins = plugins

    async def on_model_request(self, messages: list[Message]) -> list[Message]:
        return list(await self._plugins.on_model_request(messages))

    async def on_model_reply(self, text: str) -> str:
        return await self._plugins.on_model_reply(text)

    async def on_code_cell(self, code: str) -> CellReview:
        decision = await self._plugins.on_code_cell(code)
        if decision.action is CellAction.VETO:
            return CellReview(None, f"{decision.reason} (plugin {decision.plugin})")
        return CellReview(decision.code if decision.code is not None else code, decision.reason)

    async def on_cell_output(self, output: str) -> str:
        return await self._plugins.on_cell_output(output)


class Runtime:
    """One session, open for writing. Build it with ``await Runtime.open(...)`` (or
    ``Runtime.resume``); close it with ``close()`` or ``async with``."""

    def __init__(
        self,
        env: RuntimeEnvironment,
        store: SessionStore,
        graph: SessionGraph,
        lease: Lease,
        rlm: RLM,
        sandbox: ExecutionEnvironment,
        *,
        policy: RuntimePolicy,
        owns_sandbox: bool,
        plugins: PluginSession | None,
        prompt: PromptLayer,
    ) -> None:
        self.env = env
        self.store = store
        self.session_id = graph.session_id
        self.policy = policy
        self._graph: SessionGraph | None = graph
        self._lease = lease
        self._rlm = rlm
        self.sandbox = sandbox
        self._owns_sandbox = owns_sandbox
        self._plugins = plugins
        self._prompt = prompt
        self.sandbox_session_id = sandbox_session_id(self.session_id)
        self._lock = asyncio.Lock()
        self._repl_in_step = False  # the REPL holds the state of the leaf
        self._background = env.background_task_host or EventLoopTaskHost()
        self._closed = False

    # --- opening ----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        env: RuntimeEnvironment,
        session_id: str | None = None,
        *,
        model: LanguageModel | str,
        sub_model: LanguageModel | str | None = None,
        sandbox: str | ExecutionEnvironment = "best",
        store: SessionStore | None = None,
        create: bool = True,
        metadata: Mapping[str, Any] | None = None,
        owner: str | None = None,
        snapshots: SnapshotPolicy | str = SnapshotPolicy.EVERY_TURN,
        snapshot_dir: str | os.PathLike[str] | None = None,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        max_history_turns: int = DEFAULT_HISTORY_TURNS,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        prompt: PromptLayer | None = None,
        **rlm_options: Any,
    ) -> Runtime:
        """Open ``session_id`` for writing (created when missing, unless ``create=False``;
        None: a new session with a fresh id).

        ``store``: the session store (default: one opened from the environment's
        ``session_store_factory``, owned by this runtime). ``sandbox``: a backend name, for
        a sandbox this runtime creates with its snapshots under ``snapshot_dir`` (default
        ``$CONCH_HOME/snapshots``, so a later process can restore them), or an
        ``ExecutionEnvironment`` you share between runtimes. ``prompt``: this session's
        prompt layer, stacked on the environment's. Other keyword arguments configure the
        ``RLM`` (``max_depth``, ``tools``, ``validator``, ``cell_timeout_s``, ...).
        Another live writer holds the session: ``LeaseConflictError``.
        """
        if not isinstance(env, RuntimeEnvironment):
            raise ConfigurationError(
                f"Runtime.open needs a RuntimeEnvironment, got {type(env).__name__}; build "
                "one with RuntimeEnvironment.builder()...build()"
            )
        policy = RuntimePolicy(
            owner=owner or default_owner(),
            snapshots=_snapshot_policy(snapshots),
            max_history_turns=_at_least(max_history_turns, 0, "max_history_turns"),
            lease_ttl_s=lease_ttl_s,
            owns_store=store is None,
        )
        if store is None:
            store = await _open_store(env)
        try:
            return await cls._open(
                env,
                store,
                session_id,
                policy,
                model=model,
                sub_model=sub_model,
                sandbox=sandbox,
                create=create,
                metadata=metadata,
                snapshot_dir=snapshot_dir,
                keep_snapshots=_at_least(keep_snapshots, 1, "keep_snapshots"),
                prompt=prompt,
                rlm_options=rlm_options,
            )
        except BaseException:
            if policy.owns_store:
                await store.close()
            raise

    @classmethod
    async def resume(
        cls,
        parked: ParkedSession[RuntimePolicy],
        env: RuntimeEnvironment,
        *,
        model: LanguageModel | str,
        sub_model: LanguageModel | str | None = None,
        sandbox: str | ExecutionEnvironment = "best",
        snapshot_dir: str | os.PathLike[str] | None = None,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        prompt: PromptLayer | None = None,
        **rlm_options: Any,
    ) -> Runtime:
        """Continue a parked session: its graph is read again (one path query under
        ``ACTIVE_PATH_ONLY``) and its REPL is restored from the leaf's snapshot before the
        next turn. The model and sandbox are given again: a parked session holds none."""
        if not isinstance(parked, ParkedSession) or not isinstance(parked.policy, RuntimePolicy):
            raise ConfigurationError(
                "Runtime.resume takes the ParkedSession that Runtime.park() returned"
            )
        return await cls._open(
            env,
            parked.store,
            parked.session_id,
            parked.policy,
            model=model,
            sub_model=sub_model,
            sandbox=sandbox,
            create=False,
            metadata=None,
            snapshot_dir=snapshot_dir,
            keep_snapshots=keep_snapshots,
            prompt=prompt,
            rlm_options=rlm_options,
        )

    @classmethod
    async def _open(
        cls,
        env: RuntimeEnvironment,
        store: SessionStore,
        session_id: str | None,
        policy: RuntimePolicy,
        *,
        model: LanguageModel | str,
        sub_model: LanguageModel | str | None,
        sandbox: str | ExecutionEnvironment,
        create: bool,
        metadata: Mapping[str, Any] | None,
        snapshot_dir: str | os.PathLike[str] | None,
        keep_snapshots: int,
        prompt: PromptLayer | None,
        rlm_options: dict[str, Any],
    ) -> Runtime:
        if prompt is not None and not isinstance(prompt, PromptLayer):
            raise ConfigurationError(f"prompt must be a PromptLayer, got {type(prompt).__name__}")
        for name in ("sandbox", "budget", "trace", "keep_session"):
            if name in rlm_options:
                raise ConfigurationError(
                    f"Runtime.open does not take RLM option {name!r}: the runtime sets it "
                    "(limits come from the environment's TerminationPolicy, tracing from its "
                    "trace sink)"
                )
        record = await _get_or_create(store, session_id, create, metadata)
        lease = await store.acquire_lease(record.id, policy.owner, policy.lease_ttl_s)
        owned_sandbox: ExecutionEnvironment | None = None
        try:
            graph = await SessionGraph.load(store, record.id, env.residency)
            plugins = None
            if env.plugin_host is not None:
                plugins = env.plugin_host.build_session(
                    record.id, record.plugin_state, background_tasks=env.background_task_host
                )
            if isinstance(sandbox, ExecutionEnvironment):
                sandbox_env = sandbox
            else:
                owned_sandbox = sandbox_env = create_sandbox(
                    sandbox,
                    snapshot_dir=snapshot_dir or conch_home() / "snapshots",
                    max_snapshots_per_session=keep_snapshots,
                )
            rlm = RLM(model, sub_model, sandbox=sandbox_env, keep_session=True, **rlm_options)
        except BaseException:
            if owned_sandbox is not None:
                await owned_sandbox.cleanup()
            await store.release_lease(lease)
            raise
        return cls(
            env,
            store,
            graph,
            lease,
            rlm,
            sandbox_env,
            policy=policy,
            owns_sandbox=owned_sandbox is not None,
            plugins=plugins,
            prompt=prompt or PromptLayer(),
        )

    # --- the graph --------------------------------------------------------------------

    @property
    def graph(self) -> SessionGraph:
        self._check_open()
        assert self._graph is not None
        return self._graph

    @property
    def leaf_node_id(self) -> str | None:
        return self.graph.leaf_node_id

    def active_path(self) -> list[Node]:
        return self.graph.active_path()

    async def orphaned_node_ids(self) -> list[str]:
        """Nodes left off the active path by rewinds: the host may tombstone them."""
        return await self.graph.orphaned_node_ids()

    async def get_historic_node(self, node_id: str) -> Node:
        """Any live node of the session (read from the store when it is not in memory)."""
        return await self.graph.get_historic_node(node_id)

    async def tombstone_nodes(self, node_ids: list[str]) -> int:
        """Mark orphaned nodes deleted (``store.vacuum()`` then reclaims their space)."""
        async with self._lock:
            return await self.graph.tombstone_nodes(node_ids)

    # --- turns ------------------------------------------------------------------------

    async def turn(
        self,
        text: str,
        context: Any = None,
        *,
        turn_key: str | None = None,
        snapshot: bool | None = None,
        prompt: PromptLayer | None = None,
    ) -> TurnResult:
        """Answer ``text`` as the session's next turn and commit it atomically.

        ``context`` (any ``RLM`` context) is loaded into the REPL as ``context``; None
        keeps the one an earlier turn loaded. ``turn_key`` makes the turn idempotent: a
        key already committed returns the stored result without running anything.
        ``snapshot`` overrides the session's ``SnapshotPolicy`` for this turn; ``prompt``
        is a turn-level prompt layer on top of the environment's and the session's.
        """
        self._check_open()
        if not isinstance(text, str) or not text.strip():
            raise ConfigurationError("the turn's text is empty; ask something")
        if prompt is not None and not isinstance(prompt, PromptLayer):
            raise ConfigurationError(f"prompt must be a PromptLayer, got {type(prompt).__name__}")
        check_context(context)
        async with self._lock:
            self._check_open()
            key = turn_key if turn_key is not None else new_id()
            if turn_key is not None:
                stored = await self.store.get_turn(self.session_id, key)
                if stored is not None:
                    return await self._stored_result(stored)
            self._lease = await self.store.renew_lease(self._lease)
            keepalive = asyncio.create_task(self._keep_lease(), name="conch-lease-keepalive")
            try:
                return await self._run_turn(text, context, key, snapshot, prompt)
            finally:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive

    async def turn_in_background(self, text: str, context: Any = None, **options: Any) -> str:
        """Start ``turn(text, context, **options)`` on the environment's background task
        host; returns the task id for its ``status``, ``wait`` and ``cancel``."""
        self._check_open()
        check_context(context)
        return await self._background.start(
            lambda: self.turn(text, context, **options), name=f"turn of {self.session_id}"
        )

    @property
    def background_tasks(self):
        """Where ``turn_in_background`` runs turns (the environment's host, or the
        runtime's own event-loop host)."""
        return self._background

    async def _run_turn(
        self,
        text: str,
        context: Any,
        key: str,
        snapshot: bool | None,
        turn_prompt: PromptLayer | None,
    ) -> TurnResult:
        graph = self.graph
        restore = await self._bring_repl_in_step()
        path = graph.active_path()
        earlier_context = loaded_context(path)
        if earlier_context is not None and restore is not None and restore.fresh:
            earlier_context = None  # the REPL that held it is gone
        info = TurnInfo(self.session_id, key, text)
        plugins = self._plugins
        if plugins is not None:
            await plugins.before_turn(info)
        tools = plugins.repl_tools() if plugins is not None else {}
        memory = MemoryTraceSink()
        trace_context = self.env.trace_context.child(
            run_id=new_id(), session_id=self.session_id, turn_id=key
        )
        setup = TurnSetup(
            session_id=self.sandbox_session_id,
            history=history_messages(path, max_turns=self.policy.max_history_turns),
            system_prompt=self._system_prompt(tools, path, restore, turn_prompt),
            context_description=(
                f"{earlier_context}\n(Loaded in an earlier turn; still in `context`.)"
                if earlier_context is not None
                else None
            ),
            hooks=_PluginHooks(plugins) if plugins is not None else None,
            extra_tools=tools,
            budget=self._budget(),
            max_iterations=self.env.termination.max_iterations or _UNLIMITED_ITERATIONS,
            trace_context=trace_context,
            trace_level=self.env.trace_level,
            trace_sink=_sinks(self.env.trace_sink, memory),
        )
        self._repl_in_step = False  # until the turn is committed
        started = time.monotonic()
        failure: BaseException | None = None
        try:
            result: RLMResult | None = await self._rlm.arun_turn(context, text, setup)
        except ConchError as error:  # recorded as a failed turn, then raised
            result, failure = None, error
        end = self._turn_end(result, failure, time.monotonic() - started)
        if plugins is not None:
            await plugins.after_turn(
                info, TurnOutcome(end.answer, end.termination_reason, end.failed)
            )
        snapshot_id, snapshot_error = None, None
        if failure is None and self._should_snapshot(snapshot):
            snapshot_id, snapshot_error = await self._snapshot()
        if snapshot_error is not None:
            end = replace(end, snapshot_error=snapshot_error)
        nodes = turn_nodes(
            self.session_id,
            graph.leaf_node_id,
            text=text,
            context_description=(
                result.context_description if result is not None else setup.context_description
            ),
            context_loaded=context is not None,
            records=memory.records,
            run_id=trace_context.run_id,
            end=end,
            snapshot_id=snapshot_id,
        )
        try:
            committed = await self.store.commit_turn(
                self._lease,
                TurnCommit(
                    key, nodes, plugin_state=plugins.save_state() if plugins is not None else None
                ),
            )
        except BaseException:
            if snapshot_id is not None:
                with contextlib.suppress(Exception):
                    await self.sandbox.delete_snapshot(snapshot_id)
            raise
        await graph.apply_commit(committed, nodes)
        if committed.replayed:  # a concurrent writer with the same key got there first
            return await self._stored_result(committed)
        self._repl_in_step = failure is None
        if failure is not None:
            raise failure
        return TurnResult(
            answer=end.answer,
            termination_reason=end.termination_reason,
            node_id=committed.leaf_node_id or nodes[-1].id,
            turn_key=key,
            failed=end.failed,
            snapshot_id=snapshot_id,
            iterations=end.iterations,
            usage=result.usage if result is not None else Usage(),
            cost_usd=end.cost_usd,
            duration_s=end.duration_s,
            error=end.error,
            repl=restore,
            snapshot_error=snapshot_error,
        )

    def _turn_end(
        self, result: RLMResult | None, failure: BaseException | None, duration_s: float
    ) -> TurnEnd:
        if result is None:
            return TurnEnd(
                answer=None,
                termination_reason="error",
                failed=True,
                duration_s=duration_s,
                error=f"{type(failure).__name__}: {failure}",
            )
        # A best answer asked for after a limit ran out is partial: the turn stays unanswered.
        answered = result.termination_reason is TerminationReason.FINAL
        return TurnEnd(
            answer=result.answer,
            termination_reason=str(result.termination_reason),
            failed=self.env.termination.turn_failed(answered=answered),
            iterations=result.iterations,
            usage=result.usage.as_dict(),
            cost_usd=result.cost_usd,
            duration_s=duration_s,
            error=result.error,
            answer_source=result.answer_source,
        )

    async def _stored_result(self, stored: CommitResult) -> TurnResult:
        last = await self.graph.get_historic_node(stored.node_ids[-1])
        end = turn_end_of(last)
        return TurnResult(
            answer=end.answer,
            termination_reason=end.termination_reason,
            node_id=last.id,
            turn_key=stored.turn_key,
            failed=end.failed,
            snapshot_id=last.snapshot_id,
            iterations=end.iterations,
            usage=Usage.from_dict(end.usage or {}),
            cost_usd=end.cost_usd,
            duration_s=end.duration_s,
            error=end.error,
            replayed=True,
            snapshot_error=end.snapshot_error,
        )

    def _system_prompt(
        self,
        tools: Mapping[str, Any],
        path: list[Node],
        restore: ReplRestore | None,
        turn_prompt: PromptLayer | None,
    ) -> str:
        base = PromptLayer().with_contribution(
            PromptContribution(
                PromptSlot.EXECUTION, self._rlm.system_prompt(extra_tools=tools), source="conch"
            )
        )
        earlier = turn_count(path)
        if earlier:
            state = (
                "The REPL was restarted: variables from earlier turns are gone."
                if restore is not None and restore.fresh
                else "Variables you created in earlier turns are still defined in the REPL."
            )
            base = base.with_contribution(
                PromptContribution(
                    PromptSlot.RUNTIME_CONTEXT,
                    f"This conversation continues: {earlier} earlier turn(s) are shown before "
                    f"this one. {state}",
                    source="conch",
                )
            )
        layers = [base, self.env.prompt, self._prompt]
        if self._plugins is not None:
            layers.append(self._plugins.prompt_layer())
        if turn_prompt is not None:
            layers.append(turn_prompt)
        return PromptLayer.stacked(*layers).render()

    def _budget(self) -> Budget:
        policy, own = self.env.termination, self._rlm.budget
        return Budget(
            max_tokens=policy.max_tokens or own.max_tokens,
            max_cost_usd=policy.max_cost_usd or own.max_cost_usd,
            max_time_s=policy.max_time_s or own.max_time_s,
            max_sub_calls=own.max_sub_calls,
        )

    # --- REPL state -------------------------------------------------------------------

    def _should_snapshot(self, requested: bool | None) -> bool:
        wanted = (
            requested
            if requested is not None
            else (self.policy.snapshots is SnapshotPolicy.EVERY_TURN)
        )
        return wanted and self.sandbox.has_capability(Capability.SNAPSHOT)

    async def _snapshot(self) -> tuple[str | None, str | None]:
        """Save the REPL; when the session's snapshots are full, drop the oldest and retry."""
        name = f"turn-{new_id()}"
        for attempt in range(2):
            try:
                snapshot = await self.sandbox.create_snapshot(self.sandbox_session_id, name)
                return snapshot.id, None
            except SnapshotLimitError as error:
                existing = await self.sandbox.list_snapshots(self.sandbox_session_id)
                if attempt or not existing:
                    return None, str(error)
                await self.sandbox.delete_snapshot(existing[0])
            except SnapshotError as error:
                logger.warning("session %s: the turn's snapshot failed: %s", self.session_id, error)
                return None, str(error)
        return None, "no snapshot"  # not reached

    async def _bring_repl_in_step(self) -> ReplRestore | None:
        """Make the REPL hold the leaf's state: restore the nearest usable snapshot at or
        above the leaf, else start it empty. None when it already was in step."""
        if self._repl_in_step:
            return None
        path = self.graph.active_path()
        skipped: list[str] = []
        candidates = [node for node in reversed(path) if node.snapshot_id is not None]
        if candidates and self.sandbox.has_capability(Capability.SNAPSHOT):
            available = {s.id for s in await self.sandbox.list_snapshots(self.sandbox_session_id)}
            for node in candidates:
                if node.snapshot_id not in available:
                    skipped.append(f"{node.snapshot_id} (node {node.id}): no longer stored")
                    continue
                try:
                    report = await self.sandbox.restore_snapshot(
                        node.snapshot_id, session_id=self.sandbox_session_id
                    )
                except SnapshotError as error:
                    skipped.append(f"{node.snapshot_id} (node {node.id}): {error}")
                    continue
                self._repl_in_step = True
                return ReplRestore(
                    node.id,
                    node.snapshot_id,
                    tuple(report.restored),
                    tuple(report.failed),
                    tuple(skipped),
                )
        await self.sandbox.suspend_session(self.sandbox_session_id)
        self._repl_in_step = True
        if skipped:
            logger.warning(
                "session %s: no usable snapshot on the active path; the REPL starts empty (%s)",
                self.session_id,
                "; ".join(skipped),
            )
        return ReplRestore(None, None, skipped=tuple(skipped))

    async def rewind(self, node_id: str | None) -> ReplRestore:
        """Move the leaf to ``node_id`` (None: before the first turn) and restore the REPL
        to that point. The turns after it stay in the store as orphans. A node of another
        session, or a tombstoned one: ``NodeNotFoundError``, and nothing changes."""
        self._check_open()
        async with self._lock:
            self._lease = await self.store.renew_lease(self._lease)
            await self.graph.move_leaf(self._lease, node_id)
            self._repl_in_step = False
            restore = await self._bring_repl_in_step()
            assert restore is not None
            return restore

    # --- parking and closing ------------------------------------------------------------

    async def park(self) -> ParkedSession[RuntimePolicy]:
        """Put the session aside: the graph, plugins, model client and sandbox worker are
        released (snapshots stay), and so is the lease. Returns the handle for
        ``Runtime.resume``; the store stays open for it."""
        self._check_open()
        async with self._lock:
            await self._release(close_store=False)
            assert self._graph is not None
            self._graph.release()
            return ParkedSession(self.session_id, self.store, self.policy)

    async def close(self) -> None:
        """Release the lease, the sandbox session (its snapshots stay) and what this
        runtime opened. Idempotent."""
        if self._closed:
            return
        async with self._lock:
            if self._closed:
                return
            await self._release(close_store=self.policy.owns_store)
            if self._graph is not None:
                self._graph.release()

    async def _release(self, *, close_store: bool) -> None:
        self._closed = True
        try:
            with contextlib.suppress(LeaseConflictError):
                await self.store.release_lease(self._lease)
        finally:
            try:
                if self._owns_sandbox:
                    await self.sandbox.cleanup()
                else:
                    await self.sandbox.suspend_session(self.sandbox_session_id)
            finally:
                self._plugins = None
                self._rlm = None  # type: ignore[assignment]  # drop the model client
                if close_store:
                    await self.store.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeStateError(
                f"the runtime of session {self.session_id!r} was closed or parked; open or "
                "resume the session again"
            )

    async def _keep_lease(self) -> None:
        """Renew the lease during a long turn, so no other writer may take it over."""
        interval = max(self.policy.lease_ttl_s / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                self._lease = await self.store.renew_lease(self._lease)
            except LeaseConflictError:
                logger.warning(
                    "session %s: the lease was taken over during a turn; its commit will "
                    "be refused",
                    self.session_id,
                )
                return
            except Exception as error:  # a flaky store: the commit will tell
                logger.warning("session %s: renewing the lease failed: %s", self.session_id, error)


def sandbox_session_id(session_id: str) -> str:
    """The sandbox session a runtime session runs in: the id itself when the sandbox
    accepts it, else a stable digest of it."""
    if _SANDBOX_ID.match(session_id):
        return f"rt-{session_id}"
    return "rt-" + hashlib.sha256(session_id.encode()).hexdigest()[:40]


def default_owner() -> str:
    """A lease owner unique to this process and runtime: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _open_store(env: RuntimeEnvironment) -> SessionStore:
    if env.session_store_factory is None:
        raise ConfigurationError(
            "no session store: pass store=... to Runtime.open, or build the environment "
            "with_session_store_factory(SqliteSessionStoreFactory(path))"
        )
    return await env.session_store_factory.open()


async def _get_or_create(
    store: SessionStore,
    session_id: str | None,
    create: bool,
    metadata: Mapping[str, Any] | None,
):
    if session_id is None:
        if not create:
            raise ConfigurationError("create=False needs the session_id of an existing session")
        return await store.create_session(None, metadata)
    try:
        return await store.get_session(session_id)
    except SessionNotFoundError:
        if not create:
            raise
    return await store.create_session(session_id, metadata)


def _sinks(shared: TraceSink | None, memory: MemoryTraceSink) -> TraceSink:
    return memory if shared is None else MultiSink([shared, memory])


def _snapshot_policy(value: SnapshotPolicy | str) -> SnapshotPolicy:
    try:
        return SnapshotPolicy(value)
    except ValueError:
        choices = ", ".join(p.value for p in SnapshotPolicy)
        raise ConfigurationError(f"snapshots must be one of {choices}, got {value!r}") from None


def _at_least(value: int, least: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigurationError(f"{name} must be an integer >= {least}, got {value!r}")
    return value
