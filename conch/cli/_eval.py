"""``conch eval ...``: quality benchmarks run from the command line (``sniah`` for now).

The summary table goes to stdout (``--json``: the summary, settings and records as one JSON
object), progress to stderr, one JSON line per finished task to ``--out``.
Exit codes: 0 the benchmark ran (whatever its score), 2 bad input, 4 model error.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from conch.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_MODEL_ERROR,
    BaseUrlOption,
    ModelOption,
    SandboxOption,
    build_model,
    fail,
    model_spec,
)
from conch.errors import ConfigurationError, ModelError, SandboxUnavailableError

app = typer.Typer(
    help="Quality benchmarks: run conch's RLM on generated tasks and score the answers.",
    no_args_is_help=True,
)


@app.command("sniah")
def sniah_command(
    n: Annotated[int, typer.Option("--n", min=1, help="How many tasks.")] = 20,
    length: Annotated[
        int, typer.Option("--length", min=1_000, help="Characters of each task's context.")
    ] = 100_000,
    seed: Annotated[int, typer.Option("--seed", help="Tasks come from this seed.")] = 0,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    variants: Annotated[
        str,
        typer.Option(help="Comma-separated: number, uuid, distractors (task i takes the i-th)."),
    ] = "number,uuid,distractors",
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline/--no-baseline",
            help="Also ask the model directly, the context cut to its window (no RLM).",
        ),
    ] = False,
    baseline_window: Annotated[
        int | None,
        typer.Option(
            "--baseline-window",
            min=512,
            help="The baseline's window in tokens (default: the local model's, else 8192).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write one JSON line per finished task here.")
    ] = None,
    trace_dir: Annotated[
        Path | None, typer.Option("--trace-dir", help="Write each RLM task's trace here.")
    ] = None,
    sandbox: SandboxOption = "best",
    max_iterations: Annotated[int, typer.Option("--max-iterations", min=1)] = 10,
    task_timeout: Annotated[
        float, typer.Option("--task-timeout", min=1, help="Seconds each RLM task may take.")
    ] = 600.0,
    max_output_chars: Annotated[
        int,
        typer.Option("--max-output-chars", min=100, help="Cell output the model sees per turn."),
    ] = 4_000,
    temperature: Annotated[float, typer.Option(min=0)] = 0.0,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=16, help="Per model call.")
    ] = 1_024,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """RULER-style needle-in-a-haystack: find one planted value in N generated contexts."""
    from conch.bench import sniah

    errors = Console(stderr=True)
    model = model_spec(model, base_url, errors)
    chosen = tuple(v.strip() for v in variants.split(",") if v.strip())
    settings = sniah.SniahSettings(
        sandbox=sandbox,
        max_iterations=max_iterations,
        max_time_s=task_timeout,
        max_output_chars=max_output_chars,
        temperature=temperature,
        max_tokens=max_tokens,
        baseline=baseline,
        baseline_window_tokens=baseline_window,
        trace_dir=trace_dir,
    )
    results_file = None
    try:
        unknown = [v for v in chosen if v not in sniah.VARIANTS]
        if unknown or not chosen:
            raise ConfigurationError(
                f"unknown variant(s) {', '.join(unknown) or '(none given)'}; "
                f"use a comma-separated list of {', '.join(sniah.VARIANTS)}"
            )
        tasks = sniah.generate_tasks(n, length=length, seed=seed, variants=chosen)
        lm = build_model(model, base_url)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            results_file = open(out, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        progress = _Progress(errors, len(tasks), results_file)

        async def preflight_then_run() -> list[dict[str, Any]]:
            # One tiny request first, so a wrong URL, key or model fails before any task.
            await lm.complete([{"role": "user", "content": "Reply with OK."}], max_tokens=2)
            return await sniah.run_sniah(
                tasks, lm, settings, on_start=progress.start, on_record=progress.record
            )

        records = asyncio.run(preflight_then_run())
    except (ConfigurationError, SandboxUnavailableError, OSError) as error:
        fail(errors, str(error), EXIT_BAD_INPUT)
    except ModelError as error:
        fail(errors, str(error), EXIT_MODEL_ERROR)
    except KeyboardInterrupt:
        fail(errors, "cancelled" + (f"; finished tasks are in {out}" if out else ""), 130)
    finally:
        if results_file is not None:
            results_file.close()

    summary = sniah.summarize(records)
    config = {
        "benchmark": "sniah",
        "n": n,
        "length": length,
        "seed": seed,
        "variants": list(chosen),
        "model": lm.model,
        "base_url": base_url,
        "sandbox": sandbox,
        "max_iterations": max_iterations,
        "task_timeout_s": task_timeout,
        "max_output_chars": max_output_chars,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "baseline": baseline,
    }
    if as_json:
        payload = {"config": config, "summary": summary, "records": records}
        if out is not None:
            payload["out"] = str(out)
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    Console(soft_wrap=True).print(_report(config, summary))
    if out is not None:
        errors.print(f"per-task results: {out}", soft_wrap=True)


def _report(config: dict[str, Any], summary: dict[str, dict[str, Any]]) -> Group:
    """The summary table, then per system its accuracy by variant and termination reasons."""
    title = (
        f"S-NIAH · {config['n']} tasks · {config['length']:,} characters · seed "
        f"{config['seed']} · {config['model']}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("system")
    table.add_column("exact match", justify="right")
    table.add_column("contains", justify="right")
    table.add_column("mean iterations", justify="right")
    table.add_column("mean tokens", justify="right")
    table.add_column("mean time", justify="right")
    lines = []
    for system, figures in summary.items():
        name = _SYSTEM_NAMES.get(system, system)
        iterations = figures["mean_iterations"]
        table.add_row(
            name,
            f"{figures['accuracy']:.0%} ({figures['correct']}/{figures['tasks']})",
            f"{figures['contains_accuracy']:.0%}",
            "–" if iterations is None else f"{iterations:.1f}",
            f"{figures['mean_tokens']:,.0f}",
            f"{figures['mean_seconds']:.1f} s",
        )
        by_variant = figures["by_variant"]
        variants = ", ".join(
            f"{v} {by_variant[v]['correct']}/{by_variant[v]['tasks']}"
            for v in config["variants"]
            if v in by_variant
        )
        reasons = ", ".join(f"{r} {c}" for r, c in figures["termination_reasons"].items())
        label = name + _SYSTEM_NOTES.get(system, "")
        line = f"{label}: by variant {variants}; termination reasons {reasons}"
        if "needle_in_window" in figures:
            line += f"; needle inside the window {figures['needle_in_window']}/{figures['tasks']}"
        lines.append(Text(line))
    return Group(table, *lines)


_SYSTEM_NAMES = {"rlm": "RLM", "baseline": "no RLM"}
_SYSTEM_NOTES = {"baseline": " (the model asked directly, the context cut to its window)"}


class _Progress:
    """One line per finished task on stderr, and its record appended to the results file."""

    def __init__(self, console: Console, total: int, results_file: Any) -> None:
        self.console = console
        self.total = total
        self.results_file = results_file
        self.done = {"rlm": 0, "baseline": 0}
        self.correct = {"rlm": 0, "baseline": 0}
        self.quiet = bool(os.environ.get("CONCH_NO_PROGRESS"))

    def start(self, task: Any, system: str) -> None:
        if not self.quiet:
            self.console.print(
                Text(f"[{task.index + 1}/{self.total}] {task.task_id} {system} …", style="dim"),
                soft_wrap=True,
            )

    def record(self, record: dict[str, Any]) -> None:
        if self.results_file is not None:
            self.results_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.results_file.flush()
        system = record["system"]
        self.done[system] = self.done.get(system, 0) + 1
        self.correct[system] = self.correct.get(system, 0) + bool(record["correct"])
        verdict = "correct" if record["correct"] else f"wrong ({_short(record['answer'])})"
        iterations = record.get("iterations")
        self.console.print(
            f"[{record['index'] + 1}/{self.total}] {record['task_id']} {system} "
            f"{record['variant']} depth {record['depth']:.2f}: {verdict}; "
            + (f"{iterations} iterations, " if iterations is not None else "")
            + f"{record['tokens']:,} tokens, {record['seconds']:.1f} s, "
            f"{record['termination_reason']}; {system} so far "
            f"{self.correct[system]}/{self.done[system]}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )


def _short(answer: str | None, limit: int = 60) -> str:
    if answer is None:
        return "no answer"
    text = " ".join(answer.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")
