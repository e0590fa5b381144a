"""`meshd demo`: the project's idea in numbers, on a real model and real daemons.

Four ways a person's request can meet the model, each timed to the first token:
a daemon that is not running yet, a running daemon whose model is not loaded, a warm model,
and a model that the app warmed when the person opened it, a couple of seconds before asking.
Then a question after a long system prompt (~1,500 tokens), with the model warm and with the
system prompt warmed too. Then one answer streamed through a two-peer mesh with mutual TLS,
as an app would show it.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from meshd.client import MeshClient
from meshd.config import default_home
from meshd.demo_model import DEMO_MODEL_NAME, demo_model_path
from meshd.errors import InvalidRequest, PeerUnavailable
from meshd.process import DaemonProcess
from meshd.rpc.join import join_mesh
from meshd.security.keyring import Keyring
from meshd.types import MeshPeer
from meshd.v1 import access_pb2 as apb

from .common import console
from .mesh import admin_call

DEMO_MAX_TOKENS = 4096  # the daemon's default cap

PROMPT = "The capital of France is"
STORY_PROMPT = "Once upon a time, in a small village by the sea,"
READING_TIME_S = 2.0  # the person reads the page before asking
TIMING_TOKENS = 4
WARM_REPEATS = 5
MESH_ENV = {"MESHD_INSECURE_DEV": "false", "MESHD_DISCOVERY": "false"}  # loopback only


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


def system_prompt(team: str) -> str:
    """A help desk's long system prompt (~1,500 tokens), different for each team."""
    rules = [
        f"You answer questions for the {team} team's customers.",
        "Answer in two sentences or fewer, in plain words.",
        "Never invent order numbers, prices or dates; say you do not know instead.",
        "When a customer is upset, acknowledge it once, then help.",
        "Refunds take five working days; exchanges need the receipt.",
    ]
    lines = [f"Rule {i + 1} of the {team} desk: {rules[i % len(rules)]}" for i in range(64)]
    return "\n".join(lines)


def question_first_token_seconds(mesh: MeshClient, model: str, system: str) -> float:
    """Seconds to the first chunk of a question asked after `system` (as a prompt: the demo
    model has no chat template; a chat's system message warms the same way)."""
    prompt = system + "\n\nCustomer: Hello, can I exchange a gift?\nAnswer:"
    started = time.perf_counter()
    for _chunk in mesh.generate(model, prompt, max_tokens=TIMING_TOKENS, temperature=0.0):
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
        long_warm = question_first_token_seconds(mesh, model, system_prompt("bakery"))
        shop = system_prompt("bicycle shop")
        # The page knows its system prompt and warms it on open; the person asks once it is in
        # the cache (the demo waits for that, however long this machine takes to prefill it).
        started = time.perf_counter()
        mesh.warm(model, lease=60, prefix=shop, wait=True)
        prefix_warm_s = time.perf_counter() - started
        prefix_warmed = question_first_token_seconds(mesh, model, shop)
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
        Row(
            "long system prompt, model warm",
            long_warm,
            "a question after ~1,500 tokens of system prompt: all of it prefilled",
        ),
        Row(
            "system prompt warmed",
            prefix_warmed,
            f"Warm(prefix=system prompt) on page open ({prefix_warm_s:.1f} s to warm), "
            f"question after it: {long_warm / prefix_warmed:.0f}× faster",
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
    """A two-peer mesh with mutual TLS: a founder with the model, a friend who joined by invite
    without it. An app with its own credentials asks the friend; the founder serves."""
    root = home / "mesh"
    shutil.rmtree(root, ignore_errors=True)  # a new mesh each run
    founder_home, friend_home = root / "founder", root / "friend"
    Keyring(founder_home).init_mesh("demo")
    spec = [f"{DEMO_MODEL_NAME}={model_path}"]
    with DaemonProcess(founder_home, spec, env=MESH_ENV):
        request = apb.CreateInviteRequest(ttl_seconds=60)
        code = admin_call(founder_home, lambda stub: stub.CreateInvite(request)).code
        join_mesh(friend_home, code)
        with DaemonProcess(friend_home, [], env=MESH_ENV) as friend:
            bundle = root / "app.meshd.json"
            bundle.write_bytes(Keyring(founder_home).client_bundle("demo-app", [friend.address]))
            with MeshClient.from_bundle(bundle) as app:
                _wait_for(app, lambda p: p.alive, "the demo's two peers did not find each other")
                app.warm(DEMO_MODEL_NAME, wait=True)  # on the founder: the friend has no file
                _wait_for(app, _warm_there, "the friend did not hear that the model is warm")
                _stream(app, max_tokens, friend.address)


def _warm_there(peer: MeshPeer) -> bool:
    return peer.alive and any(m.state == "warm" for m in peer.info.models)


def _wait_for(mesh: MeshClient, holds: Callable[[MeshPeer], bool], failure: str) -> None:
    """Until the asked peer sees another peer for which holds() is true (heartbeats: ~1 s)."""
    deadline = time.monotonic() + 15.0
    while not any(holds(p) for p in mesh.mesh_status().peers if not p.local):
        if time.monotonic() > deadline:
            raise PeerUnavailable(failure)
        time.sleep(0.1)


def _stream(mesh: MeshClient, max_tokens: int, asked: str) -> None:
    console.print(f"\n[bold]{STORY_PROMPT}[/]", end="")
    last = None
    for chunk in mesh.generate(
        DEMO_MODEL_NAME, STORY_PROMPT, max_tokens=max_tokens, temperature=0.7, seed=7
    ):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        last = chunk
    if last is not None:
        console.print(
            f"\n[dim]({last.tokens} tokens; an app asked the friend's peer at {asked} over "
            f"mutual TLS, which routed to {last.served_by}: {last.routing_reason})[/]"
        )


def run_demo(home: Path | None, max_tokens: int) -> None:
    """Prepare the model, time the scenarios, print the table, stream an answer."""
    if not 1 <= max_tokens <= DEMO_MAX_TOKENS:
        raise InvalidRequest(
            f"--max-tokens must be between 1 and {DEMO_MAX_TOKENS}, got {max_tokens}",
            field="max_tokens",
        )
    root = home or default_home() / "demo"
    with console.status("preparing the demo model (verifying sha256)…"):
        model_path = demo_model_path(root / "models")
    console.print(f"model: {model_path}")
    with console.status("timing cold, warm and preemptively warmed requests…"):
        rows = measure(root, model_path)
    print_rows(rows)
    stream_answer(root, model_path, max_tokens)
