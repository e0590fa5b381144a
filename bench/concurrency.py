"""Many requests at once: aggregate tokens/s and time to first token at 1, 2, 4 and 8 streams,
through meshd (HTTP and gRPC) and through llama.cpp's own llama-server, side by side.

    .venv/bin/python bench/concurrency.py [--threads 2] [--streams 1,2,4,8] [--requests 3]
        [--max-tokens 64] [--model PATH] [--before REV] [--skip-llama-server]

Every side serves the same GGUF (the demo model unless --model) with the same threads, 4 slots
of the same context, and answers the same streamed /v1/completions (gRPC: Generate); a crowd of
N clients each asks --requests prompts one after another, and the sides take turns, crowd by
crowd, so that the machine's noise falls on all of them. llama-server is built from the
llama.cpp the pinned llama-cpp-python vendors (bench/llamaserver.py; the first run builds it).
`--before REV` adds an older commit's meshd (its engine) to the same turns.

Goals: meshd's aggregate tokens/s ≥ 0.95× llama-server's at 1, 4 and 8 streams; its TTFT p99 at
4 streams ≤ 1.1× llama-server's; its runner's memory at 4 streams no more than the older
engine's. Prints a table and writes bench/results/concurrency.json.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import llamaserver
import psutil
from common import (
    PROMPTS,
    Timing,
    bench_model,
    checkout,
    console,
    free_port,
    loopback_daemon,
    over_grpc,
    over_http,
    percentile,
    print_table,
    verdict,
    write_json,
)

from meshd.client import MeshClient
from meshd.process import DaemonProcess

MODEL = "gemma3-270m"
SLOTS = 4
CONTEXT = 512  # tokens per slot: prompt and answer
Ask = Callable[[str], Timing]


def crowd(ask: Ask, streams: int, each: int, offset: int) -> tuple[list[Timing], float]:
    """`streams` clients at once, each asking `each` prompts in turn; their timings and the
    wall time from the first request to the last token."""
    timings: list[Timing] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(each):
            timing = ask(PROMPTS[(offset + i + j) % len(PROMPTS)])
            with lock:
                timings.append(timing)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return timings, time.perf_counter() - started


def figures(runs: list[tuple[list[Timing], float]]) -> dict[str, float]:
    timings = [t for run, _ in runs for t in run]
    ttfts = [t.ttft * 1000 for t in timings]
    return {
        "tok_s": sum(t.tokens for t in timings) / sum(wall for _, wall in runs),
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        "requests": len(timings),
    }


def runner_rss(daemon: DaemonProcess) -> int:
    with MeshClient(daemon.socket) as mesh:
        return max((m.runner_rss for m in mesh.models()), default=0)


@contextlib.contextmanager
def meshd_side(
    root: Path, model: Path, threads: int, source: Path | None
) -> Iterator[DaemonProcess]:
    """A warm meshd on loopback with SLOTS slots, from this checkout or an older one."""
    env = {"MESHD_SLOTS": str(SLOTS), "MESHD_CONTEXT": str(CONTEXT), "MESHD_THREADS": str(threads)}
    daemon = loopback_daemon(root, MODEL, model, **env)
    if source is not None:  # `python -m` looks in the working folder first
        daemon.env["PYTHONPATH"] = str(source)
        daemon.args = ["env", f"--chdir={source}", *daemon.args]
    with daemon:
        with MeshClient(daemon.address) as mesh:
            mesh.warm(MODEL, wait=True)
        yield daemon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=3, help="per client, per turn")
    parser.add_argument("--rounds", type=int, default=2, help="turns per side and crowd")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model")
    parser.add_argument("--before", help="also an older commit's meshd (e.g. 8ebdc32)")
    parser.add_argument("--skip-llama-server", action="store_true")
    args = parser.parse_args()
    model = bench_model(args.model)
    streams = [int(n) for n in args.streams.split(",")]
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshd-bench-")))
        daemon = stack.enter_context(meshd_side(root / "meshd", model, args.threads, None))
        mesh = stack.enter_context(MeshClient(daemon.address))
        sides: dict[str, Ask] = {
            "meshd HTTP": lambda p: over_http(daemon.http, p, MODEL, args.max_tokens),
            "meshd gRPC": lambda p: over_grpc(mesh, MODEL, p, args.max_tokens),
        }
        servers: dict[str, Any] = {}
        if not args.skip_llama_server:
            port = free_port()
            server = llamaserver.start(
                model, port=port, threads=args.threads, parallel=SLOTS, context=CONTEXT
            )
            stack.callback(server.kill)
            servers["llama-server"] = server
            url = f"http://127.0.0.1:{port}"
            sides["llama-server"] = lambda p: over_http(url, p, MODEL, args.max_tokens)
        if args.before:
            source = stack.enter_context(checkout(args.before))
            old = stack.enter_context(meshd_side(root / "before", model, args.threads, source))
            sides[f"meshd {args.before} HTTP"] = lambda p: over_http(
                old.http, p, MODEL, args.max_tokens
            )
        for ask in sides.values():  # each side's first answer (graph, caches) is not measured
            crowd(ask, 1, 1, 0)
        results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in sides}
        memory: dict[str, int] = {}
        for n in streams:
            runs: dict[str, list[tuple[list[Timing], float]]] = {name: [] for name in sides}
            names = list(sides)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    runs[name].append(crowd(sides[name], n, args.requests, r))
            for name in sides:
                results[name][str(n)] = figures(runs[name])
                console.print(f"{n} streams, {name}: {results[name][str(n)]}")
            if n == SLOTS:
                memory["meshd"] = runner_rss(daemon)
                for name, server in servers.items():
                    memory[name] = psutil.Process(server.pid).memory_info().rss
                if args.before:
                    memory[f"meshd {args.before}"] = runner_rss(old)
    report(results, memory, streams, args)


def report(
    results: dict[str, dict[str, dict[str, float]]],
    memory: dict[str, int],
    streams: list[int],
    args: argparse.Namespace,
) -> None:
    rows = []
    for name, by_n in results.items():
        for n in streams:
            f = by_n[str(n)]
            rows.append(
                [
                    name,
                    str(n),
                    f"{f['tok_s']:.1f}",
                    f"{f['ttft_p50_ms']:.0f}",
                    f"{f['ttft_p99_ms']:.0f}",
                ]
            )
    print_table(
        f"Concurrent streams ({args.max_tokens} tokens each, {args.threads} threads, "
        f"{SLOTS} slots)",
        ["side", "streams", "tok/s (all)", "TTFT p50 ms", "TTFT p99 ms"],
        rows,
    )
    goals: dict[str, bool] = {}
    theirs = results.get("llama-server")
    ours = results["meshd HTTP"]
    if theirs:
        for n in (1, 4, 8):
            if str(n) in ours:
                ratio = ours[str(n)]["tok_s"] / theirs[str(n)]["tok_s"]
                goals[f"tok/s at {n} ≥ 0.95× llama-server ({ratio:.2f}×)"] = ratio >= 0.95
        if "4" in ours:
            ratio = ours["4"]["ttft_p99_ms"] / theirs["4"]["ttft_p99_ms"]
            goals[f"TTFT p99 at 4 ≤ 1.1× llama-server ({ratio:.2f}×)"] = ratio <= 1.1
    if args.before and f"meshd {args.before}" in memory:
        ratio = memory["meshd"] / memory[f"meshd {args.before}"]
        goals[f"memory at 4 ≤ the older engine's ({ratio:.2f}×)"] = ratio <= 1.0
    print_table(
        "Memory at 4 streams",
        ["side", "RSS MiB"],
        [[k, f"{v / 2**20:.0f}"] for k, v in memory.items()],
    )
    print_table("Goals", ["goal", ""], [[k, verdict(v)] for k, v in goals.items()])
    record = {
        "threads": args.threads,
        "slots": SLOTS,
        "context": CONTEXT,
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests,
        "rounds": args.rounds,
        "results": results,
        "memory_bytes": memory,
        "goals": goals,
    }
    console.print(f"wrote {write_json('concurrency', record)}")


if __name__ == "__main__":
    main()
