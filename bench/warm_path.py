"""The warm path on the real demo model: what meshd adds to llama.cpp, and what warming hides.

    .venv/bin/python bench/warm_path.py [--model PATH] [--threads 2] [--compare-threads 1]

Everything is measured side by side in one run (this machine is shared and noisy), and
requests alternate between the two sides so that drift hits both alike. Prints tables and
writes bench/results/warm_path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import (
    alternate,
    bench_model,
    console,
    percentile,
    print_table,
    verdict,
    write_json,
)
from llama_cpp import Llama, llama_vocab_is_eog

from meshd.client import MeshClient
from meshd.config import ModelSpec, Settings
from meshd.engine import Engine
from meshd.engine.residency import drop_from_cache
from meshd.engine.runnerproc import RunnerOptions, RunnerProcess
from meshd.process import DaemonProcess
from meshd.runner.protocol import LoadOptions
from meshd.types import GenerateRequest, ModelState, Sampling, WarmRequest

MODEL = "gemma"
COUNTRIES = [
    "France",
    "Japan",
    "Peru",
    "Kenya",
    "Norway",
    "Chile",
    "Egypt",
    "Canada",
    "India",
    "Spain",
    "Ghana",
    "Italy",
    "Nepal",
    "Cuba",
    "Mali",
]
DECODE_PROMPT = "Once upon a time, in a small village by the sea,"


def prompts(n: int) -> list[str]:
    """n different prompts of similar length: no request finds its whole prompt cached."""
    return [f"Fact {i}: the capital city of {COUNTRIES[i % len(COUNTRIES)]} is" for i in range(n)]


class Direct:
    """llama-cpp-python in this process: the token loop meshd itself runs, with no RPC around it.

    ttft_completion() is the documented high-level API, shown for reference.
    """

    def __init__(self, path: Path, threads: int, context: int) -> None:
        self.llm = Llama(
            model_path=str(path),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            verbose=False,
        )
        self.llm.eval([self.llm.token_bos()])

    def _tokens(self, prompt: str) -> Any:
        tokens = self.llm.tokenize(prompt.encode(), add_bos=True)
        return self.llm.generate(
            tokens, top_k=40, top_p=0.95, min_p=0.0, temp=0.0, repeat_penalty=1.0
        )

    def ttft(self, prompt: str) -> float:
        started = time.perf_counter()
        stream = self._tokens(prompt)
        next(stream)
        elapsed = time.perf_counter() - started
        stream.close()
        return elapsed

    def ttft_completion(self, prompt: str) -> float:
        started = time.perf_counter()
        stream = self.llm.create_completion(prompt, max_tokens=2, temperature=0, stream=True)
        next(iter(stream))
        elapsed = time.perf_counter() - started
        stream.close()
        return elapsed

    def decode_rate(self, max_tokens: int) -> float:
        stream, count, first = self._tokens(DECODE_PROMPT), 0, 0.0
        for token in stream:
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count == max_tokens or llama_vocab_is_eog(self.llm._model.vocab, token):
                break
        elapsed = time.perf_counter() - first
        stream.close()
        return (count - 1) / elapsed

    def close(self) -> None:
        self.llm.close()


class ThroughMeshd:
    """The same model behind `meshd serve`, asked through MeshClient over loopback."""

    def __init__(self, mesh: MeshClient) -> None:
        self.mesh = mesh

    def ttft(self, prompt: str) -> float:
        started = time.perf_counter()
        stream = self.mesh.generate(MODEL, prompt, max_tokens=2, temperature=0)
        next(stream)
        elapsed = time.perf_counter() - started
        stream.close()
        return elapsed

    def decode_rate(self, max_tokens: int) -> float:
        first_at, first_tokens, last = 0.0, 0, None
        for chunk in self.mesh.generate(MODEL, DECODE_PROMPT, max_tokens=max_tokens, temperature=0):
            if last is None:
                first_at, first_tokens = time.perf_counter(), chunk.tokens
            last = chunk
        assert last is not None
        return (last.tokens - first_tokens) / (time.perf_counter() - first_at)


def overhead_section(path: Path, home: Path, args: argparse.Namespace, threads: int) -> dict:
    """TTFT and decode rate, direct vs through meshd, interleaved, at one thread count."""
    serve_args = ["--threads", str(threads), "--context", str(args.context)]
    direct = Direct(path, threads, args.context)
    try:
        with (
            DaemonProcess(
                home / f"overhead-{threads}", [f"{MODEL}={path}"], extra_args=serve_args
            ) as daemon,
            MeshClient(daemon.address) as mesh,
        ):
            mesh.warm(MODEL, wait=True)
            meshd = ThroughMeshd(mesh)
            for p in prompts(4):  # both sides past their first-call costs
                direct.ttft(p), meshd.ttft(p)
            items = iter(prompts(args.prompts) * 2)
            d_ttft, m_ttft = alternate(
                lambda: direct.ttft(next(items)), lambda: meshd.ttft(next(items)), args.prompts
            )
            d_rate, m_rate = alternate(
                lambda: direct.decode_rate(args.decode_tokens),
                lambda: meshd.decode_rate(args.decode_tokens),
                args.decode_rounds,
            )
    finally:
        direct.close()
    return {
        "threads": threads,
        "ttft_direct_s": d_ttft,
        "ttft_meshd_s": m_ttft,
        "decode_direct_tps": d_rate,
        "decode_meshd_tps": m_rate,
    }


async def _hop_times(
    path: Path, args: argparse.Namespace, threads: int
) -> tuple[list[float], list[float]]:
    """TTFT straight from a runner process (no gRPC, no daemon) against direct, alternating."""
    direct = Direct(path, threads, args.context)
    runner = RunnerProcess(RunnerOptions(), "bench")
    await runner.spawn()
    await runner.load(LoadOptions(str(path), 1, args.context, threads, 512, True))

    async def through_runner(prompt: str) -> float:
        request = GenerateRequest(MODEL, prompt, max_tokens=2, sampling=Sampling(temperature=0))
        released = asyncio.Event()
        started = time.perf_counter()
        chunks = runner.stream(0, request, released.set)
        await anext(chunks)
        elapsed = time.perf_counter() - started
        await chunks.aclose()
        await released.wait()
        return elapsed

    d_times, r_times = [], []
    try:
        for prompt in prompts(args.prompts):
            d_times.append(direct.ttft(prompt))
            r_times.append(await through_runner(prompt))
    finally:
        await runner.close()
        direct.close()
    return d_times, r_times


def hop_section(path: Path, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """What the runner process alone adds to the first token."""
    direct, runner = asyncio.run(_hop_times(path, args, threads))
    return {"threads": threads, "ttft_direct_s": direct, "ttft_runner_s": runner}


def print_hop(hops: list[dict[str, Any]]) -> None:
    rows = []
    for h in hops:
        d, r = percentile(h["ttft_direct_s"], 50), percentile(h["ttft_runner_s"], 50)
        rows.append([f"TTFT p50, {h['threads']} thr", ms(d), ms(r), f"{r / d:.3f} (+{ms(r - d)})"])
    print_table(
        "the runner hop alone: direct vs a runner process (no gRPC, no daemon)",
        ["measure", "direct", "runner", "ratio"],
        rows,
    )


def first_token_after(mesh: MeshClient, since: float | None = None) -> float:
    started = time.perf_counter() if since is None else since
    stream = mesh.generate(MODEL, "The capital of France is", max_tokens=2, temperature=0)
    next(stream)
    elapsed = time.perf_counter() - started
    stream.close()
    return elapsed


def warming_section(path: Path, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Cold start vs cold model vs warm vs preemptively warmed, each on fresh daemons."""
    serve_args = ["--threads", str(args.threads), "--context", str(args.context)]
    spec = [f"{MODEL}={path}"]
    cold_start, cold_model, warm, warmed = [], [], [], []
    for r in range(args.rounds):
        spawned = time.perf_counter()
        with (
            DaemonProcess(home / f"cold-{r}", spec, extra_args=serve_args) as d,
            MeshClient(d.address) as mesh,
        ):
            cold_start.append(first_token_after(mesh, since=spawned))
            warm.extend(first_token_after(mesh) for _ in range(5))
        with (
            DaemonProcess(home / f"model-{r}", spec, extra_args=serve_args) as d,
            MeshClient(d.address) as mesh,
        ):
            cold_model.append(first_token_after(mesh))
    lead = 1.2 * statistics.median(cold_model)  # warm() comes at least one load time ahead
    for r in range(args.rounds):
        with (
            DaemonProcess(home / f"warmed-{r}", spec, extra_args=serve_args) as d,
            MeshClient(d.address) as mesh,
        ):
            mesh.warm(MODEL, lease=60)
            time.sleep(lead)
            warmed.append(first_token_after(mesh))
    return {
        "cold_start_s": cold_start,
        "cold_model_s": cold_model,
        "warm_s": warm,
        "preemptively_warmed_s": warmed,
        "warm_lead_s": lead,
    }


