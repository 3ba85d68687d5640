"""Fan-out benchmark: a root whose code calls ``llm_query_batched`` over 64 prompts.

A loopback OpenAI-compatible server (in its own process, so it does not compete with the
clients for the GIL) answers every request after a fixed 100 ms. With 16
sub-calls in flight the fan-out ideally takes ceil(64/16) x 100 ms = 0.40 s, and the whole
run one root call more (0.50 s). conch runs once per ``OpenAIModel`` transport: ``sdk``
(the official SDK, the default), ``httpx`` and ``aiohttp`` (the lean ones), in turn within
each repeat so that load from other work on the machine falls on all of them alike. The
same workload then runs through the official ``rlms`` package (``pip install
'conch[bench]'``) against the same server, in the same process.

What bounds the fan-out on a small machine is host CPU per sub-call (the event loop is one
thread), so that is printed too: this process's CPU time over the run, per model call.

    python benchmarks/fanout.py [--quick] [--repeats N] [--sandbox local|bwrap|best]
                                [--transports sdk,httpx,aiohttp]

Prints the figures and writes benchmarks/results/fanout.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from conch.lm import OpenAIModel
from conch.rlm import RLM
from conch.sandbox import create as create_sandbox
from conch.testing.openai_server import OpenAIServer
from conch.trace import MemoryTraceSink, RecordType

PROMPTS = 64
WIDTH = 16
TRANSPORTS = ("sdk", "httpx", "aiohttp")
LATENCY_S = 0.100
IDEAL_FANOUT_S = math.ceil(PROMPTS / WIDTH) * LATENCY_S
IDEAL_RUN_S = IDEAL_FANOUT_S + LATENCY_S  # one root call writes the code
CONTEXT = "benchmark context\n" * 100
QUERY = "Ask one sub-question per item and count the replies."
RESULTS = Path(__file__).parent / "results" / "fanout.json"

CONCH_ROOT = (
    "```repl\nresults = llm_query_batched([f'item {i}' for i in range(64)])\n"
    "FINAL(len(results))\n```"
)
# rlms reads its answer from an `answer` dict in the REPL (it has no FINAL in code).
PEER_ROOT = (
    "```repl\nresults = llm_query_batched([f'item {i}' for i in range(64)])\n"
    'answer["content"] = str(len(results))\nanswer["ready"] = True\n```'
)


def reply(request) -> str:
    """Sub-calls get "ok"; a root gets the code for its own protocol (conch sends stops)."""
    if request.last_user_text.startswith("item "):
        return "ok"
    return CONCH_ROOT if "```output" in (request.body.get("stop") or []) else PEER_ROOT


def serve(latency_s: float, ports, stop) -> None:
    """The server in its own process, so it does not share the clients' GIL."""
    # The stdlib's listen backlog of 5 drops connects in a burst of 16 (each dropped SYN
    # is retried after ~1 s); this process is ours alone, so widen it here.
    http.server.ThreadingHTTPServer.request_queue_size = 128
    with OpenAIServer(reply, latency_s=latency_s) as server:
        ports.put(server.base_url)
        stop.wait()


