"""Fan-out benchmark: a root whose code calls ``llm_query_batched`` over 64 prompts.

A loopback OpenAI-compatible server (in its own process, so it does not compete with the
clients for the GIL) answers every request after a fixed 100 ms. With 16
sub-calls in flight the fan-out ideally takes ceil(64/16) x 100 ms = 0.40 s, and the whole
run one root call more (0.50 s). The same workload then runs through the official ``rlms``
package (``pip install 'conch[bench]'``) against the same server, in the same process.

    python benchmarks/fanout.py [--quick] [--repeats N] [--sandbox local|bwrap|best]

Prints the figures and writes benchmarks/results/fanout.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import math
import multiprocessing
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


async def conch_once(base_url: str, sandbox: str) -> dict:
    sink = MemoryTraceSink()
    model = OpenAIModel("test-model", base_url=base_url)
    env = create_sandbox(sandbox)
    try:
        async with RLM(model, sandbox=env, trace=sink, batch_concurrency=WIDTH) as rlm:
            started = time.perf_counter()
            result = await rlm.acompletion(CONTEXT, QUERY)
            wall = time.perf_counter() - started
    finally:
        await env.cleanup()
        await model.aclose()
    if result.answer != str(PROMPTS):
        raise RuntimeError(f"conch answered {result.answer!r} ({result.termination_reason})")
    cells = [r for r in sink.records if r.type == RecordType.CODE_CELL]
    return {"run_s": wall, "fanout_s": cells[-1].data["duration_ms"] / 1000}


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
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    report: dict = {
        "benchmark": "fanout",
        "prompts": PROMPTS,
        "width": WIDTH,
        "latency_s": LATENCY_S,
        "ideal_fanout_s": IDEAL_FANOUT_S,
        "ideal_run_s": IDEAL_RUN_S,
        "repeats": repeats,
        "sandbox": args.sandbox,
        "python": platform.python_version(),
        "machine": platform.platform(),
    }
    with ServerProcess(LATENCY_S) as server:
        asyncio.run(conch_once(server, args.sandbox))  # warm-up: imports, first worker
        conch = [asyncio.run(conch_once(server, args.sandbox)) for _ in range(repeats)]
        report["conch"] = {
            "run_s": summarise(conch, "run_s"),
            "fanout_s": summarise(conch, "fanout_s"),
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

    conch_run = report["conch"]["run_s"]["median"]
    conch_fanout = report["conch"]["fanout_s"]["median"]
    print(f"fan-out of {PROMPTS} prompts, {WIDTH} at a time, {LATENCY_S * 1000:.0f} ms each")
    print(f"  ideal fan-out        {IDEAL_FANOUT_S:.3f} s   ideal run {IDEAL_RUN_S:.3f} s")
    print(
        f"  conch fan-out cell   {conch_fanout:.3f} s   {conch_fanout / IDEAL_FANOUT_S:.2f}x ideal"
    )
    print(f"  conch whole run      {conch_run:.3f} s   {conch_run / IDEAL_RUN_S:.2f}x ideal")
    peer = report["rlms"]
    if "run_s" in peer:
        peer_run = peer["run_s"]["median"]
        print(f"  rlms whole run       {peer_run:.3f} s   {peer_run / IDEAL_RUN_S:.2f}x ideal")
        print(f"  conch vs rlms        {peer_run / conch_run:.2f}x faster")
        report["conch_speedup_vs_rlms"] = peer_run / conch_run
    else:
        print(f"  rlms: not measured ({peer['unavailable']}); pip install 'conch[bench]'")
    report["conch_run_vs_ideal"] = conch_run / IDEAL_RUN_S
    report["conch_fanout_vs_ideal"] = conch_fanout / IDEAL_FANOUT_S
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
