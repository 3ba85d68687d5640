"""``conch run``: answer a query about a context with a recursive language model.

The answer goes to stdout (``--json``: the whole result object); a live progress view
(iterations, sub-calls, tokens, cost) goes to stderr. Exit codes: 0 answered, 2 bad input,
3 a budget or limit ran out without an answer, 4 model or provider error.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from conch.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_MODEL_ERROR,
    BaseUrlOption,
    ModelOption,
    SandboxOption,
    TransportOption,
    build_model,
    fail,
    model_spec,
)
from conch.errors import ConfigurationError, ModelError, SandboxUnavailableError, StoreError
from conch.trace import JsonlTraceSink, MultiSink, RecordType, TraceRecord, TraceSink

EXIT_ANSWERED = 0
EXIT_NO_ANSWER = 3


def run_command(
    query: Annotated[str, typer.Argument(help="The question to answer about the context.")],
    context: Annotated[
        str | None,
        typer.Option("--context", "-c", help="A file or directory, or '-' for stdin."),
    ] = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    transport: TransportOption = None,
    sub_model: Annotated[
        str | None, typer.Option("--sub-model", help="Model for sub-calls (default: --model).")
    ] = None,
    sandbox: SandboxOption = "best",
    max_depth: Annotated[int, typer.Option("--max-depth", min=0)] = 1,
    max_iterations: Annotated[int, typer.Option("--max-iterations", min=1)] = 30,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Budget in USD for the whole run.")
    ] = None,
    max_time: Annotated[
        float | None,
        typer.Option(
            "--max-time",
            help="Seconds the whole run may take (model calls, cells and sub-calls); "
            "also what bounds a provider that hangs.",
        ),
    ] = None,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="Append the run's trace (JSONL) here.")
    ] = None,
    thesaurus: Annotated[
        Path | None,
        typer.Option(
            "--thesaurus",
            help="Validate every cell against this knowledge graph first (see conch kg build).",
        ),
    ] = None,
    strictness: Annotated[
        str | None,
        typer.Option(
            "--strictness", help="With --thesaurus: permissive, normal (default) or strict."
        ),
    ] = None,
    session: Annotated[
        str | None,
        typer.Option(
            "--session",
            help="Continue (or start) this durable session: its REPL variables, context and "
            "earlier answers carry over (see conch session).",
        ),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store", help="With --session: the SQLite session store file.", envvar="CONCH_STORE"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Answer QUERY about a context by letting a model write code against it in a sandbox."""
    from conch.rlm import RLM, Budget
    from conch.validate import terminal_escalation

    errors = Console(stderr=True)
    model = model_spec(model, base_url, errors)
    staged: Path | None = None
    try:
        if context == "-":
            staged = _stage_stdin()
            context_value: Path | None = staged
        else:
            context_value = Path(context) if context is not None else None
        for flag, value in (("--max-cost", max_cost), ("--max-time", max_time)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{flag} must be a positive number, not {value}")
        validator = _build_validator(thesaurus, strictness)
        root_model = build_model(model, base_url, transport)
        child_model = build_model(sub_model, base_url, transport) if sub_model else None
        progress = _Progress(errors)
        sink: TraceSink = progress
        if trace is not None:
            sink = MultiSink([JsonlTraceSink(trace), progress])
        # Asks on the terminal after repeated blocks; rejects when stdin is not a terminal.
        escalate = terminal_escalation if validator is not None else None
        if store is not None and session is None:
            raise ConfigurationError("--store needs --session NAME: the session to continue")
        if session is not None:
            with progress.live():
                result = asyncio.run(
                    session_turn(
                        session,
                        store or default_store_path(),
                        query,
                        context_value,
                        root_model,
                        child_model,
                        sandbox=sandbox,
                        max_depth=max_depth,
                        max_iterations=max_iterations,
                        max_cost=max_cost,
                        max_time=max_time,
                        sink=sink,
                        validator=validator,
                        escalate=escalate,
                    )
                )
        else:
            rlm = RLM(
                root_model,
                child_model,
                sandbox=sandbox,
                max_depth=max_depth,
                max_iterations=max_iterations,
                budget=Budget(max_cost_usd=max_cost, max_time_s=max_time),
                trace=sink,
                validator=validator,
                escalate=escalate,
            )
            with progress.live():
                result = asyncio.run(
                    _closing_models(rlm.acompletion(context_value, query), root_model, child_model)
                )
        sink.close()
    except (ConfigurationError, SandboxUnavailableError, StoreError) as error:
        fail(errors, str(error), EXIT_BAD_INPUT)
    except ModelError as error:
        fail(errors, str(error), EXIT_MODEL_ERROR)
    except KeyboardInterrupt:
        fail(errors, "cancelled", 130)
    finally:
        if staged is not None:
            shutil.rmtree(staged.parent, ignore_errors=True)

    payload = result.to_dict()
    if trace is not None:
        payload["trace_path"] = str(trace)
    if session is not None:
        errors.print(
            Text(f"session {session} · node {payload['node_id']}", style="dim"), soft_wrap=True
        )
    if as_json:
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    elif result.answer is not None:
        typer.echo(result.answer)
    if result.answer is not None:
        raise typer.Exit(EXIT_ANSWERED)
    reason = str(result.termination_reason)
    message = f"no answer: the run ended with {reason}" + (
        f" ({result.error})" if result.error else ""
    )
    code = EXIT_MODEL_ERROR if reason == "model_error" else EXIT_NO_ANSWER
    fail(errors, message, code)


def default_store_path() -> Path:
    """Where ``--session`` keeps sessions unless ``--store`` says otherwise."""
    from conch._home import conch_home

    return conch_home() / "sessions.db"


async def session_turn(
    session_id: str,
    store_path: Path,
    query: str,
    context: Path | None,
    model,
    sub_model,
    *,
    sandbox: str,
    max_depth: int,
    max_iterations: int,
    max_cost: float | None,
    max_time: float | None,
    sink: TraceSink,
    validator,
    escalate,
) -> _TurnPayload:
    """One turn of a durable session, with the session's REPL restored first."""
    from conch.runtime import Runtime, RuntimeEnvironment, TerminationPolicy
    from conch.store import SqliteSessionStore

    termination = TerminationPolicy(
        max_iterations=max_iterations, max_cost_usd=max_cost, max_time_s=max_time
    )
    environment = RuntimeEnvironment(termination=termination, trace_sink=sink)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = await SqliteSessionStore.open(store_path)
    try:
        async with await Runtime.open(
            environment,
            session_id,
            model=model,
            sub_model=sub_model,
            sandbox=sandbox,
            store=store,
            snapshot_dir=store_path.parent / "snapshots",
            max_depth=max_depth,
            validator=validator,
            escalate=escalate,
            # One owner per user and host: a run that was killed is taken over at once by
            # the user's next run (which fences out anything the dead one left).
            owner=f"conch-cli:{getpass.getuser()}@{socket.gethostname()}",
        ) as runtime:
            turn = await runtime.turn(query, context)
    finally:
        await store.close()
        await _close(model, sub_model)
    return _TurnPayload(session_id, turn)


async def _closing_models(work, *models):
    """Await ``work``, then close the models, in the loop their connections belong to."""
    try:
        return await work
    finally:
        await _close(*models)


async def _close(*models) -> None:
    for model in models:
        if model is not None:
            await model.aclose()


class _TurnPayload:
    """A session turn's result, shaped like ``RLMResult`` for the printing code."""

    def __init__(self, session_id: str, turn) -> None:
        self.turn = turn
        self.answer = turn.answer if not turn.failed else None
        self.termination_reason = turn.termination_reason
        self.error = turn.error
        self.session_id = session_id

    def to_dict(self) -> dict:
        turn = self.turn
        return {
            "answer": turn.answer,
            "answered": not turn.failed,
            "termination_reason": turn.termination_reason,
            "session": self.session_id,
            "node_id": turn.node_id,
            "turn_key": turn.turn_key,
            "snapshot_id": turn.snapshot_id,
            "iterations": turn.iterations,
            "usage": {
                "input_tokens": turn.usage.input_tokens,
                "output_tokens": turn.usage.output_tokens,
                "total_tokens": turn.usage.total_tokens,
            },
            "cost_usd": turn.cost_usd,
            "duration_s": turn.duration_s,
            "error": turn.error,
        }


def _build_validator(thesaurus: Path | None, strictness: str | None):
    if thesaurus is None:
        if strictness is not None:
            raise ConfigurationError("--strictness needs --thesaurus FILE to validate against")
        return None
    from conch.validate import KnowledgeGraphValidator

    return KnowledgeGraphValidator(thesaurus, strictness or "normal")


def _stage_stdin() -> Path:
    """Stdin into a temporary file, in chunks, so any size streams into the sandbox."""
    directory = Path(tempfile.mkdtemp(prefix="conch-stdin-"))
    target = directory / "stdin.txt"
    with open(target, "wb") as file:
        shutil.copyfileobj(sys.stdin.buffer, file, 1 << 20)
    if target.stat().st_size == 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise ConfigurationError("stdin was empty; pipe the context in, or use --context PATH")
    return target


class _Progress:
    """A trace sink that keeps running totals and shows them live on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.Lock()
        self.iterations = 0
        self.model_calls = 0
        self.sub_calls = 0
        self.child_runs = 0
        self.tokens = 0
        self.cost = 0.0
        self.last = "starting"
        self._root_run: str | None = None
        self._live: Live | None = None

    def live(self) -> Live | _SummaryOnExit:
        if not self.console.is_terminal or os.environ.get("CONCH_NO_PROGRESS"):
            return _SummaryOnExit(self)  # not a terminal: no redraws, one line at the end
        self._live = Live(self._render(), console=self.console, auto_refresh=False)
        return self._live

    def emit(self, record: TraceRecord) -> None:
        data = record.data
        with self._lock:
            if self._root_run is None and record.type == RecordType.RUN_START:
                self._root_run = record.run_id  # the first run is the root; children follow
            if record.type == RecordType.MODEL_CALL:
                self.model_calls += 1
                usage = data.get("usage", {})
                self.tokens += usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
                self.cost += data.get("cost_usd", 0.0)
                if record.run_id == self._root_run:
                    self.iterations = max(self.iterations, data.get("iteration", 0))
                self.last = "model replied"
            elif record.type == RecordType.SUB_CALL:
                self.sub_calls += 1
                usage = data.get("usage", {})
                self.tokens += usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
                self.cost += data.get("cost_usd", 0.0)
                if data.get("kind") == "rlm_query":
                    self.child_runs += 1
            elif record.type == RecordType.CODE_CELL and self.last != "answered":
                self.last = f"ran cell ({data.get('duration_ms', 0):.0f} ms)"
            elif record.type == RecordType.FINAL:
                self.last = "answered"
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def close(self) -> None:
        pass

    def _render(self) -> Text:
        return Text(
            f"iterations {self.iterations} · model calls {self.model_calls} · "
            f"sub-calls {self.sub_calls} · child runs {self.child_runs} · "
            f"tokens {self.tokens:,} · cost ${self.cost:.4f} · {self.last}",
            style="dim",
        )


class _SummaryOnExit:
    def __init__(self, progress: _Progress) -> None:
        self.progress = progress

    def __enter__(self) -> _SummaryOnExit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.console.print(self.progress._render(), soft_wrap=True)
