"""The owner decides and the mesh outlives a machine: how fast pause, pressure and replicas act.

On the demo model (Gemma 3 270M, Q4_K_M), with real daemons on loopback:
- pause: two daemon processes (heartbeats every second, the default), the model warm on b
  only, apps asking both peers for one token after another; `meshd pause` runs on b. Figure:
  from the pause command's return to the start of the last request b still served (goal
  ≤ 2 s).
- pressure: a peer with the model warm and idle gets one critical memory-pressure sample.
  Figure: from the sample to the model unloaded and its runner process gone (goal ≤ 1 s).
- replicas: a three-peer mutual-TLS mesh, the model in a's store only. Side by side, in
  turns: `Warm(replicas=2, wait=True)` asked of b (b pulls from a, then loads) vs the same
  pull alone (`meshd pull --from` a's address, into a scratch store). The copy is removed
  between rounds.

Usage: .venv/bin/python bench/owner.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
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
    machine,
    percentile,
    print_table,
    verdict,
    write_json,
)

from meshd.client import AsyncMeshClient
from meshd.config import load_settings
from meshd.hostload import CRITICAL, HostSample
from meshd.node import Node
from meshd.process import DaemonProcess
from meshd.pull import LocalSource, PeerSource, pull
from meshd.rpc import channels
from meshd.rpc.join import join_mesh
from meshd.security.keyring import Keyring
from meshd.store import ModelStore
from meshd.types import WarmRequest
from meshd.v1 import access_pb2 as apb

PAUSE_GOAL_S = 2.0
PRESSURE_GOAL_S = 1.0
MODEL = "demo"


def settings(home: Path, model: Path | None, **flags: Any) -> Any:
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "discovery": False,
        "models": [f"{MODEL}={model}"] if model else [],
        "context": 512,
        "threads": 1,
        "http": False,
        "yield_to_host": False,
        "spare_runner": False,
        "heartbeat_interval": "0.2s",
        "dead_after": "0.6s",
    }
    return load_settings(home, {**base, **flags}, environ={})


def _client(node: Node) -> AsyncMeshClient:
    return AsyncMeshClient(f"unix:{node.socket}")


async def _until(condition: Callable[[], bool], poll: float = 0.05) -> None:
    """Return once condition() holds (the daemons run on this loop meanwhile)."""
    while True:
        if condition():
            return
        await asyncio.sleep(poll)


async def _live(nodes: list[Node], count: int) -> None:
    await _until(lambda: all(len(n.table.live(time.monotonic())) == count for n in nodes))


def _daemon(home: Path, model: Path, **env: str) -> DaemonProcess:
    """A `meshd serve` process on loopback with one thread and a small context."""
    return loopback_daemon(home, MODEL, model, MESHD_THREADS="1", MESHD_CONTEXT="512", **env)


async def pause(root: Path, model: Path) -> dict[str, float]:
    """Two daemon processes (heartbeats every second, the default): the model warm on b, a
    has the file but cold; apps ask both for one token after another. Requests asked of a go
    to b until a hears that b is paused; requests asked of b go to a at once."""
    with _daemon(root / "b", model) as b:
        async with AsyncMeshClient(b.socket) as mesh:  # warm on b while it is alone
            await mesh.warm(MODEL, wait=True)
            b_id = (await mesh.status()).peer_id
        with _daemon(root / "a", model, MESHD_PEERS=b.address) as a:
            return await _pause_while_asked(a, b, b_id)


async def _pause_while_asked(a: DaemonProcess, b: DaemonProcess, b_id: str) -> dict[str, float]:
    async with AsyncMeshClient(b.socket) as mesh:
        while True:  # until b hears a
            if sum(p.alive for p in (await mesh.mesh_status()).peers) == 2:
                break
            await asyncio.sleep(0.1)
    served: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def ask(socket: str) -> None:
        async with AsyncMeshClient(socket) as mesh:
            while not stop.is_set():
                started = time.monotonic()
                answer = await mesh.complete(MODEL, "Hello", max_tokens=1)
                served.append((started, answer.served_by))

    asking = [asyncio.create_task(ask(d.socket)) for d in (a, b)]
    await asyncio.sleep(1.5)
    command = [sys.executable, "-m", "cli", "pause", "--for", "1h"]
    env = {"MESHD_HOME": str(b.home), "PATH": "/usr/bin:/bin"}
    await asyncio.to_thread(subprocess.run, command, env=env, check=True, capture_output=True)
    paused_at = time.monotonic()
    await asyncio.sleep(4.0)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*asking), 30)
    on_b = [t for t, who in served if who == b_id]
    after = [who for t, who in served if t > paused_at + PAUSE_GOAL_S]
    return {
        "last_request_on_paused_peer_s": max(on_b) - paused_at,
        "requests_after_2s": len(after),
        "of_those_on_paused_peer": sum(who == b_id for who in after),
        "requests_on_b_before_pause": sum(1 for t in on_b if t < paused_at),
    }


async def pressure(root: Path, model: Path, rounds: int) -> dict[str, float]:
    node = Node(settings(root / "p", model, insecure_dev=True))
    await node.start()
    times = []
    try:
        for _ in range(rounds):
            await node.engine.warm(WarmRequest(MODEL, wait=True))
            host = node.engine.hosts[MODEL]
            runner = host.runner
            assert runner is not None
            pid = runner.pid
            started = time.monotonic()
            await node.host_watch.apply(HostSample(0.1, CRITICAL, False))
            await _until(lambda pid=pid: not _running(pid), poll=0.001)
            times.append(time.monotonic() - started)
            assert not host.loaded
    finally:
        await node.stop(0)
    return {"evict_p50_s": percentile(times, 50), "evict_max_s": max(times)}


def _invite(node: Node) -> str:
    stub = channels.admin_stub(channels.open_channel(f"unix:{node.socket}"))
    return str(stub.CreateInvite(apb.CreateInviteRequest(ttl_seconds=60)).code)


async def replicas(root: Path, model: Path, rounds: int) -> dict[str, float]:
    pull(ModelStore(root / "a"), LocalSource(model), name=MODEL)
    size_mib = model.stat().st_size / 2**20  # noqa: ASYNC240 - before any daemon runs
    Keyring(root / "a").init_mesh("bench")
    a = Node(settings(root / "a", None))
    await a.start()
    nodes = [a]
    try:
        for name in ("b", "c"):
            code = await asyncio.to_thread(_invite, a)  # the daemon answers on this loop
            await asyncio.to_thread(join_mesh, root / name, code)
            node = Node(settings(root / name, None))
            await node.start()
            nodes.append(node)
        b = nodes[1]
        await _live(nodes, 2)
        credentials = Keyring(root / "b").credentials()
        scratch = ModelStore(root / "scratch")

        async def replica() -> float:
            started = time.monotonic()
            async with _client(b) as mesh:
                await mesh.warm(MODEL, replicas=2, wait=True)
            took = time.monotonic() - started
            holder = next(n for n in nodes[1:] if MODEL in n.engine.hosts)
            await holder.engine.unload_idle()
            ModelStore(holder.settings.home).remove(MODEL)
            ModelStore(holder.settings.home).collect_garbage()
            await holder.engine.refresh()
            await _unheld(nodes)
            return took

        def pull_alone() -> float:
            started = time.monotonic()
            source = PeerSource(a.address, MODEL, credentials=credentials, peer_id=a.peer_id)
            pull(scratch, source, name=MODEL)
            took = time.monotonic() - started
            scratch.remove(MODEL)
            scratch.collect_garbage()
            return took

        warm_times, pull_times = [], []
        for i in range(rounds):
            pair = [("replica", replica), ("pull", None)]
            for kind, _ in pair if i % 2 == 0 else reversed(pair):
                if kind == "replica":
                    warm_times.append(await replica())
                else:
                    pull_times.append(await asyncio.to_thread(pull_alone))
        return {
            "replica_pull_and_warm_p50_s": percentile(warm_times, 50),
            "pull_alone_p50_s": percentile(pull_times, 50),
            "size_mib": size_mib,
        }
    finally:
        for node in reversed(nodes):
            await node.stop(0)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _unheld(nodes: list[Node]) -> None:
    """Until a's table says no other peer holds the model."""
    await _until(
        lambda: (
            not any(
                e.info and any(m.name == MODEL for m in e.info.models)
                for e in nodes[0].table.live(time.monotonic())
            )
        )
    )


