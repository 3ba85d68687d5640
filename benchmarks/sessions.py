"""Durable-session benchmark (prints figures, writes JSON; not a test).

Measures, on SQLite (and PostgreSQL with ``--postgres-dsn``):

* resume: a session whose active path holds 50 nodes and whose history holds 1,000 or
  100,000 nodes. ``SessionGraph.load`` (what ``Runtime.resume`` does to the graph) under
  ``ACTIVE_PATH_ONLY`` and ``KEEP_ALL``, and a whole ``Runtime.resume`` (lease, graph,
  plugins, RLM) under ``ACTIVE_PATH_ONLY``. Targets (issue 5): ACTIVE_PATH_ONLY resume under
  5 ms, and not growing with history (100k / 1k at most 1.5).
* commit: ``commit_turn`` of an 8-node turn, p50 target under 2 ms on SQLite. Measured with
  ``synchronous="full"`` (the default: an fsync per commit, durable against power loss) and
  ``"normal"`` (durable against a crashed process, not a crashed machine), beside the disk's
  own fsync latency, the floor of any durable commit.
* parked sessions: memory held by 10,000 ``ParkedSession`` handles from ``Runtime.park()``
  (target under 1 KB each).

    python benchmarks/sessions.py [--quick] [--postgres-dsn DSN] [--output PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from conch import sandbox
from conch.lm import ScriptedModel
from conch.runtime import Residency, Runtime, RuntimeEnvironment, SessionGraph
from conch.store import (
    Node,
    NodeKind,
    PostgresSessionStore,
    SessionStore,
    SqliteSessionStore,
    TurnCommit,
)

RESULTS = Path(__file__).parent / "results" / "sessions.json"
TARGETS = {
    "resume_active_path_only_ms": 5.0,
    "resume_growth_ratio": 1.5,
    "commit_p50_ms": 2.0,
    "parked_bytes_each": 1024.0,
}
PATH_LENGTH = 50
TURN_NODES = 500  # history is written in turns of this many nodes


async def build_history(store: SessionStore, session_id: str, history: int) -> None:
    """An active path of PATH_LENGTH nodes, then orphan branches until ``history`` nodes."""
    await store.create_session(session_id)
    lease = await store.acquire_lease(session_id, "bench")
    path: list[Node] = []
    parent = None
    for step in range(PATH_LENGTH):
        node = Node.new(session_id, NodeKind.MODEL_REPLY, {"step": step}, parent_id=parent)
        path.append(node)
        parent = node.id
    await store.commit_turn(lease, TurnCommit("path", path))
    written, turn = PATH_LENGTH, 0
    while written < history:
        size = min(TURN_NODES, history - written)
        parent = path[turn % PATH_LENGTH].id
        branch = []
        for step in range(size):
            node = Node.new(
                session_id, NodeKind.CODE_CELL, {"code": f"x = {step}"}, parent_id=parent
            )
            branch.append(node)
            parent = node.id
        await store.commit_turn(lease, TurnCommit(f"branch-{turn}", branch))
        written += size
        turn += 1
    await store.set_leaf(lease, path[-1].id)
    await store.release_lease(lease)


async def time_ms(work, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await work()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p90": ordered[int(len(ordered) * 0.9) - 1] if len(ordered) >= 10 else ordered[-1],
        "min": ordered[0],
        "n": len(ordered),
    }


async def bench_resume(store: SessionStore, histories: list[int], repeat: int, shared_sandbox):
    environments = {residency: RuntimeEnvironment(residency=residency) for residency in Residency}
    results: dict[str, Any] = {}
    for history in histories:
        session_id = f"history-{history}"
        await build_history(store, session_id, history)
        row: dict[str, Any] = {}
        for residency in Residency:

            async def load(residency=residency, session_id=session_id) -> None:
                graph = await SessionGraph.load(store, session_id, residency)
                assert len(graph.active_path()) == PATH_LENGTH

            await load()  # warm the page cache and the statement cache
            row[f"graph_load_{residency}"] = summary(await time_ms(load, repeat))

        async def runtime_resume(session_id=session_id) -> None:
            runtime = await Runtime.open(
                environments[Residency.ACTIVE_PATH_ONLY],
                session_id,
                model=ScriptedModel([]),
                sandbox=shared_sandbox,
                store=store,
                create=False,
                owner="bench",
            )
            assert len(runtime.active_path()) == PATH_LENGTH
            await runtime.park()

        await runtime_resume()
        row["runtime_resume_active_path_only"] = summary(await time_ms(runtime_resume, repeat))
        results[str(history)] = row
    return results


async def bench_commit(store: SessionStore, repeat: int) -> dict[str, float]:
    session_id = "commits"
    await store.create_session(session_id)
    lease = await store.acquire_lease(session_id, "bench")
    parent = None
    samples = []
    for turn in range(repeat):
        nodes = []
        for kind in ("user_input", "model_reply", "code_cell", "cell_output") * 2:
            node = Node.new(session_id, kind, {"text": "x" * 200}, parent_id=parent)
            nodes.append(node)
            parent = node.id
        started = time.perf_counter()
        await store.commit_turn(lease, TurnCommit(f"t{turn}", nodes))
        samples.append((time.perf_counter() - started) * 1000)
    return summary(samples)


async def bench_parked(store: SessionStore, count: int, shared_sandbox) -> dict[str, float]:
    environment = RuntimeEnvironment(residency=Residency.ACTIVE_PATH_ONLY)
    model = ScriptedModel([])
    for index in range(count):
        await store.create_session(f"parked-{index}")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    parked = []
    started = time.perf_counter()
    for index in range(count):
        runtime = await Runtime.open(
            environment,
            f"parked-{index}",
            model=model,
            sandbox=shared_sandbox,
            store=store,
            create=False,
        )
        parked.append(await runtime.park())
        del runtime
    elapsed = time.perf_counter() - started
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(parked) == count
    return {
        "sessions": count,
        "bytes_each": held / count,
        "open_and_park_ms_each": elapsed * 1000 / count,
    }


async def run_suite(store: SessionStore, quick: bool) -> dict[str, Any]:
    histories = [1_000, 10_000] if quick else [1_000, 100_000]
    repeat = 20 if quick else 100
    shared_sandbox = sandbox.create("local")
    try:
        return {
            "resume": await bench_resume(store, histories, repeat, shared_sandbox),
            "commit_ms": await bench_commit(store, 200 if quick else 1000),
            "parked": await bench_parked(store, 1_000 if quick else 10_000, shared_sandbox),
        }
    finally:
        await shared_sandbox.cleanup()


def fsync_floor_ms(directory: Path, repeat: int = 200) -> dict[str, float]:
    """Write 4 KB and fsync it, ``repeat`` times: what one durable commit costs at least."""
    import os

    samples = []
    path = directory / "fsync-probe"
    with open(path, "wb") as file:
        for _ in range(repeat):
            started = time.perf_counter()
            file.write(b"x" * 4096)
            file.flush()
            os.fsync(file.fileno())
            samples.append((time.perf_counter() - started) * 1000)
    path.unlink()
    return summary(samples)


async def sqlite_commit_modes(directory: Path, repeat: int) -> dict[str, Any]:
    modes: dict[str, Any] = {}
    for mode in ("full", "normal"):
        store = await SqliteSessionStore.open(directory / f"commit-{mode}.db", synchronous=mode)
        try:
            modes[mode] = await bench_commit(store, repeat)
        finally:
            await store.close()
    modes["fsync_floor"] = fsync_floor_ms(directory)
    return modes


def verdicts(suite: dict[str, Any], backend: str) -> dict[str, Any]:
    resume = suite["resume"]
    small, large = sorted(resume, key=int)
    fast_small = resume[small][f"graph_load_{Residency.ACTIVE_PATH_ONLY}"]["p50"]
    fast_large = resume[large][f"graph_load_{Residency.ACTIVE_PATH_ONLY}"]["p50"]
    checks = {
        "resume_active_path_only_ms": (
            fast_large,
            fast_large <= TARGETS["resume_active_path_only_ms"],
        ),
        "resume_growth_ratio": (
            fast_large / fast_small,
            fast_large / fast_small <= TARGETS["resume_growth_ratio"],
        ),
        "parked_bytes_each": (
            suite["parked"]["bytes_each"],
            suite["parked"]["bytes_each"] <= TARGETS["parked_bytes_each"],
        ),
    }
    if backend == "sqlite":
        for mode in ("full", "normal"):
            p50 = suite["commit_modes"][mode]["p50"]
            checks[f"commit_p50_ms ({mode})"] = (p50, p50 <= TARGETS["commit_p50_ms"])
    return {
        name: {"value": value, "target": TARGETS[name.split(" ")[0]], "met": met}
        for name, (value, met) in checks.items()
    }


def print_suite(backend: str, suite: dict[str, Any], checks: dict[str, Any]) -> None:
    print(f"\n== {backend} ==")
    print(
        f"{'history':>9}  {'ACTIVE_PATH_ONLY':>17}  {'KEEP_ALL':>10}  "
        f"{'Runtime.resume':>15}   (p50 ms)"
    )
    for history, row in sorted(suite["resume"].items(), key=lambda item: int(item[0])):
        print(
            f"{int(history):>9,}  {row[f'graph_load_{Residency.ACTIVE_PATH_ONLY}']['p50']:>17.2f}"
            f"  {row[f'graph_load_{Residency.KEEP_ALL}']['p50']:>10.2f}"
            f"  {row['runtime_resume_active_path_only']['p50']:>15.2f}"
        )
    commit = suite["commit_ms"]
    print(f"commit of an 8-node turn: p50 {commit['p50']:.3f} ms, p90 {commit['p90']:.3f} ms")
    for mode, figures in suite.get("commit_modes", {}).items():
        print(f"  sqlite {mode:>11}: p50 {figures['p50']:.3f} ms, p90 {figures['p90']:.3f} ms")
    parked = suite["parked"]
    print(
        f"{parked['sessions']:,} parked sessions: {parked['bytes_each']:.0f} bytes each "
        f"(open + park {parked['open_and_park_ms_each']:.2f} ms each)"
    )
    for name, check in checks.items():
        mark = "met" if check["met"] else "MISSED"
        print(f"  {name}: {check['value']:.3f} (target {check['target']}) {mark}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k history, fewer repeats")
    parser.add_argument("--postgres-dsn", help="also run against this (empty) PostgreSQL database")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    report: dict[str, Any] = {
        "benchmark": "sessions",
        "quick": args.quick,
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "targets": TARGETS,
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="conch-bench-") as tmp:
        stores: list[tuple[str, Any]] = [
            ("sqlite", lambda: SqliteSessionStore.open(Path(tmp) / "bench.db"))
        ]
        if args.postgres_dsn:
            stores.append(("postgres", lambda: PostgresSessionStore.open(args.postgres_dsn)))
        for backend, open_store in stores:
            store = await open_store()
            try:
                suite = await run_suite(store, args.quick)
            finally:
                await store.close()
            if backend == "sqlite":
                suite["commit_modes"] = await sqlite_commit_modes(
                    Path(tmp), 200 if args.quick else 1000
                )
            checks = verdicts(suite, backend)
            print_suite(backend, suite, checks)
            report["backends"][backend] = {**suite, "checks": checks}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
