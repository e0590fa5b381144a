"""A real LAN of network namespaces in one mesh with mutual TLS: a founder and a friend who
joined by invite find each other over mDNS, while a third host that announces the mesh's id
and a warm model, but holds no certificate from the mesh CA, is tried (a TLS handshake), never
routed to, and sent no prompt bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import eventually, meshd
from netns import Hosts, unavailable_reason

from meshd.client import MeshClient
from meshd.errors import ModelNotFound
from meshd.process import DaemonProcess
from meshd.security import pki
from meshd.security.keyring import Keyring

REASON = unavailable_reason()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
PORT = 7070

# Runs on the forging host: announce the real mesh id with the meshd discovery code itself,
# and record every byte anyone sends to the announced port.
ROGUE = r"""
import asyncio, json, socket, sys, threading
from meshd.discovery import Discovery, txt_record
ip, mesh_id, report = sys.argv[1], sys.argv[2], sys.argv[3]
seen = {"connections": 0, "bytes": b""}
server = socket.create_server((ip, 7070))
def drain(conn):
    with conn:
        conn.settimeout(5)
        try:
            while block := conn.recv(65536):
                seen["bytes"] += block
        except OSError:
            pass
def serve():
    while True:
        conn, _ = server.accept()
        seen["connections"] += 1
        threading.Thread(target=drain, args=(conn,), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
async def main():
    properties = txt_record("peer-rogue", mesh_id, "0.1.0", 7070)
    found = Discovery("peer-rogue", mesh_id, [ip], 7070, properties, lambda *a: None)
    await found.start()
    while True:
        await asyncio.sleep(0.2)
        data = seen["bytes"]
        with open(report, "w") as out:
            json.dump({"connections": seen["connections"], "bytes": len(data),
                       "secret": b"secret prompt" in data,
                       "only_tls": data[:1] in (b"", b"\x16")}, out)
asyncio.run(main())
"""


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    rig = Hosts(3)
    yield rig
    rig.close()


def _peers_seen(socket: str) -> dict[str, bool]:
    with MeshClient(socket) as mesh:
        return {p.info.peer_id: p.alive for p in mesh.mesh_status().peers if not p.local}


def test_joined_peers_find_each_other_and_a_forged_one_gets_nothing(
    hosts: Hosts, tmp_path: Path
) -> None:
    home = tmp_path / "founder"
    ca = Keyring(home).init_mesh("friends")
    report = tmp_path / "rogue.json"
    rogue = subprocess.Popen(
        [
            *hosts.prefix(1),
            sys.executable,
            "-c",
            ROGUE,
            hosts.ips[1],
            pki.mesh_id_of(ca),
            str(report),
        ]
    )
    env = {"MESHD_DISCOVERY": "true", "MESHD_INSECURE_DEV": "false"}
    # Nobody has the model: only the forged peer claims it.
    founder = DaemonProcess(
        home, [], listen=f"{hosts.ips[0]}:{PORT}", env=env, prefix=hosts.prefix(0)
    )
    friend_home = tmp_path / "friend"
    friend = DaemonProcess(
        friend_home, [], listen=f"{hosts.ips[2]}:{PORT}", env=env, prefix=hosts.prefix(2)
    )
    try:
        founder.start(timeout=60)
        with MeshClient(founder.socket) as mesh:
            assert mesh.health()
        code = meshd("invite", home=home).stdout.split("meshd join ")[1].split()[0]
        joined = subprocess.run(
            [
                *hosts.prefix(2),
                sys.executable,
                "-m",
                "meshd.cli",
                "join",
                code,
                "--no-service",
                "--home",
                str(friend_home),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert joined.returncode == 0, joined.stderr
        (friend_home / "tls" / "mesh.json").unlink()  # no static link: mDNS must find the founder
        friend.start(timeout=60)
        founder_id, friend_id = Keyring(home).peer_id(), Keyring(friend_home).peer_id()
        eventually(lambda: _peers_seen(founder.socket) == {friend_id: True}, timeout=20)
        eventually(lambda: _peers_seen(friend.socket) == {founder_id: True}, timeout=20)

        def tried() -> bool:
            return (
                report.exists() and json.loads(report.read_text() or "{}").get("connections", 0) > 0
            )

        eventually(tried, timeout=20)  # the announcement was heard and a handshake attempted
        time.sleep(2)
        assert _peers_seen(founder.socket) == {friend_id: True}
        with MeshClient(founder.socket) as mesh, pytest.raises(ModelNotFound):
            mesh.complete("tiny", "secret prompt", max_tokens=2)
        time.sleep(0.5)
        seen = json.loads(report.read_text())
        assert not seen["secret"] and seen["only_tls"], seen
    finally:
        friend.stop()
        founder.stop()
        rogue.kill()
        rogue.wait()
