"""Real mDNS between hosts in network namespaces: peers find each other; other meshes ignored."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Hosts, unavailable_reason

from meshd.process import DaemonProcess
from meshd.security.keyring import Keyring

REASON = unavailable_reason()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
PORT = 7070


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    rig = Hosts(4)
    yield rig
    rig.close()


def start(rig: Hosts, i: int, home: Path, model: str, mesh_id: str = "friends") -> DaemonProcess:
    daemon = DaemonProcess(
        home,
        [model],
        listen=f"{rig.ips[i]}:{PORT}",
        extra_args=["--mesh-id", mesh_id, "--threads", "1"],
        env={"MESHD_DISCOVERY": "true", "MESHD_HEARTBEAT_INTERVAL": "0.5s"},
        prefix=rig.prefix(i),
    )
    return daemon.start(timeout=60)


def seen_by(rig: Hosts, i: int) -> dict[str, bool]:
    """Peer id -> alive, as host i's daemon sees the mesh."""
    out = subprocess.run(
        [
            *rig.prefix(i),
            sys.executable,
            "-m",
            "meshd.cli",
            "status",
            "--json",
            "--addr",
            f"{rig.ips[i]}:{PORT}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    peers = json.loads(out.stdout)["peers"]
    return {p["info"]["peer_id"]: p["alive"] for p in peers if not p["local"]}


def test_peers_find_each_other_over_mdns_and_ignore_another_mesh(
    hosts: Hosts, tmp_path: Path, tiny_model: Path
) -> None:
    daemons = [start(hosts, i, tmp_path / f"h{i}", f"m{i}={tiny_model}") for i in range(3)]
    stranger = start(hosts, 3, tmp_path / "h3", f"secret={tiny_model}", mesh_id="other")
    try:
        ids = [Keyring(tmp_path / f"h{i}").peer_id() for i in range(4)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            views = [seen_by(hosts, i) for i in range(3)]
            if all(
                set(v) == set(ids[:3]) - {ids[i]} and all(v.values()) for i, v in enumerate(views)
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"peers did not find each other: {views}")
        assert all(ids[3] not in view for view in views), "another mesh is never listed"
        assert seen_by(hosts, 3) == {}
    finally:
        for daemon in [*daemons, stranger]:
            daemon.stop()


def test_a_peer_started_before_the_network_is_found_once_it_comes_up(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A boot daemon starts before DHCP: no LAN address, so it advertises loopback and cannot
    announce. When the address arrives it announces on it, and the others find it."""
    rig = Hosts(2)
    late = None
    try:
        rig.remove_address(0)
        late = DaemonProcess(
            tmp_path / "h0",
            [f"m0={tiny_model}"],
            listen=f"0.0.0.0:{PORT}",
            extra_args=["--mesh-id", "friends", "--threads", "1"],
            env={"MESHD_DISCOVERY": "true", "MESHD_HEARTBEAT_INTERVAL": "0.5s"},
            prefix=rig.prefix(0),
        ).start(timeout=60)
        other = start(rig, 1, tmp_path / "h1", f"m1={tiny_model}")
        late_id = Keyring(tmp_path / "h0").peer_id()
        assert seen_by(rig, 1) == {}, "nothing to find before the network is up"
        rig.add_address(0)
        deadline = time.monotonic() + 60
        while seen_by(rig, 1).get(late_id) is not True:
            assert time.monotonic() < deadline, f"never found: {late.log_tail(10)}"
            time.sleep(0.5)
        assert "network addresses changed: none → 10.213.0.1" in late.log_path.read_text()
        other.stop()
    finally:
        if late is not None:
            late.stop()
        rig.close()
