"""Runtime: turns commit atomically, REPL state follows the graph (rewind, reopen, resume).

Real parts throughout: a real local sandbox (its snapshots on disk), real session stores
(SQLite, and PostgreSQL where a server runs), and a scripted model that writes the code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from conch.errors import (
    ConfigurationError,
    LeaseConflictError,
    NodeNotFoundError,
    RuntimeStateError,
    SessionNotFoundError,
    StoreError,
)
from conch.lm import ScriptedModel
from conch.runtime import (
    CellDecision,
    ParkedSession,
    Plugin,
    PluginHost,
    PromptContribution,
    PromptLayer,
    PromptSlot,
    Residency,
    Runtime,
    RuntimeEnvironment,
    SnapshotPolicy,
    TerminationPolicy,
)
from conch.store import NodeKind, SessionStore
from conch.trace import MemoryTraceSink, RecordType, TraceLevel

Script = Sequence[str]


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def system_prompt(model: ScriptedModel, call: int = -1) -> str:
    return model.calls[call].messages[0]["content"]


def first_message(model: ScriptedModel, call: int = -1) -> str:
    return model.calls[call].messages[-1]["content"]


OpenRuntime = Callable[..., Awaitable[Runtime]]


@pytest.fixture
def environment() -> RuntimeEnvironment:
    return RuntimeEnvironment()


@pytest.fixture
async def open_runtime(
    store: SessionStore, tmp_path: Path, environment: RuntimeEnvironment
) -> AsyncIterator[OpenRuntime]:
    """``await open_runtime(replies, session_id=..., **options)``: a runtime on the test's
    store with a local sandbox whose snapshots live in tmp_path (so a later runtime finds
    them, as a later process would)."""
    opened: list[Runtime] = []

    async def open_(script: Script, session_id: str = "chat", **options: Any) -> Runtime:
        options.setdefault("env", environment)
        runtime = await Runtime.open(
            options.pop("env"),
            session_id,
            model=ScriptedModel(list(script)),
            sandbox="local",
            store=store,
            snapshot_dir=tmp_path / "snapshots",
            **options,
        )
        opened.append(runtime)
        return runtime

    yield open_
    for runtime in opened:
        await runtime.close()


async def test_a_turn_commits_its_steps_as_one_chain_ending_in_the_answer(
    open_runtime: OpenRuntime, store: SessionStore
) -> None:
    runtime = await open_runtime(
        [repl("total = sum(range(5))\nprint(total)"), repl("FINAL(total)")]
    )

    result = await runtime.turn("What is the sum?")

    assert (result.answer, result.termination_reason, result.failed) == ("10", "final", False)
    path = await store.load_active_path("chat")
    assert [node.kind for node in path] == [
        NodeKind.USER_INPUT,
        NodeKind.MODEL_REPLY,
        NodeKind.CODE_CELL,
        NodeKind.CELL_OUTPUT,
        NodeKind.MODEL_REPLY,
        NodeKind.CODE_CELL,
        NodeKind.CELL_OUTPUT,
        NodeKind.ANSWER,
    ]
    assert path[-1].id == result.node_id == runtime.leaf_node_id
    assert path[0].payload["text"] == "What is the sum?"
    assert path[2].payload["code"] == "total = sum(range(5))\nprint(total)"
    assert path[3].payload["output"] == "10"
    assert path[-1].payload["answer"] == "10"
    assert path[-1].snapshot_id == result.snapshot_id is not None
    assert {node.turn_key for node in path} == {result.turn_key}


async def test_variables_and_the_context_carry_over_to_the_next_turn(
    open_runtime: OpenRuntime,
) -> None:
    runtime = await open_runtime(
        [
            repl("words = context.split()\nFINAL(len(words))"),
            repl("FINAL(words[-1] + ' ' + context[:5])"),
        ]
    )
    first = await runtime.turn("How many words?", context="alpha beta gamma")
    second = await runtime.turn("Which word is last?")  # no context: keep the loaded one

    assert (first.answer, second.answer) == ("3", "gamma alpha")
    model: ScriptedModel = runtime._rlm.model  # type: ignore[assignment]
    assert "Loaded in an earlier turn" in first_message(model)
    # The second turn's model saw the first exchange, and was told the REPL kept its state.
    history = [m["content"] for m in model.calls[-1].messages[1:-1]]
    assert history == ["Query: How many words?", "FINAL(3)"]
    assert "still defined in the REPL" in system_prompt(model)


async def test_rewind_restores_the_repl_variables_of_that_point(
    open_runtime: OpenRuntime, store: SessionStore
) -> None:
    runtime = await open_runtime(
        [
            repl("x = 'first'\nFINAL(x)"),
            repl("x = 'second'\nFINAL(x)"),
            repl("FINAL(x)"),
        ]
    )
    first = await runtime.turn("set x")
    second = await runtime.turn("change x")

    restore = await runtime.rewind(first.node_id)
    third = await runtime.turn("what is x?")

    assert restore.snapshot_id == first.snapshot_id and "x" in restore.restored
    assert third.answer == "first"
    orphans = await runtime.orphaned_node_ids()
    second_turn = [
        n.id for n in await store.load_all_nodes("chat") if n.turn_key == second.turn_key
    ]
    assert orphans == second_turn
    assert (await runtime.get_historic_node(second.node_id)).payload["answer"] == "second"


async def test_rewinding_before_the_first_turn_starts_an_empty_repl(
    open_runtime: OpenRuntime,
) -> None:
    runtime = await open_runtime([repl("x = 1\nFINAL(x)"), repl("FINAL('x' in globals())")])
    await runtime.turn("set x")

    restore = await runtime.rewind(None)
    result = await runtime.turn("is x there?")

    assert restore.fresh and runtime.active_path()[0].id != result.node_id
    assert result.answer == "False"
    assert runtime.active_path()[0].parent_id is None


async def test_a_reopened_session_continues_with_the_leafs_repl_state(
    open_runtime: OpenRuntime, store: SessionStore
) -> None:
    """A new runtime with a new sandbox (as in a new process) restores the leaf's snapshot."""
    runtime = await open_runtime([repl("kept = {'n': 41}\nFINAL('ok')")])
    await runtime.turn("remember something")
    await runtime.close()

    again = await open_runtime([repl("kept['n'] += 1\nFINAL(kept['n'])")])
    result = await again.turn("what did you keep, plus one?")

    assert result.answer == "42"
    assert result.repl is not None and "kept" in result.repl.restored
    assert [n.kind for n in await store.load_active_path("chat")].count(NodeKind.ANSWER) == 2


