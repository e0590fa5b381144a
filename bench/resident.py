"""Warm means resident: the first request after the OS paged a warm model out.

On the demo model (Gemma 3 270M, Q4_K_M), with `meshd serve` processes on loopback, each round
times a request on the warm model, pages the runner's mapping out for real
(process_madvise(MADV_PAGEOUT) and fadvise(DONTNEED), as memory pressure does; Linux as root)
and times the first token of the next request (each after a second idle):
- warm: nothing paged out (the reference);
- no keeper: the model was loaded by a request (no lease), so the keeper leaves it to the OS;
- keeper: the model is under a lease; the request comes once the keeper has read it back
  (the time that took is reported too, at the keeper's capped rate and low I/O priority);
- Warm() just before: an unleased model, Warm(wait) called (as an app does when a person opens
  it), then the request; Warm's own time is reported;
- mlock: lock_memory = true: the page-out cannot take the weights.
Goal: keeper and Warm() within 1.1x of warm. Then the keeper's cost while nothing is evicted:
the CPU one measurement of the demo model's pages takes, as a share of one core at the
keeper's period (goal <= 0.1%), and the idle daemon's whole CPU beside it.

Usage: .venv/bin/python bench/resident.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from common import (
    bench_model,
    loopback_daemon,
    over_grpc,
    percentile,
    print_table,
    verdict,
    write_json,
)

from meshd.client import MeshClient
from meshd.engine.keeper import MEASURE_EVERY_S
from meshd.engine.residency import SAMPLE_PAGES, FileResidency, drop_from_cache, page_out
from meshd.types import ModelInfo

MODEL = "demo"
PROMPT = "The capital of France is"
GOAL_RATIO = 1.1
# Every timed request comes after this long idle, the warm reference too: the first request
# after a pause is slower on its own (llama.cpp's threads and the cores wake up), page-out or not.
IDLE_S = 1.0
GOAL_KEEPER_CPU = 0.001


def info(mesh: MeshClient) -> ModelInfo:
    return next(m for m in mesh.models() if m.name == MODEL)


def share(mesh: MeshClient) -> float:
    return info(mesh).resident_share or 0.0


def until(predicate: Callable[[], bool], timeout: float = 120.0, what: str = "") -> float:
    """Seconds until predicate() held (polled every 10 ms)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{what or 'the condition'}: not within {timeout:.0f} s")
        time.sleep(0.01)
    return time.monotonic() - started


def paged_out(mesh: MeshClient) -> None:
    """Page the runner's mapping out, and wait until the daemon measures it so."""
    model = info(mesh)
    try:
        page_out(model.runner_pid, Path(model.path))  # what the runner maps
    except OSError:
        if not model.lock_memory:
            raise  # locked pages cannot be paged out: the point of mlock
    drop_from_cache(Path(model.path))  # and what it does not (read back, not yet touched)
    until(lambda: share(mesh) < 0.5 or model.lock_memory, what="paged out")


def ttft(mesh: MeshClient) -> float:
    return over_grpc(mesh, MODEL, PROMPT, 2).ttft


def scenario(
    home: Path, model: Path, rounds: int, lease: bool, before: str, **env: str
) -> dict[str, list[float]]:
    """rounds of: page out, then `before` ("" nothing, "keeper" wait for it, "warm" Warm()),
    then one request; TTFTs and the times the page-in took."""
    out: dict[str, list[float]] = {"ttft": [], "page_in": [], "warm_ttft": []}
    print(f"{home.name}: lease={lease} before={before or 'nothing'} {env or ''}", flush=True)
    with loopback_daemon(home, MODEL, model, **env) as daemon, MeshClient(daemon.address) as mesh:
        mesh.warm(MODEL, lease=3600 if lease else 0, wait=True)
        until(lambda: share(mesh) > 0.99, what="resident after the load")
        for _ in range(rounds):
            time.sleep(IDLE_S)
            out["warm_ttft"].append(ttft(mesh))
            paged_out(mesh)
            if before == "keeper":
                out["page_in"].append(until(lambda: share(mesh) > 0.99, what="kept"))
            elif before == "warm":
                started = time.perf_counter()
                mesh.warm(MODEL, wait=True)
                out["page_in"].append(time.perf_counter() - started)
            time.sleep(IDLE_S)
            out["ttft"].append(ttft(mesh))
    return out