class ServerProcess:
    def __init__(self, latency_s: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._ports, self._stop = context.Queue(), context.Event()
        self._process = context.Process(
            target=serve, args=(latency_s, self._ports, self._stop), daemon=True
        )

    def __enter__(self) -> str:
        self._process.start()
        return self._ports.get(timeout=30)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._process.join(10)


async def conch_once(base_url: str, sandbox: str, transport: str = "sdk") -> dict:
    sink = MemoryTraceSink()
    lean = {} if transport == "sdk" else {"transport": transport, "max_connections": WIDTH}
    model = OpenAIModel("test-model", base_url=base_url, **lean)
    env = create_sandbox(sandbox)
    try:
        async with RLM(model, sandbox=env, trace=sink, batch_concurrency=WIDTH) as rlm:
            started, cpu_started = time.perf_counter(), time.process_time()
            result = await rlm.acompletion(CONTEXT, QUERY)
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
    finally:
        await env.cleanup()
        await model.aclose()
    if result.answer != str(PROMPTS):
        raise RuntimeError(f"conch answered {result.answer!r} ({result.termination_reason})")
    cells = [r for r in sink.records if r.type == RecordType.CODE_CELL]
    return {
        "run_s": wall,
        "fanout_s": cells[-1].data["duration_ms"] / 1000,
        "cpu_ms_per_call": cpu * 1000 / (PROMPTS + 1),  # the sub-calls and the root call
    }


def peer_once(base_url: str) -> dict:
    from rlm import RLM as PeerRLM  # the official `rlms` package

    peer = PeerRLM(
        backend="openai",
        backend_kwargs={
            "model_name": "test-model",
            "base_url": base_url,
            "api_key": "not-needed",
        },
        environment="local",
        max_iterations=3,
    )
    started = time.perf_counter()
    result = peer.completion(CONTEXT, root_prompt=QUERY)
    wall = time.perf_counter() - started
    answer = str(getattr(result, "response", result)).strip()
    if answer != str(PROMPTS):
        raise RuntimeError(f"rlms answered {answer!r}")
    return {"run_s": wall}


def summarise(samples: list[dict], key: str) -> dict:
    values = [sample[key] for sample in samples]
    return {"median": statistics.median(values), "min": min(values), "samples": values}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one measured run per system")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sandbox", default="local", help="conch backend (default: local)")
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help=f"OpenAIModel transports to compare (default: {','.join(TRANSPORTS)})",
    )
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = sorted(set(transports) - set(TRANSPORTS))
    if unknown or not transports:
        parser.error(f"--transports: choose from {', '.join(TRANSPORTS)}")

    report: dict = {
        "benchmark": "fanout",
        "prompts": PROMPTS,
        "width": WIDTH,
        "latency_s": LATENCY_S,
        "ideal_fanout_s": IDEAL_FANOUT_S,
        "ideal_run_s": IDEAL_RUN_S,
        "repeats": repeats,
        "sandbox": args.sandbox,
        "default_transport": "sdk",
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
    }
    samples: dict[str, list[dict]] = {t: [] for t in transports}
    with ServerProcess(LATENCY_S) as server:
        for transport in transports:  # warm-up: imports, first worker, connections
            asyncio.run(conch_once(server, args.sandbox, transport))
        for _ in range(repeats):  # interleaved, so background load falls on all alike
            for transport in transports:
                samples[transport].append(asyncio.run(conch_once(server, args.sandbox, transport)))
        report["conch"] = {
            transport: {
                "run_s": summarise(runs, "run_s"),
                "fanout_s": summarise(runs, "fanout_s"),
                "cpu_ms_per_call": summarise(runs, "cpu_ms_per_call"),
            }
            for transport, runs in samples.items()
        }
        try:
            with tempfile.TemporaryDirectory():
                peer_once(server)  # warm-up
                peer = [peer_once(server) for _ in range(repeats)]
            report["rlms"] = {"run_s": summarise(peer, "run_s")}
        except Exception as error:  # not installed, or it failed: say why, keep conch's figures
            report["rlms"] = {"unavailable": f"{type(error).__name__}: {error}"}
            if not isinstance(error, ImportError):
                traceback.print_exc(file=sys.stderr)
    report["load_average_after"] = os.getloadavg()

    peer = report["rlms"]
    peer_run = peer["run_s"]["median"] if "run_s" in peer else None
    print(f"fan-out of {PROMPTS} prompts, {WIDTH} at a time, {LATENCY_S * 1000:.0f} ms each")
    print(f"(medians of {repeats}; load average {report['load_average_before'][0]:.1f} before)")
    print(f"  {'ideal':<16} fan-out {IDEAL_FANOUT_S:.3f} s         run {IDEAL_RUN_S:.3f} s")
    for transport, figures in report["conch"].items():
        fanout = figures["fanout_s"]["median"]
        run = figures["run_s"]["median"]
        cpu = figures["cpu_ms_per_call"]["median"]
        figures["fanout_vs_ideal"] = fanout / IDEAL_FANOUT_S
        figures["run_vs_ideal"] = run / IDEAL_RUN_S
        line = (
            f"  {'conch ' + transport:<16} fan-out {fanout:.3f} s {fanout / IDEAL_FANOUT_S:.2f}x"
            f"   run {run:.3f} s {run / IDEAL_RUN_S:.2f}x   host CPU {cpu:.2f} ms/call"
        )
        if peer_run is not None:
            figures["speedup_vs_rlms"] = peer_run / run
            line += f"   {peer_run / run:.2f}x faster than rlms"
        print(line)
    if peer_run is not None:
        print(f"  {'rlms':<16} {'':<23} run {peer_run:.3f} s {peer_run / IDEAL_RUN_S:.2f}x")
    else:
        print(f"  rlms: not measured ({peer['unavailable']}); pip install 'conch[bench]'")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
