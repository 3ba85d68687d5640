"""Plugins: one instance per session, hooks in registration order, state saved per commit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from conch.errors import ConfigurationError
from conch.runtime import (
    CellAction,
    CellDecision,
    ChatMessage,
    Plugin,
    PluginContext,
    PluginError,
    PluginHost,
    PromptContribution,
    PromptSlot,
    TurnInfo,
    TurnOutcome,
)
from conch.store import Node, NodeKind, SessionStore, TurnCommit

TURN = TurnInfo("s1", "turn-1", "how many lines?")


class Recorder(Plugin):
    """Records the hooks it sees in ``log`` and tags what passes through it."""

    name = "recorder"
    log: list[str]

    def __init__(self, context: PluginContext | None = None) -> None:
        super().__init__(context)
        self.log = []
        self.turns = 0

    async def before_turn(self, turn: TurnInfo) -> None:
        self.log.append(f"before {turn.turn_key}")

    async def after_turn(self, turn: TurnInfo, outcome: TurnOutcome) -> None:
        self.turns += 1
        self.log.append(f"after {outcome.reason}")

    async def on_model_request(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        return [*messages, {"role": "user", "content": f"[{self.name}]"}]

    async def on_model_reply(self, text: str) -> str:
        return f"{text}+{self.name}"

    async def on_cell_output(self, output: str) -> str:
        return f"{output}+{self.name}"

    def save_state(self) -> Any:
        return {"turns": self.turns}

    def load_state(self, state: Any) -> None:
        self.turns = state["turns"]


class Second(Recorder):
    name = "second"


class Rewriter(Plugin):
    name = "rewriter"

    async def on_code_cell(self, code: str) -> CellDecision:
        return CellDecision.rewrite(code.replace("rm -rf", "echo"), reason="no deleting")


class Vetoer(Plugin):
    name = "vetoer"

    async def on_code_cell(self, code: str) -> CellDecision:
        if "import socket" in code:
            return CellDecision.veto("network access is not allowed; use llm_query")
        return CellDecision.run()


class Counter(Plugin):
    """Counts the cells it sees: shows whether a plugin after a veto was called."""

    name = "counter"
    seen = 0

    async def on_code_cell(self, code: str) -> CellDecision:
        self.seen += 1
        return CellDecision.run()


class Tools(Plugin):
    name = "tools"

    def repl_tools(self) -> Mapping[str, Callable[..., Any]]:
        return {"word_count": lambda text: len(text.split())}

    def prompt_contributions(self) -> list[PromptContribution]:
        return [PromptContribution(PromptSlot.ENVIRONMENT, "word_count(text) counts words.")]


async def test_each_session_gets_its_own_instances() -> None:
    host = PluginHost([Recorder])

    first, second = host.build_session("a"), host.build_session("b")

    assert first.plugins[0] is not second.plugins[0]
    assert first.plugins[0].context == PluginContext("a")


async def test_turn_hooks_run_in_registration_order() -> None:
    session = PluginHost([Recorder, Second]).build_session("s1")

    await session.before_turn(TURN)
    await session.after_turn(TURN, TurnOutcome("42", "final", failed=False))

    recorder, second = session.plugins
    assert recorder.log == second.log == ["before turn-1", "after final"]  # type: ignore[attr-defined]


async def test_model_and_output_hooks_chain_each_plugin_on_the_last_ones_result() -> None:
    session = PluginHost([Recorder, Second]).build_session("s1")

    messages = await session.on_model_request([{"role": "user", "content": "q"}])
    reply = await session.on_model_reply("text")
    output = await session.on_cell_output("out")

    assert [m["content"] for m in messages] == ["q", "[recorder]", "[second]"]
    assert reply == "text+recorder+second"
    assert output == "out+recorder+second"


async def test_a_cell_no_plugin_objects_to_runs_unchanged() -> None:
    decision = await PluginHost([Vetoer, Counter]).build_session("s").on_code_cell("x = 1")

    assert (decision.action, decision.code) == (CellAction.RUN, "x = 1")


async def test_a_rewrite_is_what_later_plugins_see_and_what_runs() -> None:
    session = PluginHost([Rewriter, Vetoer]).build_session("s")

    decision = await session.on_code_cell("!rm -rf /tmp/x")

    assert decision == CellDecision(CellAction.REWRITE, "!echo /tmp/x", "no deleting", "rewriter")


async def test_a_veto_stops_the_chain_and_says_who_and_why() -> None:
    session = PluginHost([Vetoer, Counter]).build_session("s")

    decision = await session.on_code_cell("import socket")

    assert decision.action is CellAction.VETO
    assert decision.plugin == "vetoer"
    assert "use llm_query" in decision.reason
    assert session.plugins[1].seen == 0  # type: ignore[attr-defined]


async def test_tools_and_prompt_contributions_are_gathered_with_their_source() -> None:
    session = PluginHost([Tools]).build_session("s")

    assert session.repl_tools()["word_count"]("a b c") == 3
    [contribution] = session.prompt_layer().contributions(PromptSlot.ENVIRONMENT)
    assert contribution.source == "tools"


async def test_two_plugins_offering_one_tool_name_is_an_error() -> None:
    class Other(Tools):
        name = "other"

    with pytest.raises(PluginError, match=r"'tools' and 'other' both offer .*'word_count'"):
        PluginHost([Tools, Other]).build_session("s").repl_tools()


async def test_plugin_state_survives_a_commit_and_a_reload(sqlite_store: SessionStore) -> None:
    record = await sqlite_store.create_session()
    lease = await sqlite_store.acquire_lease(record.id, "w")
    host = PluginHost([Recorder])
    session = host.build_session(record.id)
    await session.after_turn(TURN, TurnOutcome(None, "max_iterations", failed=True))

    node = Node.new(record.id, NodeKind.USER_INPUT, {"text": "q"})
    commit = TurnCommit("t1", [node], plugin_state=session.save_state())
    await sqlite_store.commit_turn(lease, commit)
    saved = (await sqlite_store.get_session(record.id)).plugin_state

    resumed = host.build_session(record.id, saved)
    assert resumed.plugins[0].turns == 1  # type: ignore[attr-defined]


async def test_state_of_a_plugin_no_longer_registered_is_carried_forward() -> None:
    with_both = PluginHost([Recorder, Second]).build_session("s")
    with_both.plugins[1].turns = 7  # type: ignore[attr-defined]

    only_first = PluginHost([Recorder]).build_session("s", with_both.save_state())
    both_again = PluginHost([Recorder, Second]).build_session("s", only_first.save_state())

    assert both_again.plugins[1].turns == 7  # type: ignore[attr-defined]


class Broken(Plugin):
    name = "broken"

    async def on_cell_output(self, output: str) -> str:
        raise RuntimeError("boom")

    async def on_model_reply(self, text: str) -> str:
        return None  # type: ignore[return-value]

    def save_state(self) -> Any:
        return {"not json": object()}


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (lambda s: s.on_cell_output("x"), "'broken' failed in on_cell_output: RuntimeError"),
        (lambda s: s.on_model_reply("x"), "'broken': on_model_reply returned a NoneType"),
    ],
    ids=["raises", "wrong-type"],
)
async def test_a_misbehaving_plugin_is_named_in_the_error(hook: Any, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        await hook(PluginHost([Broken]).build_session("s"))


def test_state_that_is_not_json_is_refused_when_saved() -> None:
    with pytest.raises(PluginError, match="cannot be saved as JSON"):
        PluginHost([Broken]).build_session("s").save_state()


def test_saved_state_this_version_did_not_write_is_refused() -> None:
    with pytest.raises(PluginError, match="saved_state=None"):
        PluginHost([Recorder]).build_session("s", b"\x80 not json")


@pytest.mark.parametrize(
    ("factories", "message"),
    [
        ([Recorder, Recorder], "two plugins are named 'recorder'"),
        ([lambda context: "not a plugin"], "not a Plugin"),
    ],
    ids=["same-name", "not-a-plugin"],
)
def test_a_misconfigured_host_says_what_to_fix(factories: list[Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PluginHost(factories).build_session("s")


def test_a_veto_needs_a_reason() -> None:
    with pytest.raises(ConfigurationError, match="needs a reason"):
        CellDecision.veto("  ")
