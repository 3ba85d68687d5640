"""``conch kg build`` and ``conch kg check``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conch.cli import app


@pytest.fixture
def thesaurus_file(kg_dir, tmp_path):
    path = tmp_path / "kg.json"
    result = CliRunner().invoke(app, ["kg", "build", str(kg_dir), "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_build_writes_a_loadable_thesaurus(thesaurus_file):
    document = json.loads(thesaurus_file.read_text())
    assert document["data"]["kubectl"]["nterm"] == "kubernetes"
    assert ["git", "push"] in document["role_graph"]["edges"]


@pytest.mark.parametrize(("text", "exit_code"), [("kubectl get", 0), ("curl get", 1)])
def test_check_exit_code_says_passed_or_blocked(thesaurus_file, text, exit_code):
    result = CliRunner().invoke(
        app, ["kg", "check", "--thesaurus", str(thesaurus_file), "--kind", "command", text]
    )
    assert result.exit_code == exit_code, result.output


def test_check_json_output(thesaurus_file):
    result = CliRunner().invoke(
        app,
        [
            "kg",
            "check",
            "-t",
            str(thesaurus_file),
            "--json",
            "--strictness",
            "strict",
            "dokcer run",
        ],
    )
    report = json.loads(result.stdout)
    assert report["passed"] is False
    assert report["suggestions"]["dokcer"][0] == "docker"


def test_check_reads_standard_input_for_a_dash(thesaurus_file):
    result = CliRunner().invoke(
        app, ["kg", "check", "-t", str(thesaurus_file), "-"], input="import pandas as pd\n"
    )
    assert result.exit_code == 0, result.output
    assert "pandas -> pandas" in result.stdout


@pytest.mark.parametrize(
    "arguments",
    [["--thesaurus", "/no/such/file.json", "git"], ["--strictness", "paranoid", "git"]],
)
def test_check_bad_input_exits_2_with_a_message(thesaurus_file, arguments):
    if "--thesaurus" not in arguments:
        arguments = ["--thesaurus", str(thesaurus_file), *arguments]
    result = CliRunner().invoke(app, ["kg", "check", *arguments])
    assert result.exit_code == 2
    assert "error:" in result.output


def test_build_of_a_missing_directory_exits_2(tmp_path):
    result = CliRunner().invoke(
        app, ["kg", "build", str(tmp_path / "nope"), "-o", str(tmp_path / "x.json")]
    )
    assert result.exit_code == 2
    assert "not a directory" in result.output


def test_check_with_a_thesaurus_nested_too_deeply_exits_2_without_a_traceback(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = CliRunner().invoke(app, ["kg", "check", "--thesaurus", str(deep), "git"])
    assert result.exit_code == 2
    assert "too deeply" in result.output and str(deep) in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
