"""The HTTP door: what it adds to gRPC, and how it compares with llama-cpp-python's own server.

    .venv/bin/python bench/http_door.py [--threads 2] [--prompts 40] [--model PATH]

- HTTP vs gRPC: time to first token (p50, p99) and decode speed of the same warm daemon, asked
  in turns over its OpenAI-compatible HTTP API (streamed completions) and over gRPC
  (MeshClient); goal: HTTP adds at most 1 ms at p50.
- meshd vs llama-cpp-python[server]: the same model, threads, context and prompts, both
  streamed over HTTP with the same client; one client at a time (goal: meshd's TTFT p50 at
  most theirs) and 8 at once (goal: meshd's TTFT p99 at most theirs). Their server needs
  `pip install fastapi sse-starlette starlette-context pydantic-settings` (the `bench` extra).
Prints tables and writes bench/results/http.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    PROMPTS,
    Timing,
    alternate,
    answers,
    bench_model,
    console,
    free_port,
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
MAX_TOKENS = 16


def rotating(fn: Callable[[str], Timing]) -> Callable[[], Timing]:
    counter = iter(range(10**9))
    return lambda: fn(PROMPTS[next(counter) % len(PROMPTS)])


def concurrent(fn: Callable[[str], Timing], clients: int, each: int) -> list[Timing]:
    """clients threads, each asking `each` prompts one after another."""
    results: list[Timing] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(each):
            timing = fn(PROMPTS[(i + j) % len(PROMPTS)])
            with lock:
                results.append(timing)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def llama_server(model: Path, threads: int, port: int) -> subprocess.Popen[bytes]:
    """llama-cpp-python's OpenAI server on the same model, threads and context."""
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        MODEL,
        "--n_threads",
        str(threads),
        "--n_ctx",
        "512",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--verbose",
        "False",
        # By default it aborts the answer being streamed when another request arrives: quick
        # first tokens under load, and cut answers. Off, it finishes every answer, like meshd.
        "--interrupt_requests",
        "False",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not answers(server, port, "/v1/models", 120):
        server.kill()
        raise RuntimeError("llama_cpp.server did not start (pip install the `bench` extra?)")
    return server


def summary(timings: list[Timing]) -> dict[str, float]:
    ttft = [t.ttft for t in timings]
    return {
        "ttft_p50_ms": 1000 * percentile(ttft, 50),
        "ttft_p99_ms": 1000 * percentile(ttft, 99),
        "tok_s": percentile([t.tok_s for t in timings if t.tok_s], 50),
        "n": len(timings),
        "whole_answers": sum(t.tokens >= MAX_TOKENS for t in timings) / len(timings),
    }


def measure(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    serve = ["--threads", str(args.threads), "--context", "512", "--no-discovery"]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="meshd-bench-http-") as tmp:
        env = {"MESHD_INSECURE_DEV": "true"}
        with DaemonProcess(Path(tmp), [f"{MODEL}={model}"], env=env, extra_args=serve) as daemon:
            with MeshClient(daemon.socket) as mesh:
                mesh.warm(MODEL, wait=True)
                http_ask = rotating(lambda p: over_http(daemon.http, p, MODEL, MAX_TOKENS))
                grpc_ask = rotating(lambda p: over_grpc(mesh, MODEL, p, MAX_TOKENS))
                for _ in range(4):
                    http_ask(), grpc_ask()
                h, g = alternate(http_ask, grpc_ask, args.prompts)
            results["http"], results["grpc"] = summary(h), summary(g)
            if not args.skip_llama_server:
                results.update(against_llama_server(model, daemon.http, args))
    return results


def against_llama_server(model: Path, meshd_http: str, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = llama_server(model, args.threads, port)
    theirs_url = f"http://127.0.0.1:{port}"
    try:
        ours = rotating(lambda p: over_http(meshd_http, p, MODEL))
        theirs = rotating(lambda p: over_http(theirs_url, p, MODEL))
        for _ in range(4):
            ours(), theirs()
        o, t = alternate(ours, theirs, args.prompts)
        crowd: dict[str, list[Timing]] = {"meshd_8": [], "llama_server_8": []}
        for _ in range(2):  # in turns, twice
            crowd["meshd_8"] += concurrent(lambda p: over_http(meshd_http, p, MODEL), 8, 3)
            crowd["llama_server_8"] += concurrent(lambda p: over_http(theirs_url, p, MODEL), 8, 3)
    finally:
        server.terminate()
        server.wait(30)
    return {
        "meshd_1": summary(o),
        "llama_server_1": summary(t),
        **{k: summary(v) for k, v in crowd.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a GGUF [default: the demo's Gemma 3 270M]")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--prompts", type=int, default=40, help="requests per side")
    parser.add_argument("--skip-llama-server", action="store_true")
    args = parser.parse_args()
    results = measure(bench_model(args.model), args)
    h, g = results["http"], results["grpc"]
    extra = h["ttft_p50_ms"] - g["ttft_p50_ms"]
    rows = [
        [
            "TTFT p50",
            f"{g['ttft_p50_ms']:.1f} ms",
            f"{h['ttft_p50_ms']:.1f} ms",
            f"+{extra:.2f} ms",
            verdict(extra <= 1.0) + " (≤ +1 ms)",
        ],
        [
            "TTFT p99",
            f"{g['ttft_p99_ms']:.1f} ms",
            f"{h['ttft_p99_ms']:.1f} ms",
            f"+{h['ttft_p99_ms'] - g['ttft_p99_ms']:.2f} ms",
            "",
        ],
        ["decode tok/s", f"{g['tok_s']:.1f}", f"{h['tok_s']:.1f}", "", ""],
    ]
    print_table(
        "the same warm daemon: gRPC vs HTTP", ["", "gRPC", "HTTP", "HTTP adds", "goal"], rows
    )
    if "meshd_1" in results:
        m1, l1, m8, l8 = (
            results[k] for k in ("meshd_1", "llama_server_1", "meshd_8", "llama_server_8")
        )
        rows = [
            [
                "1 client: TTFT p50",
                f"{m1['ttft_p50_ms']:.1f} ms",
                f"{l1['ttft_p50_ms']:.1f} ms",
                verdict(m1["ttft_p50_ms"] <= l1["ttft_p50_ms"]),
            ],
            [
                "1 client: TTFT p99",
                f"{m1['ttft_p99_ms']:.1f} ms",
                f"{l1['ttft_p99_ms']:.1f} ms",
                "",
            ],
            ["1 client: decode tok/s", f"{m1['tok_s']:.1f}", f"{l1['tok_s']:.1f}", ""],
            [
                "8 clients: TTFT p50",
                f"{m8['ttft_p50_ms']:.0f} ms",
                f"{l8['ttft_p50_ms']:.0f} ms",
                "",
            ],
            [
                "8 clients: TTFT p99",
                f"{m8['ttft_p99_ms']:.0f} ms",
                f"{l8['ttft_p99_ms']:.0f} ms",
                verdict(m8["ttft_p99_ms"] <= l8["ttft_p99_ms"]),
            ],
        ]
        print_table(
            "meshd vs llama-cpp-python[server], same model and threads",
            ["", "meshd", "llama-cpp-python", "goal"],
            rows,
        )
    path = write_json("http", {"threads": args.threads, "max_tokens": MAX_TOKENS, **results})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
