"""Running S-NIAH with scripted models: the RLM and baseline records, JSONL and the summary."""

from __future__ import annotations

import json
import re

import pytest

from conch.bench import sniah
from conch.bench.sniah import SniahSettings, generate_tasks, run_sniah, summarize
from conch.errors import ModelBadRequestError, ModelConnectionError
from conch.lm import ScriptedModel

FIELDS = {
    "system", "task_id", "variant", "depth", "expected", "answer", "correct", "contains",
    "iterations", "tokens", "input_tokens", "output_tokens", "cost_usd", "seconds",
    "termination_reason", "answer_source", "error", "model",
}  # fmt: skip


def searching_model(messages) -> str:
    """A good root model: search for the key with code, then answer from what was printed."""
    if messages[0]["role"] != "system":  # a direct question: the no-RLM baseline
        return "I could not find it."
    query = messages[1]["content"]
    key = re.search(r"special magic \w+ for (\S+) mentioned", query)[1]
    if len(messages) == 2:
        return (
            "```repl\nimport re\n"
            f"hit = re.search(r'{key} is: (\\S+)\\.', context)\nprint(hit.group(0))\n```"
        )
    return "```repl\nFINAL(hit.group(1))\n```"


@pytest.fixture
def settings(tmp_path) -> SniahSettings:
    return SniahSettings(sandbox="local", max_iterations=4, trace_dir=tmp_path / "traces")


async def test_each_task_gives_a_scored_record_with_every_field(settings):
    tasks = generate_tasks(3, length=4_000, seed=1)
    seen = []
    records = await run_sniah(
        tasks, ScriptedModel(searching_model), settings, on_record=seen.append
    )
    assert records == seen
    assert [r["task_id"] for r in records] == [t.task_id for t in tasks]
    for record, task in zip(records, tasks, strict=True):
        assert set(record) >= FIELDS
        assert record["system"] == "rlm"
        assert record["correct"] and record["contains"]
        assert record["answer"] == task.expected == record["expected"]
        assert (record["iterations"], record["termination_reason"]) == (2, "final")
        assert record["tokens"] == record["input_tokens"] + record["output_tokens"] > 0
        assert record["depth"] == task.depth and record["variant"] == task.variant
        json.dumps(record)  # one JSON line of the results file


async def test_traces_are_written_per_task(settings):
    tasks = generate_tasks(2, length=2_000, seed=1)
    records = await run_sniah(tasks, ScriptedModel(searching_model), settings)
    for record in records:
        with open(record["trace_path"]) as file:
            lines = file.read().splitlines()
        types = [json.loads(line)["type"] for line in lines]
        assert types[0] == "run_start" and types[-1] == "run_end" and "code_cell" in types


async def test_a_wrong_answer_and_a_run_out_of_iterations_are_recorded_as_such(settings):
    guesses = ScriptedModel(lambda messages: "```repl\nFINAL('1000000')\n```")
    wanderer = ScriptedModel(lambda messages: "```repl\nprint(len(context))\n```")
    task = generate_tasks(1, length=2_000, seed=2)
    (wrong,) = await run_sniah(task, guesses, settings)
    assert (wrong["answer"], wrong["correct"], wrong["termination_reason"]) == (
        "1000000",
        False,
        "final",
    )
    (lost,) = await run_sniah(task, wanderer, settings)
    assert lost["termination_reason"] == "max_iterations"
    assert lost["iterations"] == settings.max_iterations
    assert not lost["correct"]


async def test_the_baseline_asks_directly_with_the_context_cut_to_the_window(tmp_path):
    settings = SniahSettings(sandbox="local", baseline=True, baseline_window_tokens=1_000)
    task = sniah.make_task(0, length=20_000, seed=4, variant="number")
    model = ScriptedModel(searching_model)
    records = await run_sniah([task], model, settings)
    assert [r["system"] for r in records] == ["rlm", "baseline"]
    baseline = records[1]
    direct = model.calls[-1].messages
    assert [m["role"] for m in direct] == ["user"]
    prompt = direct[0]["content"]
    assert prompt.endswith(task.query)
    assert "characters omitted" in prompt
    assert baseline["context_chars_sent"] < 4_000 < len(task.context)
    in_prompt = task.needle_sentence in prompt
    assert baseline["needle_in_window"] is in_prompt
    assert (baseline["answer"], baseline["correct"]) == ("I could not find it.", False)
    assert baseline["iterations"] is None and baseline["termination_reason"] == "answered"


