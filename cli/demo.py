"""`meshd demo`: the project's idea in numbers, on a real model and real daemons.

Four ways a person's request can meet the model, each timed to the first token:
a daemon that is not running yet, a running daemon whose model is not loaded, a warm model,
and a model that the app warmed when the person opened it, a couple of seconds before asking.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from meshd.client import MeshClient
from meshd.config import default_home
from meshd.demo_model import DEMO_MODEL_NAME, demo_model_path
from meshd.process import DaemonProcess

from .common import console

PROMPT = "The capital of France is"
STORY_PROMPT = "Once upon a time, in a small village by the sea,"
READING_TIME_S = 2.0  # the person reads the page before asking
TIMING_TOKENS = 4
WARM_REPEATS = 5


@dataclass(frozen=True)
class Row:
    """One line of the demo's table."""

    scenario: str
    ttft_s: float
    note: str


def first_token_seconds(mesh: MeshClient, model: str, since: float | None = None) -> float:
    """Seconds from `since` (default: now) to the first streamed chunk of a short completion."""
    started = time.perf_counter() if since is None else since
    for _chunk in mesh.generate(model, PROMPT, max_tokens=TIMING_TOKENS, temperature=0.0):
        return time.perf_counter() - started
    raise RuntimeError("the daemon sent no tokens")


def _daemon(home: Path, model_path: Path, name: str) -> DaemonProcess:
    return DaemonProcess(home / name, [f"{DEMO_MODEL_NAME}={model_path}"])


def measure(home: Path, model_path: Path) -> list[Row]:
    """Time the four scenarios, each on its own fresh daemon where it needs one."""
    model = DEMO_MODEL_NAME
    spawned = time.perf_counter()
    with _daemon(home, model_path, "cold-start") as daemon, MeshClient(daemon.address) as mesh:
        cold_start = first_token_seconds(mesh, model, since=spawned)
        warm = statistics.median(first_token_seconds(mesh, model) for _ in range(WARM_REPEATS))
    with _daemon(home, model_path, "cold-model") as daemon, MeshClient(daemon.address) as mesh:
        cold_model = first_token_seconds(mesh, model)
    with _daemon(home, model_path, "warmed") as daemon, MeshClient(daemon.address) as mesh:
        mesh.warm(model, lease=60)  # the person opens the page: returns at once
        time.sleep(READING_TIME_S)  # ... and reads for a moment
        warmed = first_token_seconds(mesh, model)
    hidden = 1 - (warmed - warm) / (cold_model - warm) if cold_model > warm else 1.0
    hidden = min(max(hidden, 0.0), 1.0)  # a warmed request faster than the warm median: all hidden
    return [
        Row("cold start", cold_start, "daemon not running: process + load + first token"),
        Row("cold model", cold_model, "daemon running, model not loaded"),
        Row("warm", warm, f"model resident (median of {WARM_REPEATS})"),
        Row(
            "preemptively warmed",
            warmed,
            f"Warm() on page open, request {READING_TIME_S:.0f} s later: "
            f"{100 * hidden:.0f}% of the load hidden",
        ),
    ]


def print_rows(rows: list[Row]) -> None:
    """The table of scenarios."""
    table = Table(title="time to first token, gemma3-270m Q4_K_M on this machine")
    table.add_column("scenario")
    table.add_column("first token", justify="right")
    table.add_column("what happened")
    for row in rows:
        table.add_row(row.scenario, f"{1000 * row.ttft_s:,.0f} ms", row.note)
    console.print(table)


def stream_answer(home: Path, model_path: Path, max_tokens: int) -> None:
    """Stream one answer from a warm daemon, as an app would show it."""
    with _daemon(home, model_path, "answer") as daemon, MeshClient(daemon.address) as mesh:
        mesh.warm(DEMO_MODEL_NAME, wait=True)
        console.print(f"\n[bold]{STORY_PROMPT}[/]", end="")
        last = None
        for chunk in mesh.generate(
            DEMO_MODEL_NAME, STORY_PROMPT, max_tokens=max_tokens, temperature=0.7, seed=7
        ):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            last = chunk
        if last is not None:
            console.print(f"\n[dim]({last.tokens} tokens, served by {last.served_by})[/]")


def run_demo(home: Path | None, max_tokens: int) -> None:
    """Prepare the model, time the scenarios, print the table, stream an answer."""
    root = home or default_home() / "demo"
    with console.status("preparing the demo model (verifying sha256)…"):
        model_path = demo_model_path(root / "models")
    console.print(f"model: {model_path}")
    with console.status("timing cold, warm and preemptively warmed requests…"):
        rows = measure(root, model_path)
    print_rows(rows)
    stream_answer(root, model_path, max_tokens)
