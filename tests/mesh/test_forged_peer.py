"""A forged mDNS announcement, on a real LAN of network namespaces: a host announces the
founder's mesh id and a warm model, but holds no certificate from the mesh CA. The founder
tries it (a TLS handshake), never routes to it, and sends it no prompt bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import eventually
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
    describe = lambda: txt_record("peer-rogue", mesh_id, "0.1.0", 7070, ["tiny"], 0)
    found = Discovery("peer-rogue", mesh_id, ip, 7070, describe, lambda *a: None)
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
    rig = Hosts(2)
    yield rig
    rig.close()


def test_a_forged_announcement_is_never_routed_to(hosts: Hosts, tmp_path: Path) -> None:
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
    founder = DaemonProcess(
        home,
        [],  # the founder has no model: only the forged peer claims one
        listen=f"{hosts.ips[0]}:{PORT}",
        env={"MESHD_DISCOVERY": "true", "MESHD_INSECURE_DEV": "false"},
        prefix=hosts.prefix(0),
    )
    try:
        founder.start(timeout=60)

        def tried() -> bool:
            return (
                report.exists() and json.loads(report.read_text() or "{}").get("connections", 0) > 0
            )

        eventually(tried, timeout=20)  # the announcement was heard and a handshake attempted
        time.sleep(2)
        with MeshClient(founder.socket) as mesh:
            assert [p.info.peer_id for p in mesh.mesh_status().peers if not p.local] == []
            with pytest.raises(ModelNotFound):
                mesh.complete("tiny", "secret prompt", max_tokens=2)
        time.sleep(0.5)
        seen = json.loads(report.read_text())
        assert not seen["secret"] and seen["only_tls"], seen
    finally:
        founder.stop()
        rogue.kill()
        rogue.wait()
