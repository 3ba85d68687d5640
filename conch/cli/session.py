"""``conch session``: the durable sessions ``conch run --session`` keeps, read and rewound.

Sessions live in one SQLite file (``--store``, default ``$CONCH_HOME/sessions.db``): open it
with ``sqlite3`` to see the very rows these commands read. Node ids are long; wherever a
command takes one, any unique part of it (as ``conch session log`` prints) will do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from conch.cli._common import EXIT_BAD_INPUT, fail
from conch.errors import ConchError, ConfigurationError, NodeNotFoundError
from conch.store import Node, NodeKind, SessionStore, SqliteSessionStore

app = typer.Typer(help="List, read and rewind durable sessions.", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)
_T = TypeVar("_T")

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="The session store file.", envvar="CONCH_STORE"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
_SHORT = 10
_PREVIEW = 160


@app.command("list")
def list_sessions(store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Every session in the store: its turns, leaf and last change."""

    async def read(opened: SessionStore) -> list[dict[str, Any]]:
        rows = []
        for record in await opened.list_sessions():
            path = await opened.load_active_path(record.id)
            rows.append(
                {
                    "session": record.id,
                    "turns": sum(1 for node in path if node.kind is NodeKind.USER_INPUT),
                    "leaf_node_id": record.leaf_node_id,
                    "updated_at": record.updated_at.isoformat(timespec="seconds"),
                    "metadata": dict(record.metadata),
                }
            )
        return rows

    rows = _with_store(store, read)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        _err.print("no sessions yet: start one with conch run --session NAME ...")
        return
    table = Table("session", "turns", "leaf", "updated (UTC)")
    for row in rows:
        leaf = row["leaf_node_id"]
        table.add_row(
            row["session"], str(row["turns"]), _short(leaf) if leaf else "-", row["updated_at"]
        )
    _out.print(table)


@app.command("log")
def log(
    name: Annotated[str, typer.Argument(help="The session.")],
    store: StoreOption = None,
    full: Annotated[
        bool, typer.Option("--full", help="Show model replies and cell outputs whole.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The session's active path, oldest first: what was asked, run, seen and answered."""
    path = _with_store(store, lambda opened: opened.load_active_path(name))
    if as_json:
        typer.echo(json.dumps([_node_dict(node) for node in path], indent=2, ensure_ascii=False))
        return
    if not path:
        _err.print(f"session {name!r} has no turns on its active path")
        return
    for node in path:
        _out.print(_node_line(node, full), soft_wrap=True)


@app.command("rewind")
def rewind(
    name: Annotated[str, typer.Argument(help="The session.")],
    node: Annotated[
        str,
        typer.Argument(help="The node to continue from (an id, or a unique part of one)."),
    ],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move the session's leaf back to NODE. Later turns stay in the store as a branch;
    the next `conch run --session` continues from NODE with the REPL as it was there."""

    async def move(opened: SessionStore) -> dict[str, Any]:
        target = _resolve(name, node, await opened.load_all_nodes(name))
        lease = await opened.acquire_lease(name, "conch-cli:rewind", ttl_s=30)
        try:
            await opened.set_leaf(lease, target.id)
        finally:
            await opened.release_lease(lease)
        orphans = await opened.orphaned_node_ids(name)
        snapshot = await opened.nearest_snapshot(name, target.id)
        return {
            "session": name,
            "leaf_node_id": target.id,
            "orphaned_nodes": len(orphans),
            "repl_from_node": snapshot.id if snapshot else None,
        }

    report = _with_store(store, move)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    repl = (
        f"the REPL will be restored from node {_short(report['repl_from_node'])}"
        if report["repl_from_node"]
        else "the REPL will start empty (no snapshot at or above it)"
    )
    _out.print(
        f"session {name}: leaf is now {_short(report['leaf_node_id'])}; "
        f"{report['orphaned_nodes']} node(s) left on other branches; {repl}"
    )


# --- helpers -------------------------------------------------------------------------------


def _with_store(path: Path | None, work: Callable[[SessionStore], Awaitable[_T]]) -> _T:
    from conch.cli.run import default_store_path

    location = path or default_store_path()
    if not location.exists():
        fail(
            _err,
            f"no session store at {location}: run conch run --session NAME ... first",
            EXIT_BAD_INPUT,
        )

    async def main() -> _T:
        opened = await SqliteSessionStore.open(location)
        try:
            return await work(opened)
        finally:
            await opened.close()

    try:
        return asyncio.run(main())
    except ConchError as error:
        fail(_err, str(error), EXIT_BAD_INPUT)


def _resolve(session: str, wanted: str, nodes: list[Node]) -> Node:
    exact = [node for node in nodes if node.id == wanted]
    if exact:
        return exact[0]
    matches = [node for node in nodes if wanted and wanted in node.id]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NodeNotFoundError(
            f"no live node of session {session!r} matches {wanted!r}; see conch session log "
            f"{session}"
        )
    raise ConfigurationError(
        f"{wanted!r} matches {len(matches)} nodes of session {session!r}; give more of the id"
    )


def _short(node_id: str) -> str:
    # Ids start with the time in ms; the random tail tells nodes of one turn apart.
    return node_id[-_SHORT:]


def _node_dict(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "parent_id": node.parent_id,
        "kind": str(node.kind),
        "turn_key": node.turn_key,
        "snapshot_id": node.snapshot_id,
        "created_at": node.created_at.isoformat(),
        "payload": dict(node.payload),
    }


def _node_line(node: Node, full: bool) -> Text:
    data = node.payload
    label, style, body = str(node.kind), "", ""
    if node.kind is NodeKind.USER_INPUT:
        label, style, body = "user", "bold", str(data.get("text", ""))
    elif node.kind is NodeKind.MODEL_REPLY:
        label, style, body = "model", "cyan", str(data.get("text", ""))
    elif node.kind is NodeKind.CODE_CELL:
        label, style, body = "code", "yellow", str(data.get("code", ""))
        if data.get("blocked"):
            label = "code (not run)"
    elif node.kind is NodeKind.CELL_OUTPUT:
        label, style, body = "output", "dim", str(data.get("output", ""))
    elif node.kind is NodeKind.SUB_CALL:
        label, style = f"sub-call {data.get('kind', '')}".strip(), "magenta"
        body = str(data.get("prompt") or data.get("query") or "")
    elif node.kind is NodeKind.ANSWER:
        label, style, body = "answer", "bold green", str(data.get("answer"))
    elif node.kind is NodeKind.ERROR:
        label, style = "failed", "bold red"
        body = f"{data.get('termination_reason')}: {data.get('error') or data.get('answer') or ''}"
    if not full and len(body) > _PREVIEW:
        body = body[:_PREVIEW] + f"… ({len(body):,} chars)"
    line = Text(f"{_short(node.id)} ", style="dim")
    line.append(f"{label:>9} ", style=style)
    line.append(
        body.replace("\n", "\n" + " " * (_SHORT + 11)) if full else body.replace("\n", " ⏎ ")
    )
    if node.snapshot_id:
        line.append("  [snapshot]", style="dim")
    return line
