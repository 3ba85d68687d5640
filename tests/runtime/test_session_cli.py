"""``conch run --session`` and ``conch session``, each command a real process.

Every ``conch`` here is its own process, so a session that continues from one command to
the next has survived a process restart; the model is a loopback OpenAI-compatible server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conch.testing import OpenAIServer


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


class Conch:
    """Runs ``conch`` commands as subprocesses against one store and one model server."""

    def __init__(self, home: Path, server: OpenAIServer) -> None:
        self.home = home
        self.server = server
        self.env = {**os.environ, "CONCH_HOME": str(home), "CONCH_NO_PROGRESS": "1"}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "conch", *args]

    def run_args(self, session: str, query: str, *extra: str) -> list[str]:
        return self.argv(
            "run",
            "--session",
            session,
            "--base-url",
            self.server.base_url,
            "--model",
            "test-model",
            "--sandbox",
            "local",
            *extra,
            query,
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, timeout=120
        )

    def turn(self, session: str, query: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.run_args(session, query, *extra),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def log(self, session: str) -> list[dict]:
        done = self("session", "log", session, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def conch(tmp_path: Path) -> Conch:
    with OpenAIServer() as server:
        yield Conch(tmp_path / "home", server)


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("ERROR disk full\nok\nERROR fan\n")
    return path


def test_a_session_continues_across_processes_with_its_variables(conch: Conch, notes) -> None:
    conch.server.replies = [
        repl("errors = [l for l in context.splitlines() if 'ERROR' in l]\nFINAL(len(errors))"),
        repl("FINAL(errors[-1])"),
    ]
    first = conch.turn("ops", "How many errors?", "--context", str(notes))
    second = conch.turn("ops", "Which error came last?")  # a new process, no --context

    assert (first.returncode, first.stdout) == (0, "2\n"), first.stderr
    assert (second.returncode, second.stdout) == (0, "ERROR fan\n"), second.stderr
    answers = [n["payload"]["answer"] for n in conch.log("ops") if n["kind"] == "answer"]
    assert answers == ["2", "ERROR fan"]
    listed = json.loads(conch("session", "list", "--json").stdout)
    assert [(row["session"], row["turns"]) for row in listed] == [("ops", 2)]


def test_rewind_makes_the_next_run_continue_from_that_turn(conch: Conch) -> None:
    conch.server.replies = [
        repl("step = 'one'\nFINAL(step)"),
        repl("step = 'two'\nFINAL(step)"),
        repl("FINAL(step)"),
    ]
    assert conch.turn("s", "first").returncode == 0
    assert conch.turn("s", "second").returncode == 0
    first_answer = next(n for n in conch.log("s") if n["kind"] == "answer")

    moved = conch("session", "rewind", "s", first_answer["id"][-10:], "--json")
    third = conch.turn("s", "what is step?")

    assert moved.returncode == 0, moved.stderr
    report = json.loads(moved.stdout)
    assert report["leaf_node_id"] == first_answer["id"] and report["orphaned_nodes"] > 0
    assert third.stdout == "one\n", third.stderr


def test_session_log_prints_the_active_path_for_people(conch: Conch) -> None:
    conch.server.replies = [repl("print('looking')"), repl("FINAL('found it')")]
    assert conch.turn("s", "find it").returncode == 0

    shown = conch("session", "log", "s")

    assert shown.returncode == 0, shown.stderr
    for expected in ("user", "find it", "code", "print('looking')", "output", "answer", "found it"):
        assert expected in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("session", "log", "nobody"), "no session store"),
        (("session", "rewind", "nobody", "abc"), "no session store"),
    ],
)
def test_reading_a_missing_store_says_how_to_make_one(conch: Conch, args, message) -> None:
    done = conch(*args)
    assert done.returncode == 2 and message in done.stderr


def test_rewinding_to_an_unknown_node_changes_nothing(conch: Conch) -> None:
    conch.server.replies = [repl("FINAL(1)")]
    assert conch.turn("s", "q").returncode == 0
    before = conch.log("s")

    done = conch("session", "rewind", "s", "not-a-node")

    assert done.returncode == 2 and "no live node" in done.stderr
    assert conch.log("s") == before


def test_a_store_that_is_not_a_database_is_refused_untouched(conch: Conch) -> None:
    conch.home.mkdir(parents=True)
    store = conch.home / "sessions.db"
    store.write_bytes(b"this is not sqlite" * 100)

    done = conch.turn("s", "q")

    assert done.returncode == 2 and "sessions.db" in done.stderr
    assert store.read_bytes() == b"this is not sqlite" * 100


def test_kill_9_in_the_middle_of_a_turn_leaves_the_last_commit_intact(
    conch: Conch, tmp_path: Path
) -> None:
    started = tmp_path / "cell-started"
    conch.server.replies = [
        repl("FINAL('committed')"),
        repl(f"open({str(started)!r}, 'w').close()\nimport time\ntime.sleep(30)"),
        repl("FINAL('after the crash')"),
    ]
    assert conch.turn("s", "first").returncode == 0
    committed = conch.log("s")

    victim = subprocess.Popen(
        conch.run_args("s", "second"),
        env=conch.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the second turn's cell never ran"
        os.killpg(victim.pid, signal.SIGKILL)  # conch and its sandbox worker, mid-cell
    finally:
        victim.wait(timeout=30)

    assert conch.log("s") == committed  # no partial turn is visible
    after = conch.turn("s", "third")  # the same user's next run takes the session over
    assert (after.returncode, after.stdout) == (0, "after the crash\n"), after.stderr
