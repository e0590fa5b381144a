"""A founder under hostile traffic: CPU, open files and memory, and whether it still answers.

Each scenario starts a fresh founder (mutual TLS, no models, no spare runner) under an
open-file limit of 256, macOS's default for a LaunchAgent, and watches it for a while:
- quiet: nothing happens (the baseline);
- gossip: a peer that joined with a real invite heartbeats it and gossips 300 made-up
  loopback addresses where nothing listens, and a Unix socket;
- idle: 300 TCP connections that never start a TLS handshake;
- renewal: a member asks for a new certificate as fast as it can for the window, then the
  founder revokes it while another member heartbeats it: certificates it got, the revocation
  list's size, and both daemons' CPU over the next window of heartbeats;
- rotation: a member heartbeats with a new made-up address of its own, 50 times a second;
- http: 300 TCP connections to the HTTP door that never send a whole request, then a fresh
  request.
Figures: the daemon's CPU (% of one core), open files and RSS over the window; whether the
CLI's Unix socket answers during it; how long a fresh app connection (TLS) or HTTP request
takes to get in.

`--before REV` runs the same scenarios on an older commit too (a git worktree), side by side:
    .venv/bin/python bench/hostile.py --before ec539fa
"""

from __future__ import annotations

import argparse
import contextlib
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
from common import checkout, console, print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rogue import RoguePeer

from meshd.client import MeshClient
from meshd.errors import MeshdError
from meshd.process import DaemonProcess
from meshd.rpc import channels
from meshd.rpc.join import join_mesh
from meshd.security.keyring import Keyring
from meshd.v1 import access_pb2 as apb, mesh_pb2 as pb

FD_LIMIT = 256
FLOOD = 300


def founder(root: Path, source: Path | None) -> DaemonProcess:
    """A founder's daemon (not started), from this checkout or `source`."""
    home = root / "founder"
    Keyring(home).init_mesh("bench")
    env = {"MESHD_INSECURE_DEV": "false", "MESHD_DISCOVERY": "false", "MESHD_SPARE_RUNNER": "false"}
    prefix = ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "--"]
    if source is not None:  # `python -m` looks in the working folder first
        env["PYTHONPATH"] = str(source)
        prefix = ["env", f"--chdir={source}", *prefix]
    return DaemonProcess(home, [], env=env, prefix=prefix)


def watch(daemon: DaemonProcess, seconds: float) -> dict[str, float]:
    """The daemon's CPU, open files and RSS over a window; and its Unix socket's answers."""
    assert daemon.proc is not None
    process = psutil.Process(daemon.proc.pid)
    process.cpu_percent()
    fds, rss, answered, asked, latencies = [], [], 0, 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fds.append(process.num_fds())
        rss.append(process.memory_info().rss)
        asked += 1
        started = time.perf_counter()
        with contextlib.suppress(MeshdError), MeshClient(daemon.socket, timeout=2) as local:
            local.health()
            answered += 1
            latencies.append(time.perf_counter() - started)
        time.sleep(0.5)
    latencies.sort()
    return {
        "cpu_percent": process.cpu_percent(),
        "open_files_max": max(fds),
        "rss_mib_max": max(rss) / 2**20,
        "unix_answered": answered / asked,
        "unix_health_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
    }


