"""Sandbox benchmark: round trip, cold start, snapshot and restore, per backend.

Prints a table and writes ``benchmarks/results/sandbox.json``. In the same run it measures
the official RLM library's local REPL (``pip install 'conch[bench]'``) on the same trivial
statement, as a peer. Not a test: nothing here asserts.

    python benchmarks/sandbox.py            # full run
    python benchmarks/sandbox.py --quick    # reduced, under 20 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conch import sandbox
from conch.sandbox import ExecutionContext

TARGETS_MS = {"round_trip_p50": 0.5, "cold_start_p50": 60.0, "snapshot": 400.0, "restore": 300.0}
# Options for the common (interpreter-snapshot) figures; whole-memory figures are separate.
BACKEND_OPTIONS: dict[str, dict[str, Any]] = {"gvisor": {"full_memory": False}}
# Whole-sandbox checkpoints (a session holding the 50 MB state below), by backend.
FULL_MEMORY_BACKENDS = ("gvisor",)
FULL_MEMORY_TARGETS_MS = {"gvisor": {"cold_start": 250.0, "checkpoint": 300.0, "restore": 400.0}}
# Cold-start targets that differ from TARGETS_MS's (a container costs an engine round trip).
COLD_START_TARGETS_MS = {"docker": 400.0}

SNAPSHOT_STATE = """
import os
big = 'x' * (50 * 1024 * 1024)
def area(w, h):
    return w * h
def describe(shape):
    return f'{type(shape).__name__} of area {shape.area()}'
class Rect:
    def __init__(self, w, h):
        self.w, self.h = w, h
    def area(self):
        return area(self.w, self.h)
class Square(Rect):
    def __init__(self, side):
        super().__init__(side, side)
shapes = [Rect(2, 3), Square(4)]
os.makedirs('data', exist_ok=True)
for i in range(10):
    with open(f'data/part{i}.bin', 'wb') as handle:
        handle.write(os.urandom(1024 * 1024))
"""


async def pool_refilled(env: Any) -> None:
    """Let a backend's warm pool (gvisor's) fill again, as the time between sessions would;
    the backend's row then shows a start from the pool (its on-demand boot is measured too)."""
    refill = getattr(env, "_refill", None)
    if refill is not None:
        await asyncio.gather(refill, return_exceptions=True)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure_backend(name: str, *, round_trips: int, cold_starts: int, snapshots: int):
    figures: dict[str, Any] = {"backend": name}
    with tempfile.TemporaryDirectory(prefix="conch-bench-") as root:
        env = sandbox.create(name, root=root, **BACKEND_OPTIONS.get(name, {}))
        try:
            starts = []
            for index in range(cold_starts):
                ctx = ExecutionContext(session_id=f"cold-{index}")
                await pool_refilled(env)
                began = time.perf_counter()
                result = await env.execute_code("1", ctx)
                starts.append((time.perf_counter() - began) * 1000)
                assert result.stdout == "1\n", result
                await env.end_session(ctx.session_id)
            figures["cold_start_p50_ms"] = statistics.median(starts)

            ctx = ExecutionContext(session_id="trips")
            await env.execute_code("pass", ctx)
            trips = []
            for _ in range(round_trips):
                began = time.perf_counter()
                await env.execute_code("pass", ctx)
                trips.append((time.perf_counter() - began) * 1000)
            figures["round_trip_p50_ms"] = percentile(trips, 0.50)
            figures["round_trip_p99_ms"] = percentile(trips, 0.99)
            figures["round_trips"] = round_trips

            ctx = ExecutionContext(session_id="snap", timeout_s=120)
            setup = await env.execute_code(SNAPSHOT_STATE, ctx)
            assert setup.ok, setup.stderr
            saves, loads = [], []
            for index in range(snapshots):
                began = time.perf_counter()
                snap = await env.create_snapshot("snap", f"bench {index}")
                saves.append((time.perf_counter() - began) * 1000)
                await env.execute_code("big = None\nshapes = []", ctx)
                began = time.perf_counter()
                await env.restore_snapshot(snap)
                loads.append((time.perf_counter() - began) * 1000)
                check = await env.execute_code("len(big), describe(shapes[1])", ctx)
                assert check.stdout == "(52428800, 'Square of area 16')\n", check
                await env.delete_snapshot(snap)
            figures["snapshot_ms"] = statistics.median(saves)
            figures["restore_ms"] = statistics.median(loads)
            figures["snapshot_bytes"] = snap.size
        finally:
            await env.cleanup()
    return figures


