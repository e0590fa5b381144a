"""A mesh peer that gossips hostile addresses: bounded, backed off, forgotten, never a Unix
socket, and forgotten with the peer's revocation. The peer is real: it joined with an invite and
serves gRPC with its mesh certificate; only its heartbeat replies are its own."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import RawListener, eventually
from meshes import Start, admin, founder, invite_code
from rogue import RoguePeer

from meshd import gossip
from meshd.client import MeshClient
from meshd.rpc.join import join_mesh
from meshd.v1 import access_pb2 as apb


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[RawListener]:
    """A Unix socket of the rogue's choosing, counting who connects to it."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "victim.sock"))
    found = RawListener(sock)
    yield found
    found.close()


def hostile_gossip(victim: Path, count: int = 300) -> list[str]:
    """Unix paths, junk, and made-up loopback addresses where nothing listens."""
    unix = [f"unix:{victim}", f"unix://{victim}", f"unix:{victim}:1"]
    junk = ["x" * 10_000, "http://127.0.0.1:1/", "127.0.0.1:0", ""]
    return unix + junk + [f"127.0.0.2:{40_000 + i}" for i in range(count)]


def learned_from(node: object, teller: str) -> list[str]:
    table = node.node.table  # type: ignore[attr-defined]
    return [e.address for e in list(table.entries.values()) if e.teller == teller]


def test_a_flood_of_gossip_is_bounded_backed_off_and_forgotten(
    tmp_path: Path, start_peer: Start, victim: RawListener
) -> None:
    a = founder(tmp_path, start_peer, models={}, heartbeat_interval=0.2, dead_after=1.0)
    join_mesh(tmp_path / "m", invite_code(a))
    gossip_sent = hostile_gossip(Path(victim.sock.getsockname()))
    with RoguePeer(tmp_path / "m", gossip_sent) as rogue:
        rogue.announce_to(a.address)
        rogue.announce_to(a.address, claimed_address=f"unix:{victim.sock.getsockname()}")
        eventually(lambda: len(learned_from(a, rogue.peer_id)) >= gossip.MAX_PER_TELLER)
        time.sleep(1.0)
        assert len(learned_from(a, rogue.peer_id)) <= gossip.MAX_PER_TELLER + 1  # + its own
        assert all(address.startswith("127.0.0.") for address in learned_from(a, rogue.peer_id))
        with MeshClient(f"unix:{a.node.socket}") as mesh:  # type: ignore[union-attr]
            seen = mesh.mesh_status()
        assert seen.dials > 0
        backing_off = [k for k in seen.addresses if k.teller == rogue.peer_id and k.failures]
        assert backing_off and max(k.next_dial_in for k in backing_off) > 0.2
        # Every made-up address it could name (the first 2 × MAX_PER_TELLER of its list) is
        # given up on, and gossiping them again does not bring them back.
        read = gossip_sent[: 2 * gossip.MAX_PER_TELLER]
        readable = [g for g in read if g.startswith("127.0.0.2:")]
        table = a.node.table  # type: ignore[union-attr]

        def all_given_up() -> bool:
            gone = set(readable) <= set(table.forgotten)
            return gone and learned_from(a, rogue.peer_id) == [rogue.address]

        eventually(all_given_up, timeout=60)
        dials = a.node.table.dials  # type: ignore[union-attr]
        time.sleep(2.0)
        assert a.node.table.dials - dials <= 2 / 0.2 + 2  # type: ignore[union-attr]
    # The rogue read at most 2 × MAX_PER_TELLER of its list, each dialled a bounded number of times.
    assert dials <= 2 * gossip.MAX_PER_TELLER * gossip.NEVER_ANSWERED_TRIES + rogue.heartbeats
    assert victim.connections == 0


def test_what_a_revoked_peer_gossiped_is_forgotten_with_it(
    tmp_path: Path, start_peer: Start, victim: RawListener
) -> None:
    a = founder(tmp_path, start_peer, models={}, heartbeat_interval=0.2, dead_after=1.0)
    join_mesh(tmp_path / "m", invite_code(a))
    with RoguePeer(tmp_path / "m", hostile_gossip(Path(victim.sock.getsockname()))) as rogue:
        rogue.announce_to(a.address)
        eventually(lambda: len(learned_from(a, rogue.peer_id)) >= gossip.MAX_PER_TELLER)
        admin(a).Revoke(apb.RevokeRequest(name=rogue.peer_id))
        eventually(lambda: learned_from(a, rogue.peer_id) == [])
        assert rogue.address not in a.node.table.entries  # type: ignore[union-attr]
        beats = rogue.heartbeats
        time.sleep(1.0)
        assert rogue.heartbeats == beats, "a revoked peer is not dialled any more"


def test_a_member_rotating_its_sender_address_gets_nowhere(
    tmp_path: Path, start_peer: Start
) -> None:
    """A member that claims a new address of its own in every heartbeat: the founder takes
    one made-up address at a time, not one per heartbeat."""
    a = founder(tmp_path, start_peer, models={}, heartbeat_interval=0.2, dead_after=1.0)
    join_mesh(tmp_path / "m", invite_code(a))
    with RoguePeer(tmp_path / "m", []) as rogue:
        rogue.announce_to(a.address)
        eventually(lambda: rogue.address in learned_from(a, rogue.peer_id))
        made_up = [f"127.0.0.2:{41_000 + i}" for i in range(50)]
        for address in made_up:
            rogue.announce_to(a.address, claimed_address=address)
        learned = learned_from(a, rogue.peer_id)
        assert len(set(learned) & set(made_up)) <= 1, learned
        assert a.node is not None
        tried = {k.address for k in a.node.table.addresses(time.monotonic())}
        assert len(tried & set(made_up)) <= 1
