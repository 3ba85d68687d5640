"""What the commands share: the model options and default, and how a command fails."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

EXIT_BAD_INPUT = 2
EXIT_MODEL_ERROR = 4

ModelOption = Annotated[
    str | None,
    typer.Option(
        help="NAME with --base-url, or provider:NAME (openai:, anthropic:, local:). "
        "Default: the embedded local model."
    ),
]
BaseUrlOption = Annotated[
    str | None, typer.Option("--base-url", help="An OpenAI-compatible API root (…/v1).")
]


def model_spec(model: str | None, base_url: str | None, errors: Console) -> str:
    """The model to use: ``model``, else the embedded local default (whose absence is
    reported with the command that installs it). ``--base-url`` alone is bad input."""
    if model is not None:
        return model
    if base_url is not None:
        fail(errors, "--base-url needs --model NAME: the model that server serves", EXIT_BAD_INPUT)
    return "local"


def build_model(spec: str, base_url: str | None):
    from conch.lm import OpenAIModel, create_model

    if base_url:
        return OpenAIModel(spec.removeprefix("openai:"), base_url=base_url)
    return create_model(spec)


def fail(console: Console, message: str, code: int) -> NoReturn:
    console.print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code)
