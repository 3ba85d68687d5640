"""``conch sandbox``: which backends work on this machine, and a quick self-test of one."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

import typer
from rich.console import Console
from rich.table import Table

from conch import sandbox
from conch.errors import ConchError
from conch.sandbox import Capability, ExecutionContext

app = typer.Typer(help="Inspect sandbox backends.", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)


@app.command("list")
def list_backends(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Every backend conch knows, whether it works here, and why not."""
    statuses = sandbox.backend_statuses()
    if as_json:
        typer.echo(json.dumps([asdict(s) for s in statuses], indent=2))
        return
    table = Table("backend", "works here", "isolation", "why / why not")
    for status in statuses:
        table.add_row(
            status.name,
            "[green]yes[/]" if status.available else "[red]no[/]",
            status.isolation,
            status.reason,
        )
    _out.print(table)


@dataclass
class Probe:
    name: str
    passed: bool
    detail: str


_ISOLATION_PROBES = {
    "no network": (
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
        "    print('reachable')\nexcept OSError:\n    print('refused')",
        "refused",
    ),
    "system is read-only": (
        "try:\n    open('/usr/conch-probe', 'w')\n    print('written')\n"
        "except OSError:\n    print('refused')",
        "refused",
    ),
    "no capabilities": (
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])",
        "0000000000000000",
    ),
}


async def _self_test(name: str) -> list[Probe]:
    probes: list[Probe] = []
    began = time.perf_counter()
    async with sandbox.create(name) as env:
        ctx = ExecutionContext(session_id="check", timeout_s=30)
        first = await env.execute_code("6 * 7", ctx)
        started_ms = (time.perf_counter() - began) * 1000
        probes.append(Probe("start and execute", first.stdout == "42\n", f"{started_ms:.0f} ms"))
        command = await env.execute_command("echo $((6 * 7))", ctx)
        probes.append(Probe("bash", command.stdout == "42\n", command.stderr.strip() or "ok"))
        echoed = await env.execute_code(
            "host_call('echo', 'ping')", ExecutionContext("check", host_functions={"echo": str})
        )
        probes.append(Probe("host callback", echoed.stdout == "'ping'\n", "echo round trip"))
        if env.has_capability(Capability.PROCESS_ISOLATION):
            for probe_name, (code, expected) in _ISOLATION_PROBES.items():
                result = await env.execute_code(code, ctx)
                got = result.stdout.strip() or result.stderr.strip()[-120:]
                probes.append(Probe(probe_name, got == expected, got))
        await env.execute_code("kept = {'answer': 42}", ctx)
        snap = await env.create_snapshot("check", "self-test")
        await env.execute_code("kept = None", ctx)
        await env.restore_snapshot(snap)
        restored = await env.execute_code("kept['answer']", ctx)
        probes.append(Probe("snapshot round trip", restored.stdout == "42\n", f"{snap.size} B"))
    return probes


@app.command("check")
def check(
    name: str = typer.Argument(..., help="Backend to test, e.g. local or bwrap."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Start the backend, run code and bash, probe its isolation, round-trip a snapshot."""
    try:
        probes = asyncio.run(_self_test(name))
    except ConchError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    passed = all(p.passed for p in probes)
    if as_json:
        typer.echo(
            json.dumps({"backend": name, "passed": passed, "probes": [asdict(p) for p in probes]})
        )
    else:
        table = Table("probe", "result", "detail", title=f"conch sandbox check {name}")
        for probe in probes:
            table.add_row(
                probe.name, "[green]pass[/]" if probe.passed else "[red]FAIL[/]", probe.detail
            )
        _out.print(table)
    raise typer.Exit(0 if passed else 1)