async def test_park_keeps_only_a_handle_and_resume_continues(
    open_runtime: OpenRuntime, environment: RuntimeEnvironment, store: SessionStore, tmp_path
) -> None:
    runtime = await open_runtime([repl("seen = ['a']\nFINAL(len(seen))")])
    await runtime.turn("start")

    parked = await runtime.park()
    assert isinstance(parked, ParkedSession)
    assert (parked.session_id, parked.store) == ("chat", store)
    with pytest.raises(RuntimeStateError, match="parked"):
        await runtime.turn("still there?")

    resumed = await Runtime.resume(
        parked,
        environment,
        model=ScriptedModel([repl("seen.append('b')\nFINAL(seen)")]),
        sandbox="local",
        snapshot_dir=tmp_path / "snapshots",
    )
    try:
        assert (await resumed.turn("continue")).answer == '["a", "b"]'
    finally:
        await resumed.close()


async def test_a_repeated_turn_key_returns_the_stored_turn_without_running_it(
    open_runtime: OpenRuntime,
) -> None:
    runtime = await open_runtime([repl("FINAL('once')")])
    first = await runtime.turn("do it", turn_key="request-7")
    again = await runtime.turn("do it", turn_key="request-7")

    model: ScriptedModel = runtime._rlm.model  # type: ignore[assignment]
    assert len(model.calls) == 1
    assert again.replayed and not first.replayed
    assert (again.answer, again.node_id, again.snapshot_id) == (
        first.answer,
        first.node_id,
        first.snapshot_id,
    )


async def test_a_second_writer_is_refused_while_the_first_holds_the_session(
    open_runtime: OpenRuntime,
) -> None:
    await open_runtime([])
    with pytest.raises(LeaseConflictError, match="only one writer"):
        await open_runtime([])


async def test_opening_an_unknown_session_without_create_names_it(
    open_runtime: OpenRuntime,
) -> None:
    with pytest.raises(SessionNotFoundError, match="nowhere"):
        await open_runtime([], session_id="nowhere", create=False)


@pytest.mark.parametrize("text", ["", "   "])
async def test_an_empty_turn_is_refused_and_nothing_is_committed(
    open_runtime: OpenRuntime, store: SessionStore, text: str
) -> None:
    runtime = await open_runtime([])
    with pytest.raises(ConfigurationError, match="empty"):
        await runtime.turn(text)
    assert await store.load_active_path("chat") == []


async def test_rewinding_to_a_node_of_another_session_changes_nothing(
    open_runtime: OpenRuntime,
) -> None:
    other = await open_runtime([repl("FINAL(1)")], session_id="other")
    foreign = (await other.turn("q")).node_id
    runtime = await open_runtime([repl("FINAL(2)")])
    leaf = (await runtime.turn("q")).node_id

    with pytest.raises(NodeNotFoundError):
        await runtime.rewind(foreign)
    assert runtime.leaf_node_id == leaf


