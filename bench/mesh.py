"""The mesh: discovery time, failure detection, routing overhead, balancing.

    .venv/bin/python bench/mesh.py [--trials 10] [--model PATH]

- discovery: seconds from a daemon serving to being listed live by another peer, over real
  mDNS between network namespaces (root only; skipped with the reason elsewhere);
- failure detection: seconds from kill -9 of a peer to its leaving routing (loopback);
- routing overhead: time to first token through one extra mesh hop vs straight to the
  serving peer, alternating (loopback, the demo model);
- balancing: meshd's router vs round-robin vs random over the same bursty arrivals at 85% of
  the capacity of three unequal peers (a deterministic simulation, bench/balance_sim.py).
Prints tables and writes bench/results/mesh.json.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import balance_sim
from common import bench_model, console, percentile, print_table, verdict, write_json

from meshd.client import MeshClient
from meshd.process import DaemonProcess
from meshd.security.keyring import Keyring

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "mesh"))
from netns import Hosts, unavailable_reason

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tinygguf import write_tiny_gguf

PORT = 7070
POLLER = """
import sys, time
from meshd.client import MeshClient
from meshd.security.keyring import Keyring
address, wanted = sys.argv[1], sys.argv[2]
with MeshClient(address, timeout=2) as mesh:
    while True:
        if any(p.alive and p.info.peer_id == wanted for p in mesh.mesh_status().peers):
            print(time.time(), flush=True)
            break
        time.sleep(0.005)
"""


def discovery(trials: int, model: Path, root: Path) -> dict[str, Any]:
    """Seconds from serving to listed, over mDNS between namespaces."""
    reason = unavailable_reason()
    if reason:
        return {"skipped": reason}
    rig = Hosts(2)
    listed: list[float] = []
    env = {"MESHD_DISCOVERY": "true"}
    try:
        first = DaemonProcess(
            root / "h0",
            [f"m={model}"],
            listen=f"{rig.ips[0]}:{PORT}",
            env=env,
            prefix=rig.prefix(0),
        ).start()
        for trial in range(trials):
            home = root / f"h1-{trial}"
            home.mkdir(parents=True)
            peer_id = Keyring(home).peer_id()  # made now, so the poller knows what to wait for
            poller = subprocess.Popen(
                [*rig.prefix(0), sys.executable, "-c", POLLER, f"{rig.ips[0]}:{PORT}", peer_id],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)  # the poller is up
            second = DaemonProcess(
                home, [f"m={model}"], listen=f"{rig.ips[1]}:{PORT}", env=env, prefix=rig.prefix(1)
            ).start()
            ready = time.time()
            out, _ = poller.communicate(timeout=30)
            listed.append(float(out.strip()) - ready)
            second.stop()
        first.stop()
    finally:
        rig.close()
    return {"listed_after_s": listed}


def failure_detection(trials: int, model: Path, root: Path) -> dict[str, Any]:
    """Seconds from kill -9 of a peer to its leaving another peer's routing."""
    out = []
    with DaemonProcess(root / "a", [], extra_args=["--no-discovery"]) as a:
        for trial in range(trials):
            b = DaemonProcess(
                root / f"b{trial}",
                [f"m={model}"],
                extra_args=["--no-discovery", "--peer", a.address],
            ).start()
            with MeshClient(a.address) as mesh:
                while not any(p.alive for p in mesh.mesh_status().peers if not p.local):
                    time.sleep(0.01)
                b.signal(signal.SIGKILL)
                killed = time.monotonic()
                while any(p.alive for p in mesh.mesh_status().peers if not p.local):
                    time.sleep(0.01)
                out.append(time.monotonic() - killed)
            b.stop()
    return {"out_of_routing_s": out}


def first_token(mesh: MeshClient, i: int) -> float:
    started = time.perf_counter()
    stream = mesh.generate(
        "m", f"Fact {i}: the capital city of France is", max_tokens=2, temperature=0
    )
    next(stream)
    elapsed = time.perf_counter() - started
    stream.close()
    return elapsed


