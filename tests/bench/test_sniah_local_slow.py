"""A real ``conch run`` with the local 0.5B model on a small needle document (slow).

It checks the protocol steps, not the answer: the model wrote a code cell that ran against
``context``, and the run ended with a termination reason. Skipped, with the reason, when
llama-cpp-python or the 0.5B weights are missing (``scripts/install-local-model.sh``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conch.bench.sniah import make_task
from conch.lm._weights import SMALL_LOCAL_MODEL, list_models
from conch.rlm import TerminationReason

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (scripts/install-local-model.sh installs it)"
    state = next(s for s in list_models() if s.name == SMALL_LOCAL_MODEL)
    if not state.verified:
        return f"the {SMALL_LOCAL_MODEL} weights are missing: conch models pull {SMALL_LOCAL_MODEL}"
    return None


@pytest.mark.timeout(3_600)  # a shared 2-core machine can read prompts at a few tokens/s
def test_conch_run_with_the_local_model_runs_code_against_the_context(tmp_path):
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    task = make_task(0, length=6_000, seed=1, variant="number")
    document = tmp_path / "needle.txt"
    document.write_text(task.context)
    trace = tmp_path / "run.jsonl"
    command = [
        sys.executable, "-c", "from conch.cli import main; main()", "run",
        "--model", f"local:{SMALL_LOCAL_MODEL}", "--sandbox", "local",
        "--max-iterations", "2", "--context", str(document), "--trace", str(trace),
        task.query,
    ]  # fmt: skip
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=3_300,
        env={**os.environ, "CONCH_NO_PROGRESS": "1"},
    )
    assert completed.returncode in (0, 3), completed.stderr  # answered, or a limit ran out
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    types = [record["type"] for record in records]
    assert types[0] == "run_start"
    cells = [r["data"] for r in records if r["type"] == "code_cell"]
    assert any("context" in cell["code"] and cell.get("exit_code") == 0 for cell in cells), cells
    (end,) = [r["data"] for r in records if r["type"] == "run_end"]
    assert end["termination_reason"] in {str(reason) for reason in TerminationReason}
    assert end["iterations"] >= 1
