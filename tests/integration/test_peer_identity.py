"""A peer's certificate names its peer id and is checked by whoever dials it; certificates
renew themselves from a CA holder well before they end, without a restart."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from pathlib import Path

import grpc
import pytest
from helpers import eventually
from meshes import FAST, Start, credentials_of, founder, invite_code, joined
from rogue import RoguePeer

from meshd.client import MeshClient
from meshd.errors import PeerUnavailable
from meshd.peers import PeerTable
from meshd.rpc import channels
from meshd.rpc.join import join_mesh
from meshd.security import pki
from meshd.security.keyring import Keyring
from meshd.v1 import mesh_pb2 as pb


def test_a_channel_pinned_to_a_peer_id_accepts_only_that_peer(
    tmp_path: Path, start_peer: Start
) -> None:
    a = founder(tmp_path, start_peer, "a", models={})
    b = joined(tmp_path, start_peer, a, "b", models={})
    assert a.node is not None and b.node is not None
    mine = credentials_of(tmp_path / "b")
    for peer_id, works in ((a.node.peer_id, True), (b.node.peer_id, False), ("", True)):
        channel = channels.open_channel(a.address, mine, peer_id=peer_id)
        try:
            stub = channels.mesh_stub(channel)
            if works:
                stub.PeerStatus(pb.PeerStatusRequest(), timeout=5)
            else:
                with pytest.raises(grpc.RpcError) as failed:
                    stub.PeerStatus(pb.PeerStatusRequest(), timeout=5)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            channel.close()
    with (
        MeshClient(a.address, credentials=mine, peer_id=b.node.peer_id) as client,
        pytest.raises(PeerUnavailable),
    ):
        client.status()


def test_a_member_claiming_another_peer_s_id_is_never_believed(
    tmp_path: Path, start_peer: Start
) -> None:
    a = founder(tmp_path, start_peer, "a", models={}, **FAST)
    b = joined(tmp_path, start_peer, a, "b", models={}, **FAST)
    assert a.node is not None and b.node is not None
    join_mesh(tmp_path / "rogue", invite_code(a))
    with RoguePeer(tmp_path / "rogue", gossip=[]) as rogue:
        rogue.peer_id = b.node.peer_id  # a real member, answering as b
        a.call(_dial(a.node.table, rogue.address))
        eventually(lambda: rogue.heartbeats >= 1)
        until = time.monotonic() + 2.0  # ten heartbeat rounds: it never once counts as b
        while time.monotonic() < until:
            entry = a.node.table.entries.get(rogue.address)
            assert entry is None or entry.info is None, "a's table believed the rogue"
            time.sleep(0.01)
        assert rogue.heartbeats >= 3  # asked again and again (backing off), believed never
        assert [e.info.peer_id for e in a.node.table.live(time.monotonic()) if e.info] == [
            b.node.peer_id
        ]


async def _dial(table: PeerTable, address: str) -> None:
    table.add(address)  # on the node's loop, as a settings or mDNS address would be


def _short_certificate(home: Path, ca_home: Path) -> None:
    """Swap home's certificate for one that ends tomorrow (issued 9 days ago): due for renewal."""
    ring, ca_ring = Keyring(home), Keyring(ca_home)
    ca = ca_ring.ca()
    assert ca is not None
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=9)
    cert = pki.issue(
        ca_ring.ca_key(), ca, ring.peer_key().public_key(), "peer", ring.peer_id(),
        days=10, not_before=start,
    )  # fmt: skip
    ring.save_membership(pki.cert_pem(ca), pki.cert_pem(cert), ring.mesh_addresses())


def _served_serial(address: str) -> int:
    host, _, port = address.rpartition(":")
    pem = ssl.get_server_certificate((host, int(port)), timeout=5).encode()
    return pki.load_cert(pem).serial_number


def test_a_certificate_near_its_end_is_renewed_by_a_ca_holder_and_served_at_once(
    tmp_path: Path, start_peer: Start
) -> None:
    a = founder(tmp_path, start_peer, "a", models={}, **FAST)
    join_mesh(tmp_path / "b", invite_code(a))
    _short_certificate(tmp_path / "b", tmp_path / "a")
    old = Keyring(tmp_path / "b").certificate()
    assert old is not None
    b = start_peer("b", models={}, **FAST)
    assert a.node is not None and b.node is not None
    assert _served_serial(b.address) == old.serial_number

    def renewed() -> bool:
        cert = Keyring(tmp_path / "b").certificate()
        return cert is not None and cert.serial_number != old.serial_number

    eventually(renewed, timeout=15)
    fresh = Keyring(tmp_path / "b").certificate()
    assert fresh is not None
    assert fresh.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    assert fresh.public_key() == old.public_key()
    eventually(lambda: _served_serial(b.address) == fresh.serial_number)  # no restart
    assert b.node.mesh.local_info().certificate_expires == fresh.not_valid_after_utc.timestamp()
    eventually(
        lambda: any(
            e.info and e.info.certificate_expires == fresh.not_valid_after_utc.timestamp()
            for e in a.node.table.live(time.monotonic())
        )
    )  # the founder still hears b, now with its new certificate