def keeper_cost(home: Path, model: Path) -> dict[str, float]:
    """One measurement's CPU on the demo model's used pages, and the idle daemon's CPU."""
    with loopback_daemon(home, MODEL, model) as daemon, MeshClient(daemon.address) as mesh:
        mesh.warm(MODEL, lease=3600, wait=True)
        until(lambda: share(mesh) > 0.99)
        process = psutil.Process(daemon.proc.pid if daemon.proc else 0)
        before, started = process.cpu_times(), time.monotonic()
        time.sleep(20)
        after, elapsed = process.cpu_times(), time.monotonic() - started
    idle = (after.user + after.system - before.user - before.system) / elapsed
    with FileResidency(model) as file:  # as the keeper measures: SAMPLE_PAGES at most
        file.measure(most=SAMPLE_PAGES)
        begun = time.thread_time()
        for _ in range(100):
            file.measure(most=SAMPLE_PAGES)
        one = (time.thread_time() - begun) / 100
    return {"measure_cpu_s": one, "keeper_core_share": one / MEASURE_EVERY_S, "daemon_idle": idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", help="a GGUF file (default: the demo's Gemma 3 270M)")
    args = parser.parse_args()
    if sys.platform != "linux" or os.geteuid() != 0:
        raise SystemExit("paging a runner out takes process_madvise(MADV_PAGEOUT): Linux, root")
    model = bench_model(args.model)
    runs: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="meshd-bench-resident-") as tmp:
        base = Path(tmp)
        # The keeper of the unleased daemons is kept out by lease, not by a setting.
        runs["no keeper"] = scenario(base / "a", model, args.rounds, False, "")
        runs["keeper"] = scenario(base / "b", model, args.rounds, True, "keeper")
        runs["Warm() just before"] = scenario(base / "c", model, args.rounds, False, "warm")
        runs["mlock"] = scenario(
            base / "d", model, args.rounds, False, "", MESHD_LOCK_MEMORY="true"
        )
        cost = keeper_cost(base / "e", model)
    report(runs, cost, model)


def report(runs: dict[str, dict[str, list[float]]], cost: dict[str, float], model: Path) -> None:
    warm = [t for run in runs.values() for t in run["warm_ttft"]]
    reference = percentile(warm, 50)
    rows = [["warm (reference)", f"{1000 * reference:,.0f} ms", "1.00x", "", ""]]
    record: dict[str, Any] = {"model": str(model), "warm_ttft_p50_s": reference, "runs": {}}
    for name, run in runs.items():
        p50 = percentile(run["ttft"], 50)
        # Each round against the warm TTFT taken just before its page-out: the machine's noise
        # moves both alike.
        ratio = percentile([t / w for t, w in zip(run["ttft"], run["warm_ttft"], strict=True)], 50)
        page_in = f"{percentile(run['page_in'], 50):.2f} s" if run["page_in"] else ""
        goal = verdict(ratio <= GOAL_RATIO) if name in ("keeper", "Warm() just before") else ""
        rows.append([name, f"{1000 * p50:,.0f} ms", f"{ratio:.2f}x", page_in, goal])
        record["runs"][name] = {**run, "ttft_p50_s": p50, "ratio_to_warm": ratio}
    print_table(
        "first token after the OS paged the model out (p50)",
        ["", "TTFT", "vs warm (same round)", "page-in took", "goal ≤ 1.1x"],
        rows,
    )
    share = cost["keeper_core_share"]
    print_table(
        "the keeper's cost while nothing is evicted",
        ["", "value", "goal"],
        [
            ["one measurement (CPU)", f"{1000 * cost['measure_cpu_s']:.2f} ms", ""],
            [
                f"share of a core, every {MEASURE_EVERY_S:.0f} s",
                f"{100 * share:.3f}%",
                verdict(share <= GOAL_KEEPER_CPU),
            ],
            ["the idle daemon, all of it", f"{100 * cost['daemon_idle']:.2f}%", ""],
        ],
    )
    record["keeper"] = cost
    print(f"wrote {write_json('resident', record)}")


if __name__ == "__main__":
    main()