def app_gets_in(bundle: Path, timeout: float = 30.0) -> float:
    """Seconds until a fresh app connection (mutual TLS) answers; nan if it never does."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(MeshdError), MeshClient.from_bundle(bundle, timeout=3) as app:
            app.health()
            return time.monotonic() - started
        time.sleep(0.2)
    return float("nan")


def quiet(daemon: DaemonProcess, root: Path, window: float) -> dict[str, float]:
    return watch(daemon, window)


def gossip(daemon: DaemonProcess, root: Path, window: float) -> dict[str, float]:
    admin = channels.admin_stub(channels.open_channel(daemon.socket))
    code = admin.CreateInvite(apb.CreateInviteRequest(ttl_seconds=600), timeout=10).code
    join_mesh(root / "rogue", code)
    victim = root / "victim.sock"
    made_up = [f"127.0.0.2:{40_000 + i}" for i in range(FLOOD)]
    with RoguePeer(root / "rogue", [f"unix:{victim}", *made_up]) as rogue:
        rogue.announce_to(daemon.address)
        time.sleep(2.0)
        return watch(daemon, window)


class IdleFlood:
    """Keeps `count` TCP connections open that never start TLS, reconnecting each one the
    daemon closes, as a stubborn attacker would."""

    def __init__(self, address: str, count: int) -> None:
        host, _, port = address.rpartition(":")
        self.target = (host, int(port))
        self.sockets: list[socket.socket | None] = [None] * count
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> socket.socket | None:
        with contextlib.suppress(OSError):
            return socket.create_connection(self.target, timeout=1)
        return None

    def _run(self) -> None:
        while not self.stop.is_set():
            for i, sock in enumerate(self.sockets):
                if sock is None or _closed_by_peer(sock):
                    if sock is not None:
                        sock.close()
                    self.sockets[i] = self._connect()
            self.stop.wait(0.2)

    def __enter__(self) -> IdleFlood:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.sockets:
            if sock is not None:
                sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def idle(daemon: DaemonProcess, root: Path, window: float) -> dict[str, float]:
    bundle = root / "app.json"
    bundle.write_bytes(Keyring(daemon.home).client_bundle("bench-app", [daemon.address]))
    with IdleFlood(daemon.address, FLOOD):
        time.sleep(2.0)
        gets_in = app_gets_in(bundle)
        figures = watch(daemon, window)
    figures["app_gets_in_s"] = gets_in
    return figures


def _member(daemon: DaemonProcess, root: Path, name: str) -> Path:
    """A home that joined the founder's mesh with a real invite."""
    admin = channels.admin_stub(channels.open_channel(daemon.socket))
    code = admin.CreateInvite(apb.CreateInviteRequest(ttl_seconds=600), timeout=10).code
    join_mesh(root / name, code)
    return root / name


def renewal(daemon: DaemonProcess, root: Path, window: float) -> dict[str, float]:
    rogue = Keyring(_member(daemon, root, "rogue"))
    friend_home = _member(daemon, root, "friend")
    credentials = rogue.credentials()
    assert credentials is not None
    granted, deadline = 0, time.monotonic() + window
    with channels.open_channel(daemon.address, credentials) as channel:
        stub = channels.mesh_stub(channel)
        while time.monotonic() < deadline:
            try:
                stub.RenewCertificate(pb.RenewCertificateRequest(), timeout=5)
                granted += 1
            except grpc.RpcError:
                time.sleep(0.01)  # refused: ask again, as a flood does
    admin = channels.admin_stub(channels.open_channel(daemon.socket))
    admin.Revoke(apb.RevokeRequest(name=rogue.peer_id()), timeout=30)
    list_bytes = len(Keyring(daemon.home).revocations().to_bytes())
    env = {"MESHD_INSECURE_DEV": "false", "MESHD_DISCOVERY": "false", "MESHD_SPARE_RUNNER": "false"}
    friend = DaemonProcess(friend_home, [], env=env, extra_args=["--peer", daemon.address])
    friend.start()
    try:
        assert friend.proc is not None
        friend_process = psutil.Process(friend.proc.pid)
        time.sleep(2.0)  # the friend adopts the list
        friend_process.cpu_percent()
        figures = watch(daemon, window)
        figures["friend_cpu_percent"] = friend_process.cpu_percent()
    finally:
        friend.stop(timeout=10)
    figures["renewals_granted"] = granted
    figures["revocation_list_bytes"] = list_bytes
    return figures


def rotation(daemon: DaemonProcess, root: Path, window: float) -> dict[str, float]:
    home = _member(daemon, root, "rogue")
    stop = threading.Event()
    with RoguePeer(home, []) as rogue:
        rogue.announce_to(daemon.address)

        def rotate() -> None:
            port = 20_000
            while not stop.is_set():
                port += 1
                with contextlib.suppress(grpc.RpcError):
                    rogue.announce_to(daemon.address, claimed_address=f"127.0.0.2:{port}")
                stop.wait(0.02)

        rotating = threading.Thread(target=rotate, daemon=True)
        rotating.start()
        try:
            with MeshClient(daemon.socket) as local:
                dials_before = local.mesh_status().dials
            figures = watch(daemon, window)
            with MeshClient(daemon.socket) as local:
                figures["dials"] = local.mesh_status().dials - dials_before
        finally:
            stop.set()
            rotating.join()
    return figures


