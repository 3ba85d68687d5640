"""``conch trace show FILE``: a run's trace as a tree (runs, replies, cells, sub-calls)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from conch.trace import RecordType, TraceRecord, read_trace

app = typer.Typer(help="Read traces written by conch run --trace.", no_args_is_help=True)

_EXIT_BAD_INPUT = 2
_LINE = 100


@app.command()
def show(
    file: Annotated[Path, typer.Argument(help="A JSONL trace file.")],
    full: Annotated[bool, typer.Option(help="Show whole code and outputs, not one line.")] = False,
) -> None:
    """Print every run in FILE as a tree; child runs sit under the sub-call that started them."""
    console = Console()
    errors = Console(stderr=True)
    if not file.is_file():
        errors.print(f"[red]error:[/] no trace file at {escape(str(file))}")
        raise typer.Exit(_EXIT_BAD_INPUT)
    log = read_trace(file)
    for bad in log.bad_lines:
        errors.print(f"[yellow]skipped line {bad.line_number}:[/] {escape(bad.reason)}")
    if log.torn_tail is not None:
        errors.print(f"[yellow]the last line is unfinished[/] ({escape(log.torn_tail.reason)})")
    runs = _group_runs(log.records)
    if not runs:
        errors.print(f"[red]error:[/] {escape(str(file))} holds no run records")
        raise typer.Exit(_EXIT_BAD_INPUT)
    roots = [run_id for run_id, run in runs.items() if run["parent_run"] not in runs]
    for run_id in roots:
        console.print(_run_tree(run_id, runs, full))


def _group_runs(records: list[TraceRecord]) -> dict[str, dict[str, Any]]:
    """Records by run, in file order, and which run each run was started from."""
    runs: dict[str, dict[str, Any]] = {}
    span_owner: dict[str, str] = {}
    grouped: dict[str, list[TraceRecord]] = defaultdict(list)
    for record in records:
        grouped[record.run_id].append(record)
        if record.type == RecordType.RUN_START:
            span_owner[record.span_id] = record.run_id
    for run_id, run_records in grouped.items():
        start = next((r for r in run_records if r.type == RecordType.RUN_START), None)
        parent = span_owner.get(start.parent_id) if start and start.parent_id else None
        runs[run_id] = {"records": run_records, "parent_run": parent}
    return runs


def _run_tree(run_id: str, runs: dict[str, dict[str, Any]], full: bool) -> Tree:
    records = runs[run_id]["records"]
    start = next((r for r in records if r.type == RecordType.RUN_START), None)
    title = f"[bold]run {run_id}[/]"
    if start is not None:
        data = start.data
        title += (
            f" depth {data.get('depth', '?')} · {escape(str(data.get('model', '?')))} · "
            f"{escape(_one_line(str(data.get('query', '')), full))}"
        )
    tree = Tree(title)
    iteration_nodes: dict[int, Tree] = {}
    for record in records:
        data = record.data
        iteration = data.get("iteration")
        parent = iteration_nodes.get(iteration, tree) if iteration is not None else tree
        if record.type == RecordType.MODEL_CALL:
            usage = data.get("usage", {})
            label = "best answer" if data.get("kind") == "best_answer" else f"iteration {iteration}"
            node = tree.add(
                f"[cyan]{label}[/] · {usage.get('input_tokens', 0):,} in / "
                f"{usage.get('output_tokens', 0):,} out tokens · ${data.get('cost_usd', 0):.4f}"
                f" · {data.get('latency_s', 0):.2f} s"
            )
            node.add(f"reply: {escape(_one_line(str(data.get('reply', '')), full))}")
            if iteration is not None:
                iteration_nodes[iteration] = node
        elif record.type == RecordType.CODE_CELL:
            status = "blocked" if data.get("blocked") else f"exit {data.get('exit_code', '?')}"
            if data.get("timed_out"):
                status += ", timed out"
            code = escape(_one_line(data.get("code", ""), full))
            cell = parent.add(
                f"[green]cell {data.get('index')}[/] ({status}, "
                f"{data.get('duration_ms', 0):.0f} ms): {code}"
            )
            cell.add(f"output: {escape(_one_line(str(data.get('output', '')), full))}")
        elif record.type == RecordType.SUB_CALL:
            kind = data.get("kind", "sub_call")
            node = (iteration_nodes[max(iteration_nodes)] if iteration_nodes else tree).add(
                f"[magenta]{escape(kind)}[/] {escape(_sub_call_summary(data, full))}"
            )
            child = data.get("child_run_id")
            if child in runs:
                node.add(_run_tree(child, runs, full))
        elif record.type == RecordType.FINAL:
            tree.add(
                f"[bold green]final[/] ({escape(str(data.get('source')))}): "
                f"{escape(_one_line(str(data.get('answer', '')), full))}"
            )
        elif record.type == RecordType.RUN_END:
            usage = data.get("tree_usage", {})
            tokens = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
            error = f" · {escape(str(data['error']))}" if data.get("error") else ""
            tree.add(
                f"[bold]end[/]: {escape(str(data.get('termination_reason')))} after "
                f"{data.get('iterations', 0)} iterations · {tokens:,} tokens · "
                f"${data.get('tree_cost_usd', 0):.4f} · {data.get('duration_s', 0):.2f} s{error}"
            )
    return tree


def _sub_call_summary(data: dict[str, Any], full: bool) -> str:
    if data.get("kind") == "rlm_query":
        return (
            f"→ child run {data.get('child_run_id')} ({data.get('termination_reason')}): "
            f"{_one_line(str(data.get('query', '')), full)}"
        )
    if data.get("error"):
        return f"failed: {_one_line(str(data['error']), full)}"
    return (
        f"{_one_line(str(data.get('prompt', '')), full)} → "
        f"{_one_line(str(data.get('reply', '')), full)}"
    )


def _one_line(text: str, full: bool) -> str:
    if full:
        return text
    flat = " ⏎ ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= _LINE else flat[: _LINE - 1] + "…"