async def _load_times(
    engine: Engine, path: Path, rounds: int, *, from_disk: bool, after_kill: bool
) -> list[float]:
    """Seconds from warm() to a warm model: a new runner maps the file and evaluates a token."""
    times = []
    host = engine.hosts[MODEL]
    for _ in range(rounds):
        if after_kill:
            await engine.warm(WarmRequest(MODEL, wait=True))
            runner = host.runner
            assert runner is not None
            os.kill(runner.pid, signal.SIGKILL)  # the runner dies; the page cache stays
            await runner.ended
            await asyncio.sleep(0)  # the model hears of it
            assert host.state is ModelState.FAILED
        if from_disk:
            drop_from_cache(path)
        started = time.perf_counter()
        await engine.warm(WarmRequest(MODEL, wait=True))
        times.append(time.perf_counter() - started)
        await host.unload()  # evicted
        await asyncio.sleep(1.0)  # idle, as between real loads: the spare runner gets ready
    return times


def _settings(path: Path, home: Path, args: argparse.Namespace, **more: Any) -> Settings:
    return Settings(
        home=home,
        models=(ModelSpec(MODEL, path),),
        threads=args.threads,
        context=args.context,
        **more,
    )


async def _reloads(path: Path, home: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    result: dict[str, list[float]] = {}
    for mmap in (True, False):
        engine = Engine(_settings(path, home, args, use_mmap=mmap))
        await engine.start()
        try:
            for from_disk in (False, True):
                key = f"{'mmap' if mmap else 'read'}_{'disk' if from_disk else 'page_cache'}_s"
                result[key] = await _load_times(
                    engine, path, args.rounds, from_disk=from_disk, after_kill=False
                )
            if mmap:
                result["mmap_after_kill_s"] = await _load_times(
                    engine, path, args.rounds, from_disk=False, after_kill=True
                )
        finally:
            await engine.close()
    return result


def in_process_loads(path: Path, args: argparse.Namespace) -> list[float]:
    """The load as the daemon did it before runners: llama.cpp in this very process."""
    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        Direct(path, args.threads, args.context).close()
        times.append(time.perf_counter() - started)
    return times


def reload_section(path: Path, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Load + warm of an evicted model: page cache vs disk, mmap on and off, after a kill."""
    result: dict[str, Any] = asyncio.run(_reloads(path, home, args))
    result["in_process_page_cache_s"] = in_process_loads(path, args)
    return result


async def _memory(path: Path, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Resident memory of one runner, and of two runners of the same file (two model names)."""
    settings = Settings(
        home=home,
        models=(ModelSpec("one", path), ModelSpec("two", path)),
        threads=args.threads,
        context=args.context,
    )
    engine = Engine(settings)
    await engine.start()
    try:
        await engine.warm(WarmRequest("one", wait=True))
        alone = _runner_memory(engine, "one")
        await engine.warm(WarmRequest("two", wait=True))
        pair = [_runner_memory(engine, "one"), _runner_memory(engine, "two")]
    finally:
        await engine.close()
    return {"one_runner": alone, "two_runners": pair}


def _runner_memory(engine: Engine, name: str) -> dict[str, int]:
    runner = engine.hosts[name].runner
    assert runner is not None
    full = psutil.Process(runner.pid).memory_full_info()
    return {"rss": full.rss, "pss": full.pss, "uss": full.uss, "shared": full.shared}


def memory_section(path: Path, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {**asyncio.run(_memory(path, home, args)), "file_bytes": path.stat().st_size}


def ms(seconds: float) -> str:
    return f"{1000 * seconds:,.1f} ms"


def summarize_overhead(o: dict[str, Any]) -> dict[str, float]:
    """Ratios and added milliseconds for one thread count."""
    d50, m50 = percentile(o["ttft_direct_s"], 50), percentile(o["ttft_meshd_s"], 50)
    d99, m99 = percentile(o["ttft_direct_s"], 99), percentile(o["ttft_meshd_s"], 99)
    dr, mr = statistics.median(o["decode_direct_tps"]), statistics.median(o["decode_meshd_tps"])
    return {
        "threads": o["threads"],
        "ttft_direct_p50_ms": 1000 * d50,
        "ttft_meshd_p50_ms": 1000 * m50,
        "ttft_direct_p99_ms": 1000 * d99,
        "ttft_meshd_p99_ms": 1000 * m99,
        "ttft_ratio_p50": m50 / d50,
        "ttft_ratio_p99": m99 / d99,
        "added_ms_p50": 1000 * (m50 - d50),
        "added_ms_p99": 1000 * (m99 - d99),
        "decode_direct_tps": dr,
        "decode_meshd_tps": mr,
        "decode_ratio": statistics.median(
            m / d for m, d in zip(o["decode_meshd_tps"], o["decode_direct_tps"], strict=True)
        ),
    }


def print_overhead(summaries: list[dict[str, float]]) -> None:
    rows = []
    for s in summaries:
        t = f"{s['threads']:.0f} thr"
        rows += [
            [
                f"TTFT p50, {t}",
                f"{s['ttft_direct_p50_ms']:.1f} ms",
                f"{s['ttft_meshd_p50_ms']:.1f} ms",
                f"{s['ttft_ratio_p50']:.3f} (+{s['added_ms_p50']:.1f} ms)",
                "≤ 1.05",
                verdict(s["ttft_ratio_p50"] <= 1.05),
            ],
            [
                f"TTFT p99, {t}",
                f"{s['ttft_direct_p99_ms']:.1f} ms",
                f"{s['ttft_meshd_p99_ms']:.1f} ms",
                f"{s['ttft_ratio_p99']:.3f} (+{s['added_ms_p99']:.1f} ms)",
                "≤ 1.10",
                verdict(s["ttft_ratio_p99"] <= 1.10),
            ],
            [
                f"decode tok/s, {t}",
                f"{s['decode_direct_tps']:.1f}",
                f"{s['decode_meshd_tps']:.1f}",
                f"{s['decode_ratio']:.3f}",
                "≥ 0.98",
                verdict(s["decode_ratio"] >= 0.98),
            ],
        ]
    print_table(
        "meshd vs direct llama-cpp-python (same model, context, thread count)",
        ["measure", "direct", "through meshd", "ratio", "goal", ""],
        rows,
    )


def summarize_warming(w: dict[str, Any]) -> dict[str, float]:
    cs, cm = statistics.median(w["cold_start_s"]), statistics.median(w["cold_model_s"])
    wm, pw = statistics.median(w["warm_s"]), statistics.median(w["preemptively_warmed_s"])
    return {
        "cold_start_ms": 1000 * cs,
        "cold_model_ms": 1000 * cm,
        "warm_ms": 1000 * wm,
        "preemptively_warmed_ms": 1000 * pw,
        "warm_lead_s": w["warm_lead_s"],
        "hidden_of_cold_start": 1 - (pw - wm) / (cs - wm),
        "hidden_of_model_load": 1 - (pw - wm) / (cm - wm),
    }


def print_warming(s: dict[str, float]) -> None:
    hidden = f"{100 * s['hidden_of_cold_start']:.1f}% / {100 * s['hidden_of_model_load']:.1f}%"
    print_table(
        "time to first token (medians)",
        ["scenario", "TTFT", "note"],
        [
            [
                "cold start",
                f"{s['cold_start_ms']:,.1f} ms",
                "new daemon process + load + 1st token",
            ],
            ["cold model", f"{s['cold_model_ms']:,.1f} ms", "daemon running, model not loaded"],
            ["warm", f"{s['warm_ms']:,.1f} ms", "model resident"],
            [
                "preemptively warmed",
                f"{s['preemptively_warmed_ms']:,.1f} ms",
                f"Warm() {s['warm_lead_s']:.2f} s ahead",
            ],
            [
                "load hidden (of cold start / of model load)",
                hidden,
                f"goal ≥ 95%: {verdict(s['hidden_of_model_load'] >= 0.95)}",
            ],
        ],
    )


def print_reload(r: dict[str, Any]) -> None:
    def cell(key: str) -> str:
        return ms(statistics.median(r[key]))

    print_table(
        "load of an evicted model (load + first token evaluated, median)",
        ["how", "from page cache", "from disk"],
        [
            ["runner process, mmap", cell("mmap_page_cache_s"), cell("mmap_disk_s")],
            ["runner process, read into RAM", cell("read_page_cache_s"), cell("read_disk_s")],
            ["runner process after a SIGKILL", cell("mmap_after_kill_s"), "-"],
            ["in the daemon process (before runners)", cell("in_process_page_cache_s"), "-"],
        ],
    )


def print_memory(m: dict[str, Any]) -> None:
    def mib(n: int) -> str:
        return f"{n / 2**20:,.0f} MiB"

    one, (a, b) = m["one_runner"], m["two_runners"]
    print_table(
        f"runner memory, one model file ({mib(m['file_bytes'])})",
        ["runners", "RSS (sum)", "PSS (sum)", "USS (sum)"],
        [
            ["one", mib(one["rss"]), mib(one["pss"]), mib(one["uss"])],
            [
                "two of the same file",
                mib(a["rss"] + b["rss"]),
                mib(a["pss"] + b["pss"]),
                mib(a["uss"] + b["uss"]),
            ],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="GGUF to use [default: the demo's Gemma 3 270M]")
    parser.add_argument("--prompts", type=int, default=60, help="TTFT samples per side")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--decode-rounds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="cold/warm/reload repetitions")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument(
        "--compare-threads",
        type=int,
        nargs="*",
        default=[1],
        help="also measure the overhead at these thread counts",
    )
    parser.add_argument("--context", type=int, default=2048)
    args = parser.parse_args()
    path = bench_model(args.model)
    console.print(f"model: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        home = Path(tmp)
        overhead = []
        for threads in [args.threads, *args.compare_threads]:
            with console.status(f"direct vs meshd, {threads} thread(s)…"):
                overhead.append(overhead_section(path, home, args, threads))
        with console.status("the runner hop alone…"):
            hops = [hop_section(path, args, t) for t in [args.threads, *args.compare_threads]]
        with console.status("cold vs warm vs preemptively warmed…"):
            warming = warming_section(path, home, args)
        with console.status("reloads…"):
            reload = reload_section(path, home / "reload", args)
        with console.status("runner memory…"):
            memory = memory_section(path, home / "memory", args)
    summary = {
        "overhead": [summarize_overhead(o) for o in overhead],
        "warming": summarize_warming(warming),
    }
    print_overhead(summary["overhead"])
    print_hop(hops)
    print_warming(summary["warming"])
    print_reload(reload)
    print_memory(memory)
    out = write_json(
        "warm_path",
        {
            "model": str(path),
            "args": vars(args),
            "summary": summary,
            "overhead": overhead,
            "warming": warming,
            "reload": reload,
            "memory": memory,
            "runner_hop": hops,
        },
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
