"""``conch kg``: build a thesaurus from Markdown, and check text against one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from conch.errors import ValidationConfigError

app = typer.Typer(
    help="Knowledge-graph validation: build thesauri, check text.", no_args_is_help=True
)

_EXIT_BLOCKED = 1
_EXIT_BAD_INPUT = 2


@app.command()
def build(
    directory: Annotated[
        Path, typer.Argument(help="Directory of Markdown files, one per concept.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Thesaurus JSON to write.")],
    name: Annotated[
        str | None, typer.Option(help="Thesaurus name (default: directory name).")
    ] = None,
) -> None:
    """Convert a Markdown concept directory into a Terraphim thesaurus JSON with its role graph."""
    from conch.validate import Thesaurus

    try:
        thesaurus = Thesaurus.from_markdown(directory, name=name)
        thesaurus.save(output)
    except ValidationConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(_EXIT_BAD_INPUT) from None
    except OSError as error:
        typer.echo(f"error: cannot write {output}: {error.strerror}", err=True)
        raise typer.Exit(_EXIT_BAD_INPUT) from None
    edges = len(thesaurus.role_graph) if thesaurus.role_graph is not None else 0
    typer.echo(
        f"wrote {output}: {len(thesaurus.terms)} terms, {len(thesaurus.concepts)} concepts, "
        f"{edges} relations",
        err=True,
    )


@app.command()
def check(
    text: Annotated[str, typer.Argument(help="Text to check; '-' reads standard input.")],
    thesaurus: Annotated[Path, typer.Option("--thesaurus", "-t", help="Thesaurus JSON file.")],
    strictness: Annotated[
        str, typer.Option("--strictness", "-s", help="permissive, normal or strict.")
    ] = "normal",
    kind: Annotated[str, typer.Option(help="'code' (Python) or 'command' (shell).")] = "code",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Validate TEXT against a thesaurus. Exit code 0 when it passed, 1 when blocked."""
    from conch.validate import KnowledgeGraphValidator

    if text == "-":
        raw = sys.stdin.buffer.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            typer.echo("error: standard input is not UTF-8 text", err=True)
            raise typer.Exit(_EXIT_BAD_INPUT) from None
    try:
        validator = KnowledgeGraphValidator(thesaurus, strictness)
        result = validator.validate(text, kind)
    except ValidationConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(_EXIT_BAD_INPUT) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "passed": result.passed,
                    "message": result.message,
                    "match_ratio": result.match_ratio,
                    "connected": result.connected,
                    "matched": [
                        {"term": m.term, "concept": m.concept, "start": m.start, "end": m.end}
                        for m in result.matched
                    ],
                    "unknown": list(result.unknown),
                    "suggestions": {w: list(s) for w, s in result.suggestions.items()},
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        typer.echo(result.message)
        for match in result.matched:
            typer.echo(f"  known    {match.term} -> {match.concept}  [{match.start}:{match.end}]")
        for word in result.unknown:
            close = result.suggestions.get(word, ())
            hint = f"  (did you mean: {', '.join(close)})" if close else ""
            typer.echo(f"  unknown  {word}{hint}")
    if not result.passed:
        raise typer.Exit(_EXIT_BLOCKED)
