"""``conch run``: answer a query about a context with a recursive language model.

The answer goes to stdout (``--json``: the whole result object); a live progress view
(iterations, sub-calls, tokens, cost) goes to stderr. Exit codes: 0 answered, 2 bad input,
3 a budget or limit ran out without an answer, 4 model or provider error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from conch.errors import ConfigurationError, ModelError, SandboxUnavailableError
from conch.trace import JsonlTraceSink, MultiSink, RecordType, TraceRecord, TraceSink

EXIT_ANSWERED = 0
EXIT_BAD_INPUT = 2
EXIT_NO_ANSWER = 3
EXIT_MODEL_ERROR = 4


def run_command(
    query: Annotated[str, typer.Argument(help="The question to answer about the context.")],
    context: Annotated[
        str | None,
        typer.Option("--context", "-c", help="A file or directory, or '-' for stdin."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="NAME with --base-url, or provider:NAME (openai:, anthropic:, local:). "
            "Default: the embedded local model."
        ),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="An OpenAI-compatible API root (…/v1).")
    ] = None,
    sub_model: Annotated[
        str | None, typer.Option("--sub-model", help="Model for sub-calls (default: --model).")
    ] = None,
    sandbox: Annotated[str, typer.Option(help="Sandbox backend: best, bwrap, local.")] = "best",
    max_depth: Annotated[int, typer.Option("--max-depth", min=0)] = 1,
    max_iterations: Annotated[int, typer.Option("--max-iterations", min=1)] = 30,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Budget in USD for the whole run.")
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Answer QUERY about a context by letting a model write code against it in a sandbox."""
    from conch.rlm import RLM, Budget
    from conch.validate import terminal_escalation

    errors = Console(stderr=True)
    if model is None and base_url is None:
        model = "local"  # the embedded default; if it is missing the error names the install
    elif model is None:
        _fail(errors, "--base-url needs --model NAME: the model that server serves", EXIT_BAD_INPUT)
    staged: Path | None = None
    try:
        if context == "-":
            staged = _stage_stdin()
            context_value: Path | None = staged
        else:
            context_value = Path(context) if context is not None else None
        if max_cost is not None and max_cost <= 0:
            raise ConfigurationError(f"--max-cost must be positive, not {max_cost}")
        validator = _build_validator(thesaurus, strictness)
        root_model = _build_model(model, base_url)
        child_model = _build_model(sub_model, base_url) if sub_model else None
        progress = _Progress(errors)
        sink: TraceSink = progress
        if trace is not None:
            sink = MultiSink([JsonlTraceSink(trace), progress])
        rlm = RLM(
            root_model,
            child_model,
            sandbox=sandbox,
            max_depth=max_depth,
            max_iterations=max_iterations,
            budget=Budget(max_cost_usd=max_cost),
            trace=sink,
            validator=validator,
            # Asks on the terminal after repeated blocks; rejects when stdin is not a terminal.
            escalate=terminal_escalation if validator is not None else None,
        )
        with progress.live():
            result = rlm.completion(context_value, query)
        sink.close()
    except (ConfigurationError, SandboxUnavailableError) as error:
        _fail(errors, str(error), EXIT_BAD_INPUT)
    except ModelError as error:
        _fail(errors, str(error), EXIT_MODEL_ERROR)
    except KeyboardInterrupt:
        _fail(errors, "cancelled", 130)
    finally:
        if staged is not None:
            shutil.rmtree(staged.parent, ignore_errors=True)

    payload = result.to_dict()
    if trace is not None:
        payload["trace_path"] = str(trace)
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
    _fail(errors, message, code)


def _build_validator(thesaurus: Path | None, strictness: str | None):
    if thesaurus is None:
        if strictness is not None:
            raise ConfigurationError("--strictness needs --thesaurus FILE to validate against")
        return None
    from conch.validate import KnowledgeGraphValidator

    return KnowledgeGraphValidator(thesaurus, strictness or "normal")


def _build_model(spec: str, base_url: str | None):
    from conch.lm import OpenAIModel, create_model

    if base_url:
        name = spec.removeprefix("openai:")
        return OpenAIModel(name, base_url=base_url)
    return create_model(spec)


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


def _fail(console: Console, message: str, code: int) -> None:
    console.print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code)


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
        self._live: Live | None = None

    def live(self) -> Live | _SummaryOnExit:
        if not self.console.is_terminal or os.environ.get("CONCH_NO_PROGRESS"):
            return _SummaryOnExit(self)  # not a terminal: no redraws, one line at the end
        self._live = Live(self._render(), console=self.console, auto_refresh=False)
        return self._live

    def emit(self, record: TraceRecord) -> None:
        data = record.data
        with self._lock:
            if record.type == RecordType.MODEL_CALL:
                self.model_calls += 1
                usage = data.get("usage", {})
                self.tokens += usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
                self.cost += data.get("cost_usd", 0.0)
                if record.parent_id is None:
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
