"""``conch run`` and ``conch trace show`` against a loopback OpenAI-compatible server."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from conch.cli import app
from conch.testing._loopback import Reply


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("CONCH_NO_PROGRESS", "1")
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None):
        return runner.invoke(app, list(args), input=stdin)

    return invoke


@pytest.fixture
def context_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("ERROR disk full\nok\nERROR fan\n")
    return path


def counting_errors(request) -> str:
    if request.messages[0]["role"] != "system":
        return "sub"
    if len(request.messages) == 2:
        return "```repl\nn = context.count('ERROR')\nprint(n)\n```"
    return "```repl\nFINAL(f'{n} errors')\n```"


def run_args(server, context_file, *extra: str) -> list[str]:
    return [
        "run",
        "--base-url",
        server.base_url,
        "--model",
        "test-model",
        "--sandbox",
        "local",
        "--context",
        str(context_file),
        *extra,
        "How many errors?",
    ]


def test_run_prints_the_answer_and_exits_0(cli, openai_server, context_file):
    openai_server.replies = counting_errors
    result = cli(*run_args(openai_server, context_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == "2 errors\n"
    assert "iterations 2" in result.stderr
    assert openai_server.requests[0].body["model"] == "test-model"


def test_run_json_prints_the_result_object(cli, openai_server, context_file):
    openai_server.replies = counting_errors
    result = cli(*run_args(openai_server, context_file, "--json"))
    payload = json.loads(result.stdout)
    assert payload["answer"] == "2 errors"
    assert payload["termination_reason"] == "final"
    assert payload["iterations"] == 2
    assert payload["usage"]["total_tokens"] > 0


def test_run_reads_the_context_from_stdin(cli, openai_server):
    openai_server.replies = ["```repl\nFINAL(context.strip().upper())\n```"]
    args = ["run", "--base-url", openai_server.base_url, "--model", "m", "--sandbox", "local"]
    result = cli(*args, "--context", "-", "Shout it", stdin="quiet words\n")
    assert result.stdout == "QUIET WORDS\n"


def test_an_empty_stdin_context_is_bad_input(cli, openai_server):
    args = ["run", "--base-url", openai_server.base_url, "--model", "m", "--context", "-"]
    result = cli(*args, "Shout it", stdin="")
    assert result.exit_code == 2
    assert "stdin was empty" in result.stderr
    assert not openai_server.requests


def test_a_missing_context_path_exits_2_naming_it(cli, openai_server, tmp_path):
    result = cli(*run_args(openai_server, tmp_path / "missing.txt"))
    assert result.exit_code == 2
    assert "missing.txt does not exist" in result.stderr
    assert openai_server.requests == []


def test_an_empty_context_file_exits_2(cli, openai_server, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = cli(*run_args(openai_server, empty))
    assert result.exit_code == 2
    assert "is empty" in result.stderr


def test_without_a_model_it_uses_the_local_default_or_names_its_install_command(
    cli, context_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("CONCH_HOME", str(tmp_path / "empty-home"))  # no weights pulled here
    result = cli("run", "--context", str(context_file), "q")
    assert result.exit_code == 4
    if importlib.util.find_spec("llama_cpp") is None:
        assert "pip install 'conch[local]'" in result.stderr
    else:
        assert "conch models pull qwen2.5-coder-1.5b" in result.stderr


def test_a_base_url_without_a_model_is_bad_input(cli, openai_server):
    result = cli("run", "--base-url", openai_server.base_url, "q")
    assert result.exit_code == 2
    assert "--base-url needs --model NAME" in result.stderr


@pytest.mark.parametrize("transport", ["sdk", "httpx", "aiohttp"])
def test_run_sends_through_the_transport_it_is_given(cli, openai_server, context_file, transport):
    openai_server.replies = counting_errors
    result = cli(*run_args(openai_server, context_file, "--transport", transport))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "2 errors"
    # Only the official SDK sends its x-stainless-* headers; the lean transports do not.
    from_sdk = {"x-stainless-lang" in request.headers for request in openai_server.requests}
    assert from_sdk == {transport == "sdk"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--transport", "carrier-pigeon"], "unknown transport 'carrier-pigeon'"),
        (["--model", "local", "--transport", "aiohttp"], "apply to OpenAI-compatible models"),
    ],
)
def test_a_transport_that_does_not_fit_is_bad_input(
    cli, openai_server, context_file, args, message
):
    if "--model" in args:  # no --base-url: the model spec alone decides the provider
        argv = ["run", *args, "--context", str(context_file), "q"]
    else:
        argv = run_args(openai_server, context_file, *args)
    result = cli(*argv)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert not openai_server.requests


def test_a_provider_refusing_the_key_exits_4_naming_the_url(cli, openai_server, context_file):
    openai_server.api_key = "secret"
    result = cli(*run_args(openai_server, context_file))
    assert result.exit_code == 4
    assert openai_server.base_url in " ".join(result.stderr.split())


def test_running_out_of_iterations_without_an_answer_exits_3(cli, openai_server, context_file):
    def never_finishes(request):
        if "cannot run more code" in request.last_user_text:
            return Reply(content="")  # and no best answer either
        return "```repl\nx = 1\n```"

    openai_server.replies = never_finishes
    result = cli(*run_args(openai_server, context_file, "--max-iterations", "2"))
    assert result.exit_code == 3
    assert "max_iterations" in result.stderr


def test_running_out_of_money_without_an_answer_exits_3(cli, openai_server, context_file):
    openai_server.replies = lambda request: "```repl\nx = 1\n```"  # never answers
    args = run_args(openai_server, context_file, "--max-cost", "0.000001")
    args[args.index("test-model")] = "gpt-4o-mini"  # a model whose price conch knows
    result = cli(*args)
    assert result.exit_code == 3
    assert "the run ended with cost_budget" in result.stderr


def test_a_provider_that_hangs_is_bounded_by_max_time(cli, openai_server, context_file):
    openai_server.replies = lambda request: Reply.hanging(8)
    result = cli(*run_args(openai_server, context_file, "--max-time", "0.5"))
    assert result.exit_code == 3
    assert "the run ended with time_budget" in result.stderr


@pytest.mark.parametrize("flag", ["--max-cost", "--max-time"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_budget_that_is_not_a_positive_number_is_bad_input(
    cli, openai_server, context_file, flag, value
):
    result = cli(*run_args(openai_server, context_file, flag, value))
    assert result.exit_code == 2
    assert f"{flag} must be a positive number" in result.stderr
    assert not openai_server.requests


def test_sub_calls_go_to_the_sub_model(cli, openai_server, context_file):
    def replies(request):
        if request.messages[0]["role"] != "system":
            return "a sub-call's reply"
        if len(request.messages) == 2:
            return "```repl\nword = llm_query('one word?')\n```"
        return "```repl\nFINAL(word)\n```"

    openai_server.replies = replies
    result = cli(*run_args(openai_server, context_file, "--sub-model", "small-model"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "a sub-call's reply"
    models = {
        "root" if r.messages[0]["role"] == "system" else "sub": r.body["model"]
        for r in openai_server.requests
    }
    assert models == {"root": "test-model", "sub": "small-model"}


@pytest.mark.parametrize(("depth", "child_runs"), [(0, False), (1, True)])
def test_max_depth_decides_whether_rlm_query_starts_a_child_run(
    cli, openai_server, context_file, depth, child_runs
):
    def replies(request):
        system = request.messages[0]["content"] if request.messages[0]["role"] == "system" else ""
        if not system:
            return "plain"  # a plain sub-call, as rlm_query is at the depth limit
        if "rlm_query(context, query)" in system and "Query: inner" in request.last_user_text:
            return "```repl\nFINAL('child')\n```"  # the child run's root
        if len(request.messages) == 2:
            return "```repl\nsub = rlm_query('piece', 'inner')\nFINAL(sub)\n```"
        return "```repl\nFINAL('?')\n```"

    openai_server.replies = replies
    result = cli(*run_args(openai_server, context_file, "--max-depth", str(depth)))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ("child" if child_runs else "plain")


def test_trace_show_nests_a_child_run_under_its_parent(cli, openai_server, context_file, tmp_path):
    def replies(request):
        if "Query: inner" in request.last_user_text:
            return "```repl\nFINAL('child')\n```"
        return "```repl\nsub = rlm_query('piece', 'inner')\nFINAL(sub)\n```"

    openai_server.replies = replies
    trace = tmp_path / "run.jsonl"
    assert cli(*run_args(openai_server, context_file, "--trace", str(trace))).exit_code == 0
    lines = cli("trace", "show", str(trace)).stdout.splitlines()
    finals = [line for line in lines if "final (FINAL): child" in line]
    assert len(finals) == 2  # the child's answer, then the root's (the same text)
    indent = [len(line) - len(line.lstrip(" │├└─")) for line in finals]
    assert indent[0] > indent[1]  # the child's lines sit deeper than the root's


def test_trace_show_prints_the_run_as_a_tree(cli, openai_server, context_file, tmp_path):
    openai_server.replies = counting_errors
    trace = tmp_path / "run.jsonl"
    assert cli(*run_args(openai_server, context_file, "--trace", str(trace))).exit_code == 0
    shown = cli("trace", "show", str(trace))
    assert shown.exit_code == 0
    assert "iteration 1" in shown.stdout and "iteration 2" in shown.stdout
    assert "final (FINAL): 2 errors" in shown.stdout
    assert "end: final after 2 iterations" in shown.stdout


def test_trace_show_of_a_missing_file_exits_2(cli, tmp_path):
    result = cli("trace", "show", str(tmp_path / "none.jsonl"))
    assert result.exit_code == 2


@pytest.fixture
def git_thesaurus(tmp_path):
    path = tmp_path / "thesaurus.json"
    terms = {"git": "git", "push": "push", "commit": "commit", "print": "print"}
    data = {term: {"id": i, "nterm": concept} for i, (term, concept) in enumerate(terms.items())}
    path.write_text(json.dumps({"name": "git", "data": data}))
    return path


def test_with_a_thesaurus_cells_outside_the_domain_are_blocked_and_then_rejected(
    cli, openai_server, context_file, git_thesaurus
):
    openai_server.replies = lambda request: "```repl\nfrobnicate = wibble(context)\n```"
    result = cli(*run_args(openai_server, context_file, "--thesaurus", str(git_thesaurus)))
    # stdin is not a terminal here, so the escalation after the third block rejects the cell.
    assert result.exit_code == 3
    assert "the run ended with validation_rejected" in result.stderr
    assert "escalation rejected it" in result.stderr


def test_permissive_strictness_reports_but_runs_the_same_cells(
    cli, openai_server, context_file, git_thesaurus
):
    def replies(request):
        if len(request.messages) == 2:
            return "```repl\nfrobnicate = 'ran'\n```"
        return "```repl\nFINAL(frobnicate)\n```"

    openai_server.replies = replies
    args = ["--thesaurus", str(git_thesaurus), "--strictness", "permissive"]
    result = cli(*run_args(openai_server, context_file, *args))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ran"


def test_strictness_without_a_thesaurus_is_bad_input(cli, openai_server, context_file):
    result = cli(*run_args(openai_server, context_file, "--strictness", "strict"))
    assert result.exit_code == 2
    assert "--strictness needs --thesaurus" in result.stderr


def test_a_missing_thesaurus_is_bad_input(cli, openai_server, context_file, tmp_path):
    missing = tmp_path / "nope.json"
    result = cli(*run_args(openai_server, context_file, "--thesaurus", str(missing)))
    assert result.exit_code == 2
    assert "nope.json" in result.stderr