async def test_rewinding_to_a_tombstoned_node_is_refused(open_runtime: OpenRuntime) -> None:
    runtime = await open_runtime([repl("FINAL(1)"), repl("FINAL(2)")])
    first = await runtime.turn("one")
    second = await runtime.turn("two")
    await runtime.rewind(first.node_id)
    await runtime.tombstone_nodes(await runtime.orphaned_node_ids())

    with pytest.raises(NodeNotFoundError):
        await runtime.rewind(second.node_id)
    assert runtime.leaf_node_id == first.node_id


async def test_a_turn_that_runs_out_of_iterations_is_recorded_as_failed(
    open_runtime: OpenRuntime, store: SessionStore
) -> None:
    environment = RuntimeEnvironment(termination=TerminationPolicy(max_iterations=1))
    runtime = await open_runtime([repl("print('thinking')"), "maybe 7"], env=environment)

    result = await runtime.turn("hard question")

    # The best answer asked for after the limit is kept, but the turn is not answered.
    assert result.failed and result.termination_reason == "max_iterations"
    assert result.answer == "maybe 7"
    assert (await store.load_active_path("chat"))[-1].kind is NodeKind.ERROR


async def test_without_require_final_answer_a_partial_turn_is_not_a_failure(
    open_runtime: OpenRuntime,
) -> None:
    policy = TerminationPolicy(max_iterations=1, require_final_answer=False)
    runtime = await open_runtime([repl("print(1)"), ""], env=RuntimeEnvironment(termination=policy))
    assert not (await runtime.turn("q")).failed


async def test_on_request_snapshots_only_when_asked(open_runtime: OpenRuntime) -> None:
    runtime = await open_runtime(
        [repl("FINAL(1)"), repl("FINAL(2)")], snapshots=SnapshotPolicy.ON_REQUEST
    )
    assert (await runtime.turn("a")).snapshot_id is None
    assert (await runtime.turn("b", snapshot=True)).snapshot_id is not None


async def test_old_snapshots_are_pruned_past_keep_snapshots(open_runtime: OpenRuntime) -> None:
    runtime = await open_runtime([repl(f"v = {i}\nFINAL(v)") for i in range(3)], keep_snapshots=2)
    results = [await runtime.turn(f"turn {i}") for i in range(3)]

    kept = {s.id for s in await runtime.sandbox.list_snapshots(runtime.sandbox_session_id)}
    assert kept == {results[1].snapshot_id, results[2].snapshot_id}
    # The first turn's snapshot is gone: rewinding there starts an empty REPL, and says why.
    restore = await runtime.rewind(results[0].node_id)
    assert restore.fresh and "no longer stored" in restore.skipped[0]


# --- plugins, prompts, tracing --------------------------------------------------------------


class Guard(Plugin):
    """Vetoes cells that import os, offers a REPL tool, counts turns in its saved state."""

    name = "guard"

    def __init__(self, context=None) -> None:
        super().__init__(context)
        self.turns = 0

    async def before_turn(self, turn) -> None:
        self.turns += 1

    async def on_code_cell(self, code: str) -> CellDecision:
        if "import os" in code:
            return CellDecision.veto("no os module here")
        return CellDecision.run()

    def repl_tools(self):
        return {"shout": lambda text: text.upper()}

    def prompt_contributions(self):
        return [PromptContribution(PromptSlot.GUIDANCE, "GUARD IS WATCHING")]

    def save_state(self):
        return {"turns": self.turns}

    def load_state(self, state) -> None:
        self.turns = state["turns"]


async def test_plugins_veto_cells_offer_tools_shape_the_prompt_and_save_state(
    open_runtime: OpenRuntime, store: SessionStore
) -> None:
    environment = RuntimeEnvironment(plugin_host=PluginHost([Guard]))
    runtime = await open_runtime(
        [repl("import os\nprint(os.getcwd())"), repl("FINAL(shout('done'))")], env=environment
    )

    result = await runtime.turn("try things")

    assert result.answer == "DONE"
    model: ScriptedModel = runtime._rlm.model  # type: ignore[assignment]
    assert "GUARD IS WATCHING" in system_prompt(model)
    assert "shout" in system_prompt(model)
    outputs = [n for n in await store.load_active_path("chat") if n.kind is NodeKind.CELL_OUTPUT]
    assert "Not run: no os module here (plugin guard)" in outputs[0].payload["output"]
    assert b'"turns": 1' in (await store.get_session("chat")).plugin_state