def routing_overhead(samples: int, model: Path, root: Path, threads: int = 1) -> dict[str, Any]:
    """TTFT straight to the serving peer vs through a peer that forwards, alternating."""
    serve = ["--no-discovery", "--threads", str(threads)]
    direct, hopped = [], []
    with (
        DaemonProcess(root / "server", [f"m={model}"], extra_args=serve) as server,
        DaemonProcess(root / "router", [], extra_args=[*serve, "--peer", server.address]) as router,
        MeshClient(server.address) as straight,
        MeshClient(router.address) as via,
    ):
        straight.warm("m", wait=True)
        while not via.mesh_status().peers[-1].alive:
            time.sleep(0.05)
        for i in range(4):
            first_token(straight, i), first_token(via, i)
        for i in range(samples):
            pair = [(straight, direct), (via, hopped)]
            for client, out in pair if i % 2 else reversed(pair):
                time.sleep(0.05)
                out.append(first_token(client, i))
    return {"direct_s": direct, "one_hop_s": hopped}


BALANCE_PEERS = {"wide": 3, "narrow-1": 1, "narrow-2": 1}  # slots per peer
BALANCE_TOKENS = 600


def _timed_request(address: str, arrival: float, local_only: bool, out: list[float]) -> None:
    """Wait for the arrival time, send one request, record the time to its first chunk."""
    time.sleep(max(0.0, arrival - time.monotonic()))
    with MeshClient(address) as mesh:
        stream = mesh.generate(
            "m", "Once upon a time", max_tokens=BALANCE_TOKENS, temperature=0, local_only=local_only
        )
        next(stream)
        out.append(time.monotonic() - arrival)
        for _ in stream:
            pass


def _replay(addresses: list[str], arrivals: list[float], route: str, seed: int) -> list[float]:
    """Send the arrivals under one policy: meshd (all to the first peer), round-robin, random."""
    rng, ttfts, threads = random.Random(seed), [], []
    start = time.monotonic() + 0.5
    for i, offset in enumerate(arrivals):
        if route == "meshd":
            address, local = addresses[0], False
        elif route == "round-robin":
            address, local = addresses[i % len(addresses)], True
        else:
            address, local = rng.choice(addresses), True
        thread = threading.Thread(
            target=_timed_request, args=(address, start + offset, local, ttfts)
        )
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(120)
    return ttfts


def balancing_real(root: Path, seconds: float, seed: int = 7) -> dict[str, Any]:
    """Three peers of unequal slot counts on loopback, the same bursty arrivals per policy."""
    root.mkdir(parents=True, exist_ok=True)
    model = write_tiny_gguf(root / "tiny.gguf")
    serve = ["--no-discovery", "--threads", "1", "--context", "1024", "--max-queue", "64"]
    daemons: list[DaemonProcess] = []
    try:
        for name, slots in BALANCE_PEERS.items():
            peers = [a for d in daemons for a in ("--peer", d.address)]
            daemons.append(
                DaemonProcess(
                    root / name, [f"m={model}"], extra_args=[*serve, "--slots", str(slots), *peers]
                ).start()
            )
        addresses = [d.address for d in daemons]
        with MeshClient(addresses[0]) as mesh:
            mesh.warm("m", wait=True, replicas=len(addresses))
            while sum(p.alive for p in mesh.mesh_status().peers) < len(addresses):
                time.sleep(0.05)
            started = time.monotonic()
            mesh.complete(
                "m", "Once upon a time", max_tokens=BALANCE_TOKENS, temperature=0, local_only=True
            )
            service = time.monotonic() - started
        # Two cores serve at most two requests at full speed, whatever the slot count.
        rate = 0.85 * min(sum(BALANCE_PEERS.values()), os.cpu_count() or 2) / service
        arrivals = balance_sim.bursty_arrivals(rate, seconds, seed)
        result = {
            route: _replay(addresses, arrivals, route, seed)
            for route in ("meshd", "round-robin", "random")
        }
        return {"service_s": service, "rate_per_s": rate, "requests": len(arrivals), **result}
    finally:
        for daemon in daemons:
            daemon.stop()


