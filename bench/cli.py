"""How fast the CLI answers: `meshd --version`, `health` and `status` against a running daemon,
beside `python -c pass` (what any Python program pays to start).

    .venv/bin/python bench/cli.py [--rounds 5]

Prints a table (median wall time of each command) and writes bench/results/cli.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import console, print_table, verdict, write_json

from meshd.process import DaemonProcess

GOAL_S = 0.3


def wall(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[-2:])} failed: {done.stderr.decode()[-300:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    meshd = [sys.executable, "-m", "meshd.cli"]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "meshd --version": [*meshd, "--version"],
        "meshd health": [*meshd, "health"],
        "meshd status": [*meshd, "status"],
    }
    with tempfile.TemporaryDirectory(prefix="meshd-cli-") as tmp:
        home = Path(tmp) / "home"
        env = {"MESHD_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "120"}
        with DaemonProcess(home, extra_args=["--no-discovery"]):
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.rounds + 1):  # the first round warms the OS file cache
                for name, command in commands.items():
                    times[name].append(wall(command, env))
    medians = {name: statistics.median(t[1:]) for name, t in times.items()}
    rows = []
    for name, median in medians.items():
        goal = "" if name == "python -c pass" else f"≤ {GOAL_S} s"
        met = "" if not goal else verdict(median <= GOAL_S)
        rows.append([name, f"{1000 * median:,.0f} ms", goal, met])
    print_table(f"wall time, median of {args.rounds}", ["command", "time", "goal", ""], rows)
    out = write_json("cli", {"rounds": args.rounds, "seconds": times, "medians_s": medians})
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
