"""``conch sandbox``: which backends work on this machine, and a quick self-test."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect sandbox backends.", no_args_is_help=True)