async def measure_full_memory(name: str, *, snapshots: int, cold_starts: int) -> dict[str, Any]:
    """Whole-sandbox checkpoint and restore of a session holding about 50 MB (and a
    half-consumed generator, which only a whole-memory snapshot keeps); and the cold start
    of a sandbox booted on demand (no warm pool), beside the pooled one of the main row."""
    figures: dict[str, Any] = {"backend": f"{name} full memory"}
    with tempfile.TemporaryDirectory(prefix="conch-bench-") as root:
        env = sandbox.create(name, root=root, full_memory=True, pool_size=0)
        try:
            starts = []
            for index in range(cold_starts):
                cold = ExecutionContext(session_id=f"cold-{index}")
                began = time.perf_counter()
                result = await env.execute_code("1", cold)
                starts.append((time.perf_counter() - began) * 1000)
                assert result.stdout == "1\n", result
                await env.end_session(cold.session_id)
            figures["cold_start_without_pool_p50_ms"] = statistics.median(starts)
            ctx = ExecutionContext(session_id="whole", timeout_s=120)
            setup = await env.execute_code(
                SNAPSHOT_STATE + "\npending = iter(range(10))\nnext(pending)", ctx
            )
            assert setup.ok, setup.stderr
            saves, resumed, loads = [], [], []
            for index in range(snapshots):
                began = time.perf_counter()
                snap = await env.create_snapshot("whole", f"bench {index}")
                saves.append((time.perf_counter() - began) * 1000)
                await env.execute_code("pass", ctx)  # waits for the resumed sandbox
                resumed.append((time.perf_counter() - began) * 1000)
                await env.execute_code("big = None\nshapes = []\nnext(pending)", ctx)
                began = time.perf_counter()
                await env.restore_snapshot(snap)
                loads.append((time.perf_counter() - began) * 1000)
                check = await env.execute_code("len(big), describe(shapes[1]), next(pending)", ctx)
                expected = f"(52428800, 'Square of area 16', {index + 1})\n"
                assert check.stdout == expected, check  # the generator went on from the snapshot
                await env.delete_snapshot(snap)
            figures["checkpoint_ms"] = statistics.median(saves)
            figures["checkpoint_until_resumed_ms"] = statistics.median(resumed)
            figures["full_restore_ms"] = statistics.median(loads)
            figures["checkpoint_bytes"] = snap.size
            figures["snapshots"] = snapshots
        finally:
            await env.cleanup()
    return figures


def measure_rlms_peer(*, round_trips: int, cold_starts: int) -> dict[str, Any]:
    try:
        from rlm.environments.local_repl import LocalREPL
    except ImportError as exc:
        return {"backend": "rlms LocalREPL", "skipped": f"rlms is not installed ({exc})"}
    starts = []
    for _ in range(cold_starts):
        began = time.perf_counter()
        repl = LocalREPL()
        repl.execute_code("1")
        starts.append((time.perf_counter() - began) * 1000)
        repl.cleanup()
    repl = LocalREPL()
    repl.execute_code("pass")
    trips = []
    for _ in range(round_trips):
        began = time.perf_counter()
        repl.execute_code("pass")
        trips.append((time.perf_counter() - began) * 1000)
    repl.cleanup()
    return {
        "backend": "rlms LocalREPL",
        "note": "in-process exec: no isolation, no separate process, no snapshots",
        "cold_start_p50_ms": statistics.median(starts),
        "round_trip_p50_ms": percentile(trips, 0.50),
        "round_trip_p99_ms": percentile(trips, 0.99),
        "round_trips": round_trips,
    }


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "-"
    return "meets" if value <= target else f"MISSES by {value - target:.2f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("round_trip_p50_ms", "rt p50 ms"),
        ("round_trip_p99_ms", "rt p99 ms"),
        ("cold_start_p50_ms", "cold ms"),
        ("snapshot_ms", "snapshot ms"),
        ("restore_ms", "restore ms"),
    ]
    print(f"{'backend':<16}" + "".join(f"{title:>14}" for _, title in columns))
    for row in rows:
        if "skipped" in row:
            print(f"{row['backend']:<16}  skipped: {row['skipped']}")
            continue
        cells = "".join(f"{row[key]:>14.3f}" if key in row else f"{'-':>14}" for key, _ in columns)
        print(f"{row['backend']:<16}{cells}")
    print()
    for row in rows:
        if "skipped" in row or row["backend"].startswith("rlms"):
            continue
        if "round_trip_p50_ms" not in row:  # whole-memory rows: print_full_memory()
            continue
        cold_target = COLD_START_TARGETS_MS.get(row["backend"], 60.0)
        print(
            f"{row['backend']}: round trip p50 {verdict(row['round_trip_p50_ms'], 0.5)} "
            f"(target 0.5 ms); cold start {verdict(row['cold_start_p50_ms'], cold_target)} "
            f"({cold_target:g} ms); "
            f"snapshot {verdict(row['snapshot_ms'], 400)} (400 ms); "
            f"restore {verdict(row['restore_ms'], 300)} (300 ms)"
        )


