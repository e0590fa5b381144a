"""Peer-to-peer pull between two daemons on loopback, against a plain local copy + sha256.

    .venv/bin/python bench/pull.py [--model PATH] [--rounds 3]

The file (default: the demo's 241 MiB Gemma GGUF) sits in the page cache for every side, so
the figures compare meshd's transfer path with the copy + hash that any verified import does.
Prints a table and writes bench/results/pull.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import bench_model, console, print_table, verdict, write_json

from meshd.process import DaemonProcess
from meshd.pull import LocalSource, PeerSource, pull
from meshd.store import HASH_CHUNK, ModelStore

NAME = "model"


def copy_and_hash(src: Path, dst: Path) -> float:
    """Seconds for the baseline: read, hash, write, fsync."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    with src.open("rb") as inp, dst.open("wb") as out:
        while block := inp.read(HASH_CHUNK):
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - started


def peer_pull(address: str, home: Path) -> float:
    """Seconds for a verified pull into a fresh store."""
    shutil.rmtree(home, ignore_errors=True)
    started = time.perf_counter()
    pull(ModelStore(home), PeerSource(address, NAME))
    return time.perf_counter() - started


def raw_transfer(address: str, dst: Path) -> float:
    """Seconds to receive and write the same stream with no hashing or validation."""
    started = time.perf_counter()
    with dst.open("wb") as out:
        for block in PeerSource(address, NAME).read(0):
            out.write(block)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="file to transfer [default: the demo's Gemma 3 270M]")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = bench_model(args.model)
    size = path.stat().st_size
    console.print(f"file: {path} ({size / 2**20:.0f} MiB)")
    with tempfile.TemporaryDirectory(prefix="meshd-bench-pull-") as tmp:
        root = Path(tmp)
        pull(ModelStore(root / "peer"), LocalSource(path), name=NAME)
        times: dict[str, list[float]] = {"copy_hash_s": [], "peer_pull_s": [], "raw_s": []}
        with DaemonProcess(root / "peer") as daemon:
            for _ in range(args.rounds):
                times["copy_hash_s"].append(copy_and_hash(path, root / "copy.gguf"))
                times["peer_pull_s"].append(peer_pull(daemon.address, root / "puller"))
                times["raw_s"].append(raw_transfer(daemon.address, root / "raw.gguf"))
    median = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: size / v / 1e9 for k, v in median.items()}
    summary = {
        "bytes": size,
        "peer_pull_gb_s": rate["peer_pull_s"],
        "copy_hash_gb_s": rate["copy_hash_s"],
        "raw_transfer_gb_s": rate["raw_s"],
        "ratio_to_copy_hash": median["copy_hash_s"] / median["peer_pull_s"],
        "verification_overhead": median["peer_pull_s"] / median["raw_s"] - 1,
    }
    print_table(
        f"pull of {size / 2**20:.0f} MiB over loopback (median of {args.rounds})",
        ["measure", "value", "goal", ""],
        [
            [
                "peer pull, verified",
                f"{rate['peer_pull_s']:.2f} GB/s",
                "≥ 0.5 GB/s",
                verdict(rate["peer_pull_s"] >= 0.5),
            ],
            ["local copy + sha256", f"{rate['copy_hash_s']:.2f} GB/s", "", ""],
            [
                "peer pull / copy + sha256",
                f"{summary['ratio_to_copy_hash']:.2f}",
                "≥ 0.6",
                verdict(summary["ratio_to_copy_hash"] >= 0.6),
            ],
            ["same stream, no verification", f"{rate['raw_s']:.2f} GB/s", "", ""],
            [
                "time added by verification",
                f"{100 * summary['verification_overhead']:.1f}%",
                "≤ 10%",
                verdict(summary["verification_overhead"] <= 0.10),
            ],
        ],
    )
    out = write_json("pull", {"file": str(path), "summary": summary, "times": times})
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
