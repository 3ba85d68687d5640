"""``conch eval sniah`` against a loopback OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from typer.testing import CliRunner

from conch.bench import sniah
from conch.cli import app


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("CONCH_NO_PROGRESS", "1")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def searcher(request) -> str:
    """Searches with code and answers what it printed; asked directly, it gives up."""
    messages = request.messages
    if messages[0]["role"] != "system":
        return "no idea"
    key = re.search(r"special magic \w+ for (\S+) mentioned", messages[1]["content"])[1]
    if len(messages) == 2:
        return f"```repl\nimport re\nhit = re.search(r'{key} is: (\\S+)\\.', context)\n```"
    return "```repl\nFINAL(hit.group(1))\n```"


def eval_args(server, *extra: str) -> list[str]:
    return [
        "eval", "sniah", "--base-url", server.base_url, "--model", "test-model",
        "--sandbox", "local", "--length", "3000", *extra,
    ]  # fmt: skip


def test_it_prints_a_summary_table_and_writes_one_line_per_task(cli, openai_server, tmp_path):
    openai_server.replies = searcher
    out = tmp_path / "results.jsonl"
    result = cli(*eval_args(openai_server, "--n", "3", "--seed", "5", "--out", str(out)))
    assert result.exit_code == 0, result.output
    table = result.stdout
    assert "S-NIAH · 3 tasks · 3,000 characters · seed 5 · test-model" in table
    assert "RLM" in table and "100% (3/3)" in table and "final 3" in table
    records = sniah.read_jsonl(out)
    expected = [t.expected for t in sniah.generate_tasks(3, length=3_000, seed=5)]
    assert [r["answer"] for r in records] == expected
    assert all(r["correct"] for r in records)
    # progress went to stderr, one line per finished task
    assert len(re.findall(r"sniah-s5-00\d rlm .*: correct", result.stderr)) == 3


def test_json_prints_config_summary_and_records(cli, openai_server):
    openai_server.replies = searcher
    result = cli(*eval_args(openai_server, "--n", "2", "--json", "--variants", "uuid"))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["config"]["variants"] == ["uuid"] and payload["config"]["n"] == 2
    assert payload["summary"]["rlm"]["accuracy"] == 1.0
    assert payload["summary"]["rlm"]["termination_reasons"] == {"final": 2}
    assert [r["variant"] for r in payload["records"]] == ["uuid", "uuid"]


def test_the_baseline_runs_beside_the_rlm(cli, openai_server):
    openai_server.replies = searcher
    result = cli(*eval_args(openai_server, "--n", "2", "--baseline", "--json"))
    payload = json.loads(result.stdout)
    assert list(payload["summary"]) == ["rlm", "baseline"]
    assert payload["summary"]["baseline"]["accuracy"] == 0.0
    assert [r["system"] for r in payload["records"]] == ["rlm", "baseline"] * 2
    table = cli(*eval_args(openai_server, "--n", "1", "--baseline")).stdout
    assert "no RLM (the model asked directly, the context cut to its window)" in table


def test_an_unknown_variant_is_bad_input(cli, openai_server):
    result = cli(*eval_args(openai_server, "--variants", "number,haystack"))
    assert result.exit_code == 2
    assert "unknown variant(s) haystack" in result.stderr
    assert openai_server.requests == []


def test_a_base_url_without_a_model_is_bad_input(cli, openai_server):
    result = cli("eval", "sniah", "--base-url", openai_server.base_url)
    assert result.exit_code == 2
    assert "--base-url needs --model NAME" in result.stderr


def test_a_server_refusing_the_key_fails_before_any_task(cli, openai_server, tmp_path):
    openai_server.api_key = "secret"
    out = tmp_path / "results.jsonl"
    result = cli(*eval_args(openai_server, "--out", str(out)))
    assert result.exit_code == 4
    assert openai_server.base_url in " ".join(result.stderr.split())
    assert out.read_text() == ""  # the preflight request failed: no task started
    assert "sniah-s0-000" not in result.stderr


def test_without_a_model_it_uses_the_local_default_or_names_its_install(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCH_HOME", str(tmp_path / "empty-home"))  # no weights pulled here
    result = cli("eval", "sniah", "--n", "1", "--length", "2000")
    assert result.exit_code == 4
    if importlib.util.find_spec("llama_cpp") is None:
        assert "pip install 'conch[local]'" in result.stderr
    else:
        assert "conch models pull qwen2.5-coder-1.5b" in result.stderr