async def test_the_prompt_stacks_environment_session_and_turn_layers(
    open_runtime: OpenRuntime,
) -> None:
    environment = RuntimeEnvironment(
        prompt=PromptLayer().with_contribution(
            PromptContribution(PromptSlot.PROJECT_INSTRUCTIONS, "ENVIRONMENT RULE")
        )
    )
    session_layer = PromptLayer().with_contribution(
        PromptContribution(PromptSlot.PROJECT_INSTRUCTIONS, "SESSION RULE")
    )
    runtime = await open_runtime(
        [repl("FINAL(1)"), repl("FINAL(2)")], env=environment, prompt=session_layer
    )
    await runtime.turn("a")
    turn_layer = PromptLayer().with_replaced_slot(
        PromptSlot.EXECUTION, [PromptContribution(PromptSlot.EXECUTION, "TURN REPLACES IT")]
    )
    await runtime.turn("b", prompt=turn_layer)

    model: ScriptedModel = runtime._rlm.model  # type: ignore[assignment]
    first, second = system_prompt(model, 0), system_prompt(model, 1)
    assert first.index("ENVIRONMENT RULE") < first.index("SESSION RULE")
    assert "```repl" in first and "```repl" not in second
    assert "TURN REPLACES IT" in second


@pytest.mark.parametrize("level", [TraceLevel.STANDARD, TraceLevel.EXTENDED])
async def test_turn_records_carry_the_session_and_turn_ids(
    open_runtime: OpenRuntime, level: TraceLevel
) -> None:
    sink = MemoryTraceSink()
    runtime = await open_runtime(
        [repl("FINAL(1)")], env=RuntimeEnvironment(trace_sink=sink, trace_level=level)
    )
    result = await runtime.turn("q")

    assert {(r.session_id, r.turn_id) for r in sink.records} == {("chat", result.turn_key)}
    raw = sink.of_type(RecordType.MODEL_REQUEST)
    assert bool(raw) is (level is TraceLevel.EXTENDED)
    if raw:
        assert raw[0].data["messages"][-1]["content"].endswith(first_message(runtime._rlm.model))


async def test_a_turn_runs_in_the_background_under_the_hosts_control(
    open_runtime: OpenRuntime,
) -> None:
    runtime = await open_runtime([repl("FINAL('later')")])
    task_id = await runtime.turn_in_background("q")
    status = await runtime.background_tasks.wait(task_id, timeout_s=60)

    assert status.done and status.result.answer == "later"


async def test_active_path_only_residency_reads_orphans_from_the_store(
    open_runtime: OpenRuntime,
) -> None:
    environment = RuntimeEnvironment(residency=Residency.ACTIVE_PATH_ONLY)
    runtime = await open_runtime([repl("FINAL(1)"), repl("FINAL(2)")], env=environment)
    first = await runtime.turn("one")
    second = await runtime.turn("two")
    await runtime.rewind(first.node_id)

    assert runtime.graph.resident_node_count == len(runtime.active_path())
    assert (await runtime.get_historic_node(second.node_id)).payload["answer"] == "2"


async def test_a_turn_whose_lease_was_taken_over_commits_nothing(
    open_runtime: OpenRuntime, store: SessionStore
) -> None:
    runtime = await open_runtime([repl("FINAL(1)")], lease_ttl_s=0.2)
    await asyncio.sleep(0.3)  # the lease expires while the runtime is idle
    await store.acquire_lease("chat", "someone-else")

    with pytest.raises(LeaseConflictError):
        await runtime.turn("q")
    assert await store.load_active_path("chat") == []


async def test_a_commit_that_fails_loses_nothing_and_the_next_turn_starts_from_the_leaf(
    open_runtime: OpenRuntime, store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk filling up during a commit is the store's own test (a real full file
    system); here the store refuses one commit and the runtime must recover from it."""
    runtime = await open_runtime(
        [repl("x = 'kept'\nFINAL(x)"), repl("x = 'lost'\nFINAL(x)"), repl("FINAL(x)")]
    )
    first = await runtime.turn("one")
    real_commit = store.commit_turn

    async def disk_full(lease, commit):
        raise StoreError("database or disk is full")

    monkeypatch.setattr(store, "commit_turn", disk_full)
    with pytest.raises(StoreError, match="disk is full"):
        await runtime.turn("two")
    monkeypatch.setattr(store, "commit_turn", real_commit)

    assert runtime.leaf_node_id == first.node_id
    assert [n.id for n in await store.load_active_path("chat")][-1] == first.node_id
    third = await runtime.turn("what is x?")
    assert third.answer == "kept"  # the uncommitted turn's REPL changes were rolled back
    assert third.repl is not None and third.repl.snapshot_id == first.snapshot_id
