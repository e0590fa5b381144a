"""Warm the prompt, not only the weights: time to first token after a long system prompt.

On the demo model (Gemma 3 270M, Q4_K_M), with `meshd serve` processes on loopback:
- one peer: a question after a ~1,500-token system prompt, asked of a daemon whose model is
  cold (no warm), warm (Warm() waited for, another team's system prompt in its slot), or warm
  with that system prompt warmed too (Warm(prefix=...) waited for). Goal: prefix warmed
  ≤ 0.1 × model warmed. Rounds alternate, each with system prompts of its own.
- a pinned prefix ([prefixes.NAME] in meshd.toml) after a daemon restart: the first question
  after the load, with the prefix's saved state on disk (restored) or not (evaluated again),
  and the time the daemon logs for each, rounds alternating.
- two peers, the model warm on both, a different system prompt warmed on each; an app asks
  the two peers in turn (equal load), each question after one of the two system prompts at
  random. Share of requests served by the peer holding their prefix (goal ≥ 95%) and TTFT
  p50, with prefix-aware routing and with routing by load and RTT alone (`route_by_prefix =
  false`, how meshd routed before), side by side in one run.

Usage: .venv/bin/python bench/prefix.py [--rounds 3] [--requests 16]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    bench_model,
    loopback_daemon,
    machine,
    percentile,
    print_table,
    verdict,
    write_json,
)
from meshd.cli.demo import system_prompt  # ~1,500 tokens, as `meshd demo` uses

from meshd.client import MeshClient
from meshd.process import DaemonProcess

MODEL = "demo"
PREFIX_GOAL = 0.1
SHARE_GOAL = 0.95
QUESTION = "\n\nCustomer: Hello, can I exchange a gift?\nAnswer:"


def daemon(home: Path, model: Path, **env: str) -> DaemonProcess:
    """A `meshd serve` process on loopback with default settings (one slot, 2 threads)."""
    return loopback_daemon(home, MODEL, model, **env)


def ttft(mesh: MeshClient, prompt: str) -> tuple[float, Any]:
    """Seconds to the first chunk, and the last chunk."""
    started = time.perf_counter()
    first, last = 0.0, None
    for chunk in mesh.generate(MODEL, prompt, max_tokens=4, temperature=0.0):
        first = first or time.perf_counter() - started
        last = chunk
    return first, last


def one_peer(root: Path, model: Path, rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"no warm": [], "model warmed": [], "prefix warmed": []}
    cached: list[int] = []
    for i in range(rounds):
        order = list(times) if i % 2 == 0 else list(reversed(times))
        for scenario in order:
            system = system_prompt(f"{scenario[0]}{i}")
            home = root / f"{scenario}-{i}".replace(" ", "-")
            with daemon(home, model) as d, MeshClient(d.address) as mesh:
                if scenario == "model warmed":
                    mesh.warm(MODEL, wait=True)
                    ttft(mesh, system_prompt(f"o{i}") + QUESTION)  # another team's
                elif scenario == "prefix warmed":
                    mesh.warm(MODEL, wait=True, prefix=system)
                seconds, last = ttft(mesh, system + QUESTION)
            times[scenario].append(seconds)
            if scenario == "prefix warmed":
                cached.append(last.cached_tokens)
    return {
        **{f"{k}_p50_s": percentile(v, 50) for k, v in times.items()},
        "prompt_tokens": last.prompt_tokens,
        "cached_tokens_p50": percentile([float(c) for c in cached], 50),
    }


def pinned(root: Path, model: Path, rounds: int) -> dict[str, float]:
    home = root / "pinned"
    home.mkdir(parents=True, exist_ok=True)
    system = system_prompt("pinned desk")
    (home / "desk.txt").write_text(system)
    (home / "meshd.toml").write_text('[prefixes.desk]\nmodel = "demo"\nfile = "desk.txt"\n')
    state = home / "prefixes" / "desk.state"
    times: dict[str, list[float]] = {"restored": [], "evaluated": []}
    logged: dict[str, list[float]] = {"restored": [], "evaluated": []}
    for i in range(2 * rounds + 1):
        kind = "evaluated" if i % 2 == 0 else "restored"
        if kind == "evaluated":
            state.unlink(missing_ok=True)
        with daemon(home, model) as d, MeshClient(d.address) as mesh:
            mesh.warm(MODEL, wait=True)
            seconds, last = ttft(mesh, system + QUESTION)
            log_text = d.log_path.read_text()
        if i == 0:
            continue  # the first load of the file from disk: not compared
        times[kind].append(seconds)
        word = "restored from disk" if kind == "restored" else "evaluated and saved"
        took = [line for line in log_text.splitlines() if "'desk'" in line and word in line]
        logged[kind].append(float(took[-1].rsplit(" in ", 1)[1].split()[0]) / 1000 if took else 0)
        assert last.cached_tokens > 1000, "the question found the pinned prefix"
    return {
        **{f"first_question_{k}_p50_s": percentile(v, 50) for k, v in times.items()},
        **{f"logged_{k}_p50_s": percentile(v, 50) for k, v in logged.items()},
        "state_mib": state.stat().st_size / 2**20,
    }


def two_peers(root: Path, model: Path, requests: int, by_prefix: bool) -> dict[str, float]:
    flag = {"MESHD_ROUTE_BY_PREFIX": "true" if by_prefix else "false"}
    name = "prefix" if by_prefix else "load"
    a = daemon(root / f"{name}-a", model, **flag).start()
    try:
        with daemon(root / f"{name}-b", model, MESHD_PEERS=a.address, **flag) as b:
            clients = [MeshClient(a.address), MeshClient(b.address)]
            ids = [c.status().peer_id for c in clients]
            systems = [system_prompt("bakery"), system_prompt("bicycle shop")]
            for client, system in zip(clients, systems, strict=True):
                # each peer holds one (asked with local_only: the peer asked serves it)
                client.warm(MODEL, wait=True)
                client.complete(MODEL, system, max_tokens=1, local_only=True)
            while sum(p.alive for p in clients[0].mesh_status().peers) < 2:
                time.sleep(0.1)
            time.sleep(1.5)  # a heartbeat or two: each knows what the other holds
            rng = random.Random(7)
            hits, times = 0, []
            for i in range(requests):
                which = rng.randrange(2)
                seconds, last = ttft(clients[i % 2], systems[which] + QUESTION)
                times.append(seconds)
                hits += last.served_by == ids[which]
            for client in clients:
                client.close()
    finally:
        a.stop()
    return {"share_where_warm": hits / requests, "ttft_p50_s": percentile(times, 50)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--model", default=None, help="a GGUF file [default: the demo model]")
    args = parser.parse_args()
    model = bench_model(args.model)
    with tempfile.TemporaryDirectory(prefix="meshd-bench-prefix-") as tmp:
        root = Path(tmp)
        single = one_peer(root, model, args.rounds)
        pin = pinned(root, model, args.rounds)
        mesh = {
            "by_prefix": two_peers(root, model, args.requests, by_prefix=True),
            "by_load": two_peers(root, model, args.requests, by_prefix=False),
        }
    ratio = single["prefix warmed_p50_s"] / single["model warmed_p50_s"]
    print_table(
        f"a question after a {single['prompt_tokens']:,}-token system prompt (demo model, p50)",
        ["scenario", "TTFT", "note"],
        [
            ["no warm (cold model)", f"{1000 * single['no warm_p50_s']:,.0f} ms", ""],
            ["model warmed", f"{1000 * single['model warmed_p50_s']:,.0f} ms", "all prefilled"],
            [
                "prefix warmed",
                f"{1000 * single['prefix warmed_p50_s']:,.0f} ms",
                f"{ratio:.3f} × model warmed (goal ≤ {PREFIX_GOAL}: "
                f"{verdict(ratio <= PREFIX_GOAL)}); "
                f"{single['cached_tokens_p50']:,.0f} tokens cached",
            ],
        ],
    )
    print_table(
        f"a pinned prefix after a restart ({pin['state_mib']:.0f} MiB of saved state, p50)",
        ["its saved state", "first question's TTFT", "the daemon's own figure"],
        [
            [
                "restored from disk",
                f"{1000 * pin['first_question_restored_p50_s']:,.0f} ms",
                f"{1000 * pin['logged_restored_p50_s']:,.0f} ms to restore",
            ],
            [
                "evaluated again",
                f"{1000 * pin['first_question_evaluated_p50_s']:,.0f} ms",
                f"{1000 * pin['logged_evaluated_p50_s']:,.0f} ms to evaluate and save",
            ],
        ],
    )
    p, load = mesh["by_prefix"], mesh["by_load"]
    print_table(
        f"two peers, a system prompt warm on each, {args.requests} questions asked in turn",
        ["routing", "served where the prefix is warm", "TTFT p50"],
        [
            [
                "prefix-aware (now)",
                f"{100 * p['share_where_warm']:.0f}% (goal ≥ 95%: "
                f"{verdict(p['share_where_warm'] >= SHARE_GOAL)})",
                f"{1000 * p['ttft_p50_s']:,.0f} ms",
            ],
            [
                "by load and RTT (before)",
                f"{100 * load['share_where_warm']:.0f}%",
                f"{1000 * load['ttft_p50_s']:,.0f} ms",
            ],
        ],
    )
    record = {"machine": machine(), "single": single, "pinned": pin, "mesh": mesh}
    path = write_json("prefix", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
