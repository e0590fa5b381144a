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
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import balance_sim
from common import bench_model, console, percentile, print_table, verdict, write_json

from meshd.client import MeshClient
from meshd.process import DaemonProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "mesh"))
from netns import Hosts, unavailable_reason

PORT = 7070
POLLER = """
import sys, time
from meshd.client import MeshClient
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
            peer_id = f"peer-bench{trial:07d}"
            (home / "peer_id").write_text(peer_id + "\n")
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


def routing_overhead(samples: int, model: Path, root: Path) -> dict[str, Any]:
    """TTFT straight to the serving peer vs through a peer that forwards, alternating."""
    serve = ["--no-discovery", "--threads", "1"]
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


def ms(values: list[float], q: float) -> float:
    return 1000 * percentile(values, q)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="GGUF to serve [default: the demo's Gemma 3 270M]")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--samples", type=int, default=60, help="TTFT samples per side")
    args = parser.parse_args()
    model = bench_model(args.model)
    with tempfile.TemporaryDirectory(prefix="meshd-bench-mesh-") as tmp:
        root = Path(tmp)
        with console.status("discovery over mDNS in namespaces…"):
            found = discovery(args.trials, model, root / "discovery")
        with console.status("failure detection…"):
            failing = failure_detection(max(3, args.trials // 2), model, root / "failure")
        with console.status("routing overhead…"):
            hop = routing_overhead(args.samples, model, root / "hop")
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
    added50 = ms(hop["one_hop_s"], 50) - ms(hop["direct_s"], 50)
    added99 = ms(hop["one_hop_s"], 99) - ms(hop["direct_s"], 99)
    rows.append(
        [
            "one extra hop, added TTFT",
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
    print_table("the mesh", ["measure", "", "", "goal", ""], rows)
    summary = {
        "discovery": found,
        "failure": failing,
        "hop_ttft_p50_ms": [ms(hop["direct_s"], 50), ms(hop["one_hop_s"], 50)],
        "hop_ttft_p99_ms": [ms(hop["direct_s"], 99), ms(hop["one_hop_s"], 99)],
        "balance_p99_ms": p99,
    }
    out = write_json("mesh", {"summary": summary, "hop": hop})
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