async def test_a_short_context_goes_to_the_baseline_whole():
    settings = SniahSettings(sandbox="local", baseline=True, baseline_window_tokens=8_192)
    task = sniah.make_task(0, length=2_000, seed=4, variant="number")
    model = ScriptedModel(lambda messages: task.expected)
    (_, baseline) = await run_sniah([task], model, settings)
    assert task.context in model.calls[-1].messages[0]["content"]
    assert baseline["needle_in_window"] and baseline["correct"]


async def test_the_baseline_shrinks_its_cut_when_the_window_is_smaller_than_guessed():
    sizes = []

    def small_window(messages):
        if messages[0]["role"] == "system":
            return "```repl\nFINAL('x')\n```"
        sizes.append(len(messages[0]["content"]))
        if sizes[-1] > 3_000:
            return ModelBadRequestError("the prompt does not fit the local model's context")
        return "42"

    settings = SniahSettings(sandbox="local", baseline=True, baseline_window_tokens=2_000)
    task = sniah.make_task(0, length=20_000, seed=4, variant="number")
    (_, baseline) = await run_sniah([task], ScriptedModel(small_window), settings)
    assert len(sizes) > 1 and sizes == sorted(sizes, reverse=True)
    assert baseline["answer"] == "42" and baseline["termination_reason"] == "answered"


async def test_a_model_error_in_the_baseline_is_recorded_not_raised():
    def failing_directly(messages):
        if messages[0]["role"] == "system":
            return "```repl\nFINAL('x')\n```"
        return ModelConnectionError("the server went away")

    settings = SniahSettings(sandbox="local", baseline=True)
    task = generate_tasks(1, length=2_000, seed=0)
    (_, baseline) = await run_sniah(task, ScriptedModel(failing_directly), settings)
    assert baseline["termination_reason"] == "model_error"
    assert "went away" in baseline["error"]
    assert baseline["answer"] is None and not baseline["correct"]


def test_the_summary_counts_accuracy_iterations_tokens_time_and_reasons():
    def record(system, variant, correct, reason, iterations, tokens, seconds, **extra):
        return {
            "system": system,
            "variant": variant,
            "correct": correct,
            "contains": correct,
            "termination_reason": reason,
            "iterations": iterations,
            "tokens": tokens,
            "seconds": seconds,
            "cost_usd": 0.0,
            **extra,
        }

    records = [
        record("rlm", "number", True, "final", 2, 1_000, 10.0),
        record("baseline", "number", False, "answered", None, 8_000, 60.0, needle_in_window=False),
        record("rlm", "uuid", True, "final", 3, 2_000, 20.0),
        record("baseline", "uuid", True, "answered", None, 8_000, 60.0, needle_in_window=True),
        record("rlm", "number", False, "max_iterations", 10, 9_000, 90.0),
        record("rlm", "uuid", False, "time_budget", 4, 4_000, 600.0),
    ]
    summary = summarize(records)
    assert list(summary) == ["rlm", "baseline"]
    rlm = summary["rlm"]
    assert (rlm["tasks"], rlm["correct"], rlm["accuracy"]) == (4, 2, 0.5)
    assert rlm["mean_iterations"] == pytest.approx(19 / 4)
    assert rlm["mean_tokens"] == 4_000 and rlm["total_tokens"] == 16_000
    assert rlm["mean_seconds"] == pytest.approx(180.0)
    assert rlm["termination_reasons"] == {"final": 2, "max_iterations": 1, "time_budget": 1}
    assert rlm["by_variant"] == {
        "number": {"tasks": 2, "correct": 1, "accuracy": 0.5},
        "uuid": {"tasks": 2, "correct": 1, "accuracy": 0.5},
    }
    assert "needle_in_window" not in rlm
    baseline = summary["baseline"]
    assert (baseline["accuracy"], baseline["mean_iterations"]) == (0.5, None)
    assert baseline["needle_in_window"] == 1


async def test_records_round_trip_through_a_jsonl_file(settings, tmp_path):
    tasks = generate_tasks(2, length=2_000, seed=6)
    path = tmp_path / "results.jsonl"
    with open(path, "w") as file:
        records = await run_sniah(
            tasks,
            ScriptedModel(searching_model),
            settings,
            on_record=lambda r: file.write(json.dumps(r) + "\n"),
        )
    assert sniah.read_jsonl(path) == records
    assert summarize(sniah.read_jsonl(path)) == summarize(records)