async def run(model: Path, rounds: int) -> dict[str, dict[str, float]]:
    figures = {}
    for name, scenario in (
        ("pause", lambda root: pause(root, model)),
        ("pressure", lambda root: pressure(root, model, rounds)),
        ("replicas", lambda root: replicas(root, model, rounds)),
    ):
        root = Path(tempfile.mkdtemp(prefix=f"meshd-bench-{name}-"))
        try:
            figures[name] = await scenario(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def _last_on_paused(p: dict[str, float]) -> str:
    last = p["last_request_on_paused_peer_s"]
    when = (
        f"{1000 * last:.0f} ms"
        if last > 0
        else f"none after the pause (the last began {-1000 * last:.0f} ms before it returned)"
    )
    after, on_it = p["requests_after_2s"], p["of_those_on_paused_peer"]
    return f"{when}; {on_it:.0f} of the {after:.0f} requests after 2 s on it"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=None, help="a GGUF file [default: the demo model]")
    args = parser.parse_args()
    model = bench_model(args.model)
    figures = asyncio.run(run(model, args.rounds))
    p, e, r = figures["pause"], figures["pressure"], figures["replicas"]
    print_table(
        "the owner decides, the mesh outlives a machine (demo model)",
        ["measure", "figure", "goal"],
        [
            [
                "pause → last new request on the paused peer",
                _last_on_paused(p),
                f"≤ 2 s {verdict(p['last_request_on_paused_peer_s'] <= PAUSE_GOAL_S)}",
            ],
            [
                "critical pressure sample → idle model evicted (p50 / max)",
                f"{1000 * e['evict_p50_s']:.0f} / {1000 * e['evict_max_s']:.0f} ms",
                f"≤ 1 s {verdict(e['evict_max_s'] <= PRESSURE_GOAL_S)}",
            ],
            [
                f"replica: pull + warm on a second peer ({r['size_mib']:.0f} MiB, p50)",
                f"{r['replica_pull_and_warm_p50_s']:.2f} s",
                "",
            ],
            [
                "the same pull alone (`meshd pull --from`, p50)",
                f"{r['pull_alone_p50_s']:.2f} s",
                "",
            ],
        ],
    )
    path = write_json("owner", {"machine": machine(), "rounds": args.rounds, **figures})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
