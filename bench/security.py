"""What mutual TLS costs: the two ways into a mesh peer, side by side on one daemon.

The same warm daemon (in a mesh, so its TCP port is mutual TLS) is asked alternately over its
Unix socket (what the CLI uses) and over TCP with an app's credential bundle (what apps and
other peers use): time to first token on a warm model, and the first call on a fresh
connection (the TLS handshake included). Also timed: a whole invite + join.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import alternate, bench_model, console, percentile, print_table, write_json

from meshd.client import MeshClient
from meshd.process import DaemonProcess
from meshd.security.keyring import Keyring

MODEL = "gemma3-270m"


def first_token(mesh: MeshClient) -> float:
    """Seconds to the first chunk of a one-token completion."""
    started = time.perf_counter()
    for _ in mesh.generate(MODEL, "The capital of France is", max_tokens=1, temperature=0):
        return time.perf_counter() - started
    raise RuntimeError("no tokens")


def first_call(open_client: Callable[[], MeshClient]) -> float:
    """Seconds for a new client's first call (connection and, over TCP, the TLS handshake)."""
    started = time.perf_counter()
    with open_client() as mesh:
        mesh.health()
    return time.perf_counter() - started


def join_seconds(founder_home: Path, friend_home: Path) -> float:
    """An invite and a join, as a person runs them (two commands)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHD_")}
    started = time.perf_counter()
    invited = subprocess.run(
        [sys.executable, "-m", "meshd.cli", "invite", "--home", str(founder_home)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    code = re.search(r"MESHD-[A-Z0-9]+", invited.stdout)
    assert code is not None, invited.stdout
    subprocess.run(
        [
            sys.executable,
            "-m",
            "meshd.cli",
            "join",
            code.group(0),
            "--no-service",
            "--home",
            str(friend_home),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return time.perf_counter() - started


def measure(path: Path, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    home = root / "founder"
    Keyring(home).init_mesh("bench")
    env = {"MESHD_INSECURE_DEV": "false", "MESHD_DISCOVERY": "false"}
    serve = ["--threads", str(args.threads), "--context", "512"]
    with DaemonProcess(home, [f"{MODEL}={path}"], env=env, extra_args=serve) as daemon:
        bundle = root / "app.json"
        bundle.write_bytes(Keyring(home).client_bundle("bench", [daemon.address]))
        with MeshClient(daemon.socket) as local, MeshClient.from_bundle(bundle) as tls:
            local.warm(MODEL, wait=True)
            for _ in range(4):  # both past their first-call costs
                first_token(local), first_token(tls)
            ttft_unix, ttft_tls = alternate(
                lambda: first_token(local), lambda: first_token(tls), args.prompts
            )
        connect_unix, connect_tls = alternate(
            lambda: first_call(lambda: MeshClient(daemon.socket)),
            lambda: first_call(lambda: MeshClient.from_bundle(bundle)),
            args.connects,
        )
        joins = [join_seconds(home, root / f"friend-{i}") for i in range(args.joins)]
    return {
        "ttft_unix_s": ttft_unix,
        "ttft_tls_s": ttft_tls,
        "connect_unix_s": connect_unix,
        "connect_tls_s": connect_tls,
        "join_s": joins,
    }


def summarize(m: dict[str, Any]) -> dict[str, float]:
    p50 = {k: percentile(v, 50) for k, v in m.items()}
    p99 = {k: percentile(v, 99) for k, v in m.items()}
    return {
        "ttft_p50_unix_ms": 1000 * p50["ttft_unix_s"],
        "ttft_p50_tls_ms": 1000 * p50["ttft_tls_s"],
        "ttft_p50_ratio": p50["ttft_tls_s"] / p50["ttft_unix_s"],
        "ttft_p99_unix_ms": 1000 * p99["ttft_unix_s"],
        "ttft_p99_tls_ms": 1000 * p99["ttft_tls_s"],
        "ttft_p99_ratio": p99["ttft_tls_s"] / p99["ttft_unix_s"],
        "connect_p50_unix_ms": 1000 * p50["connect_unix_s"],
        "connect_p50_tls_ms": 1000 * p50["connect_tls_s"],
        "join_median_ms": 1000 * statistics.median(m["join_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="GGUF to use [default: the demo's Gemma 3 270M]")
    parser.add_argument("--prompts", type=int, default=60, help="TTFT samples per transport")
    parser.add_argument("--connects", type=int, default=20, help="fresh connections per side")
    parser.add_argument("--joins", type=int, default=3, help="invite + join repetitions")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    args = parser.parse_args()
    path = bench_model(args.model)
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp, console.status("measuring…"):
        measured = measure(path, Path(tmp), args)
    s = summarize(measured)
    print_table(
        "mutual TLS vs the Unix socket, one warm daemon",
        ["measure", "Unix socket", "mutual TLS (TCP)", "ratio"],
        [
            [
                "TTFT p50",
                f"{s['ttft_p50_unix_ms']:.1f} ms",
                f"{s['ttft_p50_tls_ms']:.1f} ms",
                f"{s['ttft_p50_ratio']:.3f}",
            ],
            [
                "TTFT p99",
                f"{s['ttft_p99_unix_ms']:.1f} ms",
                f"{s['ttft_p99_tls_ms']:.1f} ms",
                f"{s['ttft_p99_ratio']:.3f}",
            ],
            [
                "first call, new connection",
                f"{s['connect_p50_unix_ms']:.1f} ms",
                f"{s['connect_p50_tls_ms']:.1f} ms",
                "-",
            ],
            ["invite + join (two commands)", "-", f"{s['join_median_ms']:.0f} ms", "-"],
        ],
    )
    out = write_json(
        "security", {"model": str(path), "args": vars(args), "summary": s, "measured": measured}
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