def print_full_memory(rows: list[dict[str, Any]]) -> None:
    """Whole-sandbox checkpoints beside the same backend's cold start, against its targets."""
    by_name = {row["backend"]: row for row in rows}
    for name in FULL_MEMORY_BACKENDS:
        row, base = by_name.get(f"{name} full memory"), by_name.get(name, {})
        if row is None:
            continue
        targets = FULL_MEMORY_TARGETS_MS[name]
        print(
            f"{name} (50 MB session): cold start {base.get('cold_start_p50_ms', 0):.0f} ms "
            f"from the warm pool ({verdict(base.get('cold_start_p50_ms'), targets['cold_start'])}"
            f", target {targets['cold_start']:.0f}; booted on demand "
            f"{row['cold_start_without_pool_p50_ms']:.0f} ms); "
            f"checkpoint {row['checkpoint_ms']:.0f} ms "
            f"({verdict(row['checkpoint_ms'], targets['checkpoint'])}, target "
            f"{targets['checkpoint']:.0f}; {row['checkpoint_until_resumed_ms']:.0f} ms until "
            f"the session answers again); restore {row['full_restore_ms']:.0f} ms "
            f"({verdict(row['full_restore_ms'], targets['restore'])}, target "
            f"{targets['restore']:.0f}); image and files {row['checkpoint_bytes'] / 1e6:.1f} MB"
        )


def private_docker_engine():
    """When no Docker engine answers but podman is installed and the sandbox image exists,
    serve podman's Docker-compatible API on a private socket and point DOCKER_HOST at it."""
    import os
    import shutil

    if "docker" not in sandbox.backend_names() or shutil.which("podman") is None:
        return None
    try:
        from conch.sandbox._podman import PodmanService
        from conch.sandbox.docker import docker_works

        if docker_works()[0]:
            return None
        service = PodmanService(tempfile.mkdtemp(prefix="conch-bench-podman-"))
        os.environ["DOCKER_HOST"] = service.start()
    except Exception as exc:  # the docker row then says why it was skipped
        print(f"no private podman engine: {exc}", file=sys.stderr)
        return None
    return service


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (< 20 s)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/sandbox.json"))
    args = parser.parse_args()
    trips, colds, snaps = (300, 5, 1) if args.quick else (2000, 20, 3)

    rows = []
    podman = private_docker_engine()  # the docker backend on podman's API, if nothing else
    for status in sandbox.backend_statuses():
        if not status.available:
            rows.append({"backend": status.name, "skipped": status.reason})
            continue
        print(f"measuring {status.name} ...", file=sys.stderr)
        rows.append(
            await measure_backend(
                status.name, round_trips=trips, cold_starts=colds, snapshots=snaps
            )
        )
        if status.name in FULL_MEMORY_BACKENDS:
            print(f"measuring {status.name} full-memory checkpoints ...", file=sys.stderr)
            rows.append(await measure_full_memory(status.name, snapshots=snaps, cold_starts=colds))
    if podman is not None:
        podman.stop()
    print("measuring the rlms peer ...", file=sys.stderr)
    peer = measure_rlms_peer(round_trips=trips, cold_starts=colds)
    rows.append(peer)
    for row in rows:
        if "round_trip_p50_ms" in row and "round_trip_p50_ms" in peer and row is not peer:
            row["round_trip_ratio_to_rlms"] = row["round_trip_p50_ms"] / peer["round_trip_p50_ms"]

    print_table(rows)
    print_full_memory(rows)
    for row in rows:
        if "round_trip_ratio_to_rlms" in row:
            print(
                f"{row['backend']} round trip is {row['round_trip_ratio_to_rlms']:.1f}x "
                "the rlms in-process REPL's"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "sandbox",
        "quick": args.quick,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "targets_ms": TARGETS_MS,
        "results": rows,
    }
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