def ms(values: list[float], q: float) -> float:
    return 1000 * percentile(values, q)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="GGUF to serve [default: the demo's Gemma 3 270M]")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--samples", type=int, default=60, help="TTFT samples per side")
    parser.add_argument("--balance-seconds", type=float, default=20.0)
    args = parser.parse_args()
    model = bench_model(args.model)
    with tempfile.TemporaryDirectory(prefix="meshd-bench-mesh-") as tmp:
        root = Path(tmp)
        with console.status("discovery over mDNS in namespaces…"):
            found = discovery(args.trials, model, root / "discovery")
        with console.status("failure detection…"):
            failing = failure_detection(max(3, args.trials // 2), model, root / "failure")
        with console.status("routing overhead, 1 and 2 llama.cpp threads…"):
            hops = {t: routing_overhead(args.samples, model, root / f"hop{t}", t) for t in (1, 2)}
        with console.status("balancing, real run…"):
            real = balancing_real(root / "balance", args.balance_seconds)
    with console.status("balancing simulation…"):
        balance = balance_sim.run()
    rows = []
    if "skipped" in found:
        rows.append(["discovery", "skipped", found["skipped"], "p95 ≤ 1 s", ""])
    else:
        d = found["listed_after_s"]
        rows.append(
            [
                "discovery: serving → listed",
                f"p50 {percentile(d, 50):.2f} s",
                f"p95 {percentile(d, 95):.2f} s",
                "p95 ≤ 1 s",
                verdict(percentile(d, 95) <= 1.0),
            ]
        )
    f = failing["out_of_routing_s"]
    rows.append(
        [
            "kill -9 → out of routing",
            f"p50 {percentile(f, 50):.2f} s",
            f"max {max(f):.2f} s",
            "≤ 3 s",
            verdict(max(f) <= 3.0),
        ]
    )
    for threads, hop in hops.items():
        added50 = ms(hop["one_hop_s"], 50) - ms(hop["direct_s"], 50)
        added99 = ms(hop["one_hop_s"], 99) - ms(hop["direct_s"], 99)
        rows.append(
            [
                f"one extra hop, added TTFT ({threads} thread{'s' * (threads > 1)})",
                f"p50 {added50:+.2f} ms",
                f"p99 {added99:+.2f} ms",
                "p50 ≤ 2, p99 ≤ 10 ms",
                verdict(added50 <= 2 and added99 <= 10),
            ]
        )
    p99 = {name: 1000 * percentile(v, 99) for name, v in balance.items()}
    rows.append(
        [
            "balancing p99 TTFT (simulated)",
            f"meshd {p99['meshd']:,.0f} ms",
            f"round-robin {p99['round-robin']:,.0f} ms, random {p99['random']:,.0f} ms",
            "meshd ≤ 0.5 × round-robin",
            verdict(p99["meshd"] <= 0.5 * p99["round-robin"]),
        ]
    )
    real_p99 = {r: 1000 * percentile(real[r], 99) for r in ("meshd", "round-robin", "random")}
    rows.append(
        [
            "balancing p99 TTFT (real, 3 peers)",
            f"meshd {real_p99['meshd']:,.0f} ms",
            f"round-robin {real_p99['round-robin']:,.0f} ms, random {real_p99['random']:,.0f} ms",
            "meshd ≤ 0.5 × round-robin",
            verdict(real_p99["meshd"] <= 0.5 * real_p99["round-robin"]),
        ]
    )
    print_table("the mesh", ["measure", "", "", "goal", ""], rows)
    summary = {
        "discovery": found,
        "failure": failing,
        "hop_ttft_p50_ms": {
            t: [ms(h["direct_s"], 50), ms(h["one_hop_s"], 50)] for t, h in hops.items()
        },
        "hop_ttft_p99_ms": {
            t: [ms(h["direct_s"], 99), ms(h["one_hop_s"], 99)] for t, h in hops.items()
        },
        "balance_p99_ms": p99,
        "balance_real_p99_ms": real_p99,
        "balance_real": {k: v for k, v in real.items() if not isinstance(v, list)},
    }
    out = write_json("mesh", {"summary": summary, "hop": hops})
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
