"""The ``conch`` command line: one Typer app, one module per command group.

Results go to stdout (``--json`` for machines), progress and diagnostics to stderr.
Exit codes: 0 success, 1 a check failed, 2 bad input, 3 budget exhausted, 4 model error.
"""

from __future__ import annotations

import typer

from conch import __version__

app = typer.Typer(
    name="conch",
    help="A runtime for Recursive Language Models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print conch's version."""
    typer.echo(__version__)


def _register_command_groups() -> None:
    # Each group lives in its own module and is added here, so `conch --help` lists them all.
    from conch.cli import kg as kg_commands
    from conch.cli import models as models_commands
    from conch.cli import sandbox as sandbox_commands
    from conch.cli import session as session_commands
    from conch.cli import trace as trace_commands
    from conch.cli._eval import app as eval_app
    from conch.cli.run import run_command

    app.add_typer(sandbox_commands.app, name="sandbox")
    app.add_typer(kg_commands.app, name="kg")
    app.add_typer(models_commands.app, name="models")
    app.add_typer(trace_commands.app, name="trace")
    app.add_typer(session_commands.app, name="session")
    app.add_typer(eval_app, name="eval")
    app.command("run")(run_command)


_register_command_groups()


def main() -> None:
    app()
