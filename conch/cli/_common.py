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
SandboxOption = Annotated[
    str, typer.Option(help="Sandbox backend: best, or a name from 'conch sandbox list'.")
]
TransportOption = Annotated[
    str | None,
    typer.Option(
        "--transport",
        help="How requests to an OpenAI-compatible server are sent: sdk (the official SDK, "
        "the default), httpx, or aiohttp (the leanest on host CPU, for wide llm_query_batched "
        "fan-outs; pip install 'conch[fast]').",
    ),
]


def model_spec(model: str | None, base_url: str | None, errors: Console) -> str:
    """The model to use: ``model``, else the embedded local default (whose absence is
    reported with the command that installs it). ``--base-url`` alone is bad input."""
    if model is not None:
        return model
    if base_url is not None:
        fail(errors, "--base-url needs --model NAME: the model that server serves", EXIT_BAD_INPUT)
    return "local"


def build_model(spec: str, base_url: str | None, transport: str | None = None):
    """The model ``spec`` names; with ``base_url``, always the OpenAI-compatible client.
    Raises ``ConfigurationError`` for a spec or transport that does not fit."""
    from conch.lm import OpenAIModel, create_model

    if base_url:
        name = spec.removeprefix("openai:")
        if transport is None:
            return OpenAIModel(name, base_url=base_url)
        return OpenAIModel(name, base_url=base_url, transport=transport)  # type: ignore[arg-type]
    return create_model(spec, transport=transport)  # type: ignore[arg-type]


def fail(console: Console, message: str, code: int) -> NoReturn:
    console.print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code)