def http(daemon: DaemonProcess, root: Path, window: float) -> dict[str, float]:
    assert daemon.http
    address = daemon.http.removeprefix("http://")
    with IdleFlood(address, FLOOD):
        time.sleep(2.0)
        started, answered = time.monotonic(), float("nan")
        while time.monotonic() - started < 30:
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"{daemon.http}/v1/models", timeout=3) as reply,
            ):
                if reply.status == 200:
                    answered = time.monotonic() - started
                    break
            time.sleep(0.2)
        figures = watch(daemon, window)
    figures["http_answers_s"] = answered
    return figures


SCENARIOS: dict[str, Callable[[DaemonProcess, Path, float], dict[str, float]]] = {
    "quiet": quiet,
    "gossip": gossip,
    "idle": idle,
    "renewal": renewal,
    "rotation": rotation,
    "http": http,
}


def run(source: Path | None, window: float) -> dict[str, dict[str, float]]:
    results = {}
    for name, scenario in SCENARIOS.items():
        with tempfile.TemporaryDirectory(prefix="meshd-hostile-") as tmp:
            daemon = founder(Path(tmp), source)
            try:
                daemon.start()
                results[name] = scenario(daemon, Path(tmp), window)
            except MeshdError as exc:
                results[name] = {"failed": str(exc)}  # type: ignore[dict-item]
            finally:
                daemon.stop(timeout=10)
    return results


def cell(figures: dict[str, Any], key: str, fmt: str) -> str:
    value = figures.get(key)
    return "-" if value is None else format(value, fmt)


def _other(f: dict[str, Any]) -> str:
    """The figures only one scenario has."""
    parts = []
    if "renewals_granted" in f:
        parts.append(f"{f['renewals_granted']:.0f} renewals")
        parts.append(f"list {f['revocation_list_bytes'] / 1024:.1f} KiB")
        parts.append(f"friend CPU {f['friend_cpu_percent']:.1f}%")
    if "dials" in f:
        parts.append(f"{f['dials']:.0f} dials")
    if "failed" in f:
        parts.append(f"failed: {str(f['failed'])[:60]}")
    return ", ".join(parts) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=15.0, help="seconds watched per scenario")
    parser.add_argument("--before", help="also run an older commit (e.g. ec539fa)")
    parser.add_argument("--only", help="comma-separated scenarios (default: all)")
    args = parser.parse_args()
    if args.only:
        unknown = set(args.only.split(",")) - set(SCENARIOS)
        if unknown:
            sys.exit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        for name in list(SCENARIOS):
            if name not in args.only.split(","):
                del SCENARIOS[name]
    if shutil.which("prlimit") is None:
        sys.exit("needs util-linux prlimit (Linux)")
    runs = {"now": run(None, args.window)}
    if args.before:
        with checkout(args.before) as source:
            runs[f"before ({args.before})"] = run(source, args.window)
    columns = [
        "run",
        "scenario",
        "CPU %",
        "open files",
        "RSS MiB",
        "Unix socket",
        "health p50",
        "app gets in",
        "HTTP answers",
        "other",
    ]
    rows = []
    for label, results in runs.items():
        for name, f in results.items():
            rows.append(
                [
                    label,
                    name,
                    cell(f, "cpu_percent", ".1f"),
                    cell(f, "open_files_max", ".0f"),
                    cell(f, "rss_mib_max", ".0f"),
                    cell(
                        {"x": 100 * f["unix_answered"]} if "unix_answered" in f else {}, "x", ".0f"
                    )
                    + "%",
                    cell(f, "unix_health_p50_ms", ".1f") + " ms",
                    cell(f, "app_gets_in_s", ".1f") + " s" if "app_gets_in_s" in f else "-",
                    cell(f, "http_answers_s", ".2f") + " s" if "http_answers_s" in f else "-",
                    _other(f),
                ]
            )
    print_table(
        f"a founder under hostile traffic (open-file limit {FD_LIMIT}, {FLOOD} each)", columns, rows
    )
    path = write_json(
        "hostile", {"window_s": args.window, "fd_limit": FD_LIMIT, "flood": FLOOD, "runs": runs}
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
