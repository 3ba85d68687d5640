"""RuntimeEnvironment: defaults, the builder, and the termination policy it carries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conch.errors import ConfigurationError
from conch.runtime import (
    EventLoopTaskHost,
    OutputBudgetPlugin,
    PluginHost,
    PromptContribution,
    PromptLayer,
    PromptSlot,
    PromptTemplate,
    Residency,
    RuntimeEnvironment,
    TerminationPolicy,
)
from conch.store import (
    FilesystemAttachmentStore,
    InMemoryAttachmentStore,
    SqliteSessionStoreFactory,
)
from conch.trace import JsonlTraceSink, MemoryTraceSink, TraceContext, TraceLevel

INTRO = PromptSlot.INTRO


def test_the_default_environment_needs_no_service() -> None:
    env = RuntimeEnvironment()

    assert env.residency is Residency.KEEP_ALL
    assert isinstance(env.attachment_store, InMemoryAttachmentStore)
    assert env.plugin_host is None and env.background_task_host is None
    assert env.session_store_factory is None and env.trace_sink is None
    assert env.trace_level is TraceLevel.STANDARD
    assert env.termination == TerminationPolicy()
    assert env.prompt.render() == ""


def test_an_environment_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RuntimeEnvironment().residency = Residency.ACTIVE_PATH_ONLY  # type: ignore[misc]


def test_a_variant_shares_the_expensive_parts_instead_of_copying_them() -> None:
    env = RuntimeEnvironment(plugin_host=PluginHost([OutputBudgetPlugin]))

    variant = dataclasses.replace(env, residency=Residency.ACTIVE_PATH_ONLY)

    assert variant.plugin_host is env.plugin_host
    assert variant.attachment_store is env.attachment_store
    assert variant.prompt is env.prompt


def test_the_builder_sets_every_field(tmp_path: Path) -> None:
    plugins = PluginHost([OutputBudgetPlugin])
    tasks = EventLoopTaskHost()
    factory = SqliteSessionStoreFactory(tmp_path / "s.db")
    attachments = FilesystemAttachmentStore(tmp_path / "attachments")
    sink = MemoryTraceSink()
    context = TraceContext(session_id="s")
    termination = TerminationPolicy(max_iterations=5, require_final_answer=False)

    env = (
        RuntimeEnvironment.builder()
        .with_plugin_host(plugins)
        .with_residency(Residency.ACTIVE_PATH_ONLY)
        .with_background_task_host(tasks)
        .with_session_store_factory(factory)
        .with_attachment_store(attachments)
        .with_trace_sink(sink)
        .with_trace_level(TraceLevel.EXTENDED)
        .with_trace_context(context)
        .with_termination(termination)
        .build()
    )

    assert env == RuntimeEnvironment(
        plugin_host=plugins,
        residency=Residency.ACTIVE_PATH_ONLY,
        background_task_host=tasks,
        session_store_factory=factory,
        attachment_store=attachments,
        prompt=PromptLayer(),
        trace_sink=sink,
        trace_level=TraceLevel.EXTENDED,
        trace_context=context,
        termination=termination,
    )


def test_prompt_calls_apply_in_order() -> None:
    env = (
        RuntimeEnvironment.builder()
        .with_prompt_template(PromptTemplate(slots=(PromptSlot.GUIDANCE, INTRO)))
        .with_prompt_contribution(PromptContribution(INTRO, "old intro"))
        .with_replaced_prompt_slot(INTRO, [PromptContribution(INTRO, "intro")])
        .with_prompt_contribution(PromptContribution(PromptSlot.GUIDANCE, "guidance"))
        .build()
    )

    assert env.prompt.render() == "guidance\n\nintro"


def test_a_cleared_slot_and_a_whole_layer() -> None:
    layer = PromptLayer().with_contribution(PromptContribution(INTRO, "from the layer"))

    env = (
        RuntimeEnvironment.builder()
        .with_prompt_contribution(PromptContribution(INTRO, "dropped by the layer"))
        .with_prompt_layer(layer)
        .with_prompt_contribution(PromptContribution(PromptSlot.GUIDANCE, "kept"))
        .with_cleared_prompt_slot(PromptSlot.GUIDANCE)
        .build()
    )

    assert env.prompt.render() == "from the layer"


def test_a_trace_path_opens_a_jsonl_sink_at_build(tmp_path: Path) -> None:
    builder = RuntimeEnvironment.builder().with_trace_jsonl_path(tmp_path / "run.jsonl")

    env = builder.build()

    assert isinstance(env.trace_sink, JsonlTraceSink)
    assert env.trace_sink.path == tmp_path / "run.jsonl"
    env.trace_sink.close()


def test_the_last_trace_setting_wins(tmp_path: Path) -> None:
    sink = MemoryTraceSink()

    env = (
        RuntimeEnvironment.builder()
        .with_trace_jsonl_path(tmp_path / "never.jsonl")
        .with_trace_sink(sink)
        .build()
    )

    assert env.trace_sink is sink
    assert not (tmp_path / "never.jsonl").exists()
    assert RuntimeEnvironment.builder().with_trace_jsonl_path(None).build().trace_sink is None


def test_a_wrong_kind_of_value_is_refused_when_built() -> None:
    builder = RuntimeEnvironment.builder().with_residency("active_path_only")  # type: ignore[arg-type]

    with pytest.raises(ConfigurationError, match="residency must be a Residency, got str"):
        builder.build()


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_iterations": 0}, "max_iterations must be a positive int"),
        ({"max_tokens": 1.5}, "max_tokens must be a positive int"),
        ({"max_cost_usd": -1}, "max_cost_usd must be a positive number"),
        ({"max_time_s": float("nan")}, "max_time_s must be a positive number"),
        ({"require_final_answer": "yes"}, "must be True or False"),
    ],
    ids=["iterations", "tokens", "cost", "time", "require-final"],
)
def test_a_bad_limit_says_what_is_allowed(limits: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TerminationPolicy(**limits)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("require_final_answer", "answered", "failed"),
    [(True, True, False), (True, False, True), (False, False, False), (False, True, False)],
)
def test_whether_a_turn_without_an_answer_failed_is_the_policys_choice(
    require_final_answer: bool, answered: bool, failed: bool
) -> None:
    policy = TerminationPolicy(require_final_answer=require_final_answer)

    assert policy.turn_failed(answered=answered) is failed
