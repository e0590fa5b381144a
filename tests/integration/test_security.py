"""A real mesh with mutual TLS: joining by invite, and bad actors getting nothing while the
daemons keep serving. Every daemon here runs without --insecure-dev."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from conftest import NodeThread
from grpc_health.v1 import health_pb2
from helpers import RawListener, eventually, meshd
from meshes import Start, admin, credentials_of, founder, invite_code, joined

from meshd.client import MeshClient
from meshd.errors import AccessDenied, ModelNotFound, Overloaded, PeerUnavailable
from meshd.process import DaemonProcess
from meshd.pull import LocalSource, PeerSource, pull
from meshd.rpc import channels
from meshd.rpc.join import join_mesh
from meshd.security import pki
from meshd.security.invite import InviteCode, decode_invite
from meshd.security.keyring import Keyring, load_bundle
from meshd.store import ModelStore
from meshd.types import ModelState
from meshd.v1 import access_pb2 as apb, mesh_pb2 as pb


def test_a_joined_peer_serves_the_mesh_over_mutual_tls(tmp_path: Path, start_peer: Start) -> None:
    a = founder(tmp_path, start_peer)
    b = joined(tmp_path, start_peer, a, "b", models={})
    assert a.node is not None and b.node is not None
    assert b.node.mesh.mesh_id == a.node.mesh.mesh_id != "default"
    eventually(
        lambda: (
            [e.info.peer_id for e in b.node.table.live(time.monotonic()) if e.info]
            == [a.node.peer_id]
        )
    )
    # The CLI's way in (the Unix socket), routed to the founder over mutual TLS.
    with MeshClient(f"unix:{b.node.socket}") as mesh:
        answer = mesh.complete("tiny", "Hello", max_tokens=4, temperature=0)
    assert answer.served_by == a.node.peer_id and answer.tokens == 4
    # A peer certificate also works straight over TCP.
    with MeshClient(a.address, credentials=credentials_of(tmp_path / "b")) as mesh:
        assert mesh.health()
    # The peer id is the hash of the key the certificate was issued for.
    cert = Keyring(tmp_path / "b").certificate()
    assert cert is not None and pki.holder_of(cert).name == b.node.peer_id


def _bad_credentials(tmp_path: Path, kind: str) -> grpc.ChannelCredentials:
    """Client credentials of each kind a stranger might try."""
    ca_pem = (tmp_path / "a" / "tls" / "ca.crt").read_bytes()
    ring = Keyring(tmp_path / "a")
    key = pki.new_key()
    if kind == "none":
        return grpc.ssl_channel_credentials(ca_pem)
    if kind == "self-signed":
        signer, issuer = key, pki.create_ca("self")[1]
        cert = pki.issue(signer, issuer, key.public_key(), "peer", "stranger")
    elif kind == "other-mesh":
        other_key, other_ca = pki.create_ca("elsewhere")
        cert = pki.issue(other_key, other_ca, key.public_key(), "peer", "stranger")
    elif kind == "expired":
        ca = ring.ca()
        assert ca is not None
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        cert = pki.issue(
            ring.ca_key(), ca, key.public_key(), "peer", "old", days=1, not_before=past
        )
    else:
        raise AssertionError(kind)
    return grpc.ssl_channel_credentials(ca_pem, pki.key_pem(key), pki.cert_pem(cert))


def _every_method(channel: grpc.Channel) -> dict[str, Callable[[], Any]]:
    mesh = channels.mesh_stub(channel)
    generate = pb.GenerateRequest(model="tiny", prompt="secret prompt", max_tokens=2)
    return {
        "Generate": lambda: list(mesh.Generate(generate, timeout=5)),
        "Warm": lambda: mesh.Warm(pb.WarmRequest(model="tiny"), timeout=5),
        "ListModels": lambda: mesh.ListModels(pb.ListModelsRequest(), timeout=5),
        "PeerStatus": lambda: mesh.PeerStatus(pb.PeerStatusRequest(), timeout=5),
        "MeshStatus": lambda: mesh.MeshStatus(pb.MeshStatusRequest(), timeout=5),
        "FetchModel": lambda: list(mesh.FetchModel(pb.FetchModelRequest(name="x"), timeout=5)),
        "Heartbeat": lambda: mesh.Heartbeat(pb.HeartbeatRequest(), timeout=5),
        "Health": lambda: channels.health_stub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        ),
        "Revoke": lambda: channels.admin_stub(channel).Revoke(apb.RevokeRequest(name="x")),
    }


def _refused(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["none", "self-signed", "other-mesh", "expired", "plaintext"])
def test_strangers_are_refused_on_every_method(
    tmp_path: Path, start_peer: Start, kind: str
) -> None:
    a = founder(tmp_path, start_peer)
    if kind == "plaintext":
        channel = grpc.insecure_channel(a.address)
    else:
        options = [("grpc.ssl_target_name_override", pki.PEER_SERVER_NAME)]
        channel = grpc.secure_channel(a.address, _bad_credentials(tmp_path, kind), options)
    with channel:
        codes = {name: _refused(call) for name, call in _every_method(channel).items()}
    assert set(codes.values()) == {grpc.StatusCode.UNAVAILABLE}, codes  # the handshake fails
    tiny = a.engine.hosts["tiny"]
    assert tiny.state is ModelState.COLD and tiny.last_used == 0  # not a token of work done
    with MeshClient(f"unix:{a.node.socket}") as mesh:  # type: ignore[union-attr]
        assert mesh.complete("tiny", "Hi", max_tokens=2).tokens == 2  # still serving


def test_an_app_credential_cannot_call_peer_only_methods(tmp_path: Path, start_peer: Start) -> None:
    a = founder(tmp_path, start_peer)
    bundle = tmp_path / "app.json"
    bundle.write_bytes(Keyring(tmp_path / "a").client_bundle("myapp", [a.address]))
    with MeshClient.from_bundle(bundle) as mesh:
        mesh.warm("tiny", wait=True)
        assert mesh.complete("tiny", "Hi", max_tokens=3).tokens == 3
        assert [(m.name, m.path) for m in mesh.models()] == [("tiny", "")], "no local paths"
        assert mesh.health()
    with MeshClient(f"unix:{a.node.socket}") as local:  # type: ignore[union-attr]
        assert local.models()[0].path.endswith("tiny.gguf")
    credentials, _ = load_bundle(bundle)
    with channels.open_channel(a.address, credentials) as channel:
        methods = _every_method(channel)
        for name in ("FetchModel", "Heartbeat", "Revoke"):
            assert _refused(methods[name]) == grpc.StatusCode.PERMISSION_DENIED, name


def test_invites_work_once_expire_and_limit_wrong_secrets(
    tmp_path: Path, start_peer: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="meshd.access")
    a = founder(tmp_path, start_peer)
    code = invite_code(a)
    join_mesh(tmp_path / "b", code)
    with pytest.raises(AccessDenied, match="wrong, used or expired"):
        join_mesh(tmp_path / "c", code)  # used
    short = invite_code(a, ttl=0.3)
    time.sleep(0.5)
    with pytest.raises(AccessDenied, match="wrong, used or expired"):
        join_mesh(tmp_path / "d", short)  # expired
    good = decode_invite(invite_code(a))
    wrong = InviteCode(good.addresses, good.fingerprint, bytes(16)).encode()
    outcomes = []
    for attempt in range(6):
        with pytest.raises((AccessDenied, Overloaded)) as caught:
            join_mesh(tmp_path / f"e{attempt}", wrong)
        outcomes.append(type(caught.value))
    # Two refusals above count too: the limit (5 a minute) is met before the sixth wrong secret.
    assert outcomes.count(Overloaded) >= 1 and outcomes[-1] is Overloaded
    with pytest.raises(Overloaded):
        join_mesh(tmp_path / "f", good.encode())  # even the right secret waits out the minute
    refusals = [r.message for r in caplog.records if "refused a join" in r.message]
    assert len(refusals) == 1, "refusals are logged once a minute per source"
    assert "from ipv4:127.0.0.1:" in refusals[0]
    for home in ("c", "d", "e0", "f"):  # nothing half-written by a refused join
        assert Keyring(tmp_path / home).ca() is None


def test_a_code_whose_fingerprint_does_not_match_is_refused_before_the_secret_is_sent(
    tmp_path: Path, start_peer: Start
) -> None:
    a = founder(tmp_path, start_peer)
    good = decode_invite(invite_code(a))
    forged = InviteCode(good.addresses, bytes(32), good.secret).encode()
    with pytest.raises(AccessDenied, match="does not match the invite code"):
        join_mesh(tmp_path / "b", forged)
    join_mesh(tmp_path / "c", good.encode())  # the secret was never spent


def test_a_revoked_peer_is_refused_by_every_peer_within_seconds(
    tmp_path: Path, start_peer: Start
) -> None:
    a = founder(tmp_path, start_peer)
    b = joined(tmp_path, start_peer, a, "b")
    c = joined(tmp_path, start_peer, a, "c", models={})
    assert a.node is not None and b.node is not None and c.node is not None
    eventually(lambda: len(b.node.table.live(time.monotonic())) == 2, timeout=15)
    reply = admin(a).Revoke(apb.RevokeRequest(name=c.node.peer_id))
    assert reply.list_number == 1 and len(reply.serials) == 1
    # How fast it spreads is a figure of bench/security.py; here: that it does.
    eventually(lambda: b.node.trust.revocations.number == 1, timeout=30)
    peers_of_b = {e.info.peer_id for e in b.node.table.entries.values() if e.info}
    assert c.node.peer_id not in peers_of_b
    revoked = credentials_of(tmp_path / "c")
    for target in (a, b):
        with channels.open_channel(target.address, revoked) as channel:
            methods = _every_method(channel)
            for name in ("Generate", "ListModels", "Health", "Heartbeat"):
                assert _refused(methods[name]) == grpc.StatusCode.UNAUTHENTICATED, name
    # Revocation survives a restart: it is on disk, CA-signed.
    assert Keyring(tmp_path / "b").revocations().refuses(0, c.node.peer_id)


def test_a_peer_outside_any_mesh_serves_only_its_socket(tmp_path: Path, start_peer: Start) -> None:
    lone = start_peer("lone")
    assert lone.node is not None and lone.node.port == 0 and lone.node.address == ""
    assert oct(lone.node.socket.stat().st_mode & 0o777) == "0o600"
    with MeshClient(f"unix:{lone.node.socket}") as mesh:
        assert mesh.complete("tiny", "Hi", max_tokens=2).tokens == 2


def test_a_forged_peer_with_the_right_mesh_id_is_never_routed_to(
    tmp_path: Path, start_peer: Start
) -> None:
    a = founder(tmp_path, start_peer, models={})
    assert a.node is not None
    rogue = RawListener()
    try:
        # What discovery does with an announcement carrying this mesh's id.
        a.call(_add_peer(a, rogue.address, "peer-rogue"))
        eventually(lambda: rogue.connections >= 1)
        time.sleep(3 * a.settings.heartbeat_interval)
        assert a.node.table.live(time.monotonic()) == []
        with MeshClient(f"unix:{a.node.socket}") as mesh, pytest.raises(ModelNotFound):
            mesh.complete("tiny", "secret prompt", max_tokens=2)
        assert b"secret prompt" not in rogue.received
        assert rogue.received[:1] in (b"", b"\x16")  # nothing but TLS handshake records
    finally:
        rogue.close()


async def _add_peer(node: NodeThread, address: str, peer_id: str) -> None:
    assert node.node is not None
    node.node.table.add(address, peer_id)


def test_socket_audit_only_the_unix_socket_the_tls_port_and_loopback_http(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = tmp_path / "audit"
    Keyring(home).init_mesh("friends")
    env = {"MESHD_INSECURE_DEV": "false", "MESHD_DISCOVERY": "false"}
    with DaemonProcess(home, [f"tiny={tiny_model}"], env=env) as daemon:
        assert daemon.proc is not None
        process = psutil.Process(daemon.proc.pid)
        port = int(daemon.address.rpartition(":")[2])
        listening = [
            c.laddr for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN
        ]
        http_port = int(daemon.http.rpartition(":")[2])
        # gRPC binds a dual-stack socket: 127.0.0.1 shows as its IPv4-mapped form.
        found = sorted((a.ip.removeprefix("::ffff:"), a.port) for a in listening)
        assert found == sorted([("127.0.0.1", port), ("127.0.0.1", http_port)])
        udp = [c for c in process.net_connections("udp")]
        assert udp == []
        unix = {c.laddr for c in process.net_connections("unix") if c.laddr}
        socket_path = daemon.socket.removeprefix("unix:")
        assert unix == {socket_path}
        assert oct(os.stat(socket_path).st_mode & 0o777) == "0o600"
        assert oct(home.stat().st_mode & 0o777) == "0o700"
        assert oct((home / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"
        assert oct((home / "tls" / "peer.key").stat().st_mode & 0o777) == "0o600"
        with grpc.insecure_channel(daemon.address) as plaintext:  # the TCP port is TLS only
            assert _refused(_every_method(plaintext)["Health"]) == grpc.StatusCode.UNAVAILABLE


def test_model_files_go_only_to_peers_of_the_mesh(
    tmp_path: Path, start_peer: Start, tiny_model: Path
) -> None:
    Keyring(tmp_path / "a").init_mesh("friends")
    pull(ModelStore(tmp_path / "a"), LocalSource(tiny_model), name="tiny")
    a = start_peer("a", models={})
    join_mesh(tmp_path / "b", invite_code(a))
    peer = credentials_of(tmp_path / "b")
    got = pull(ModelStore(tmp_path / "b"), PeerSource(a.address, "tiny", credentials=peer))
    assert got.model.size == ModelStore(tmp_path / "a").get("tiny").size
    bundle = tmp_path / "app.json"
    bundle.write_bytes(Keyring(tmp_path / "a").client_bundle("myapp", [a.address]))
    app, _ = load_bundle(bundle)
    with pytest.raises(AccessDenied, match="not open to client myapp"):
        pull(ModelStore(tmp_path / "c"), PeerSource(a.address, "tiny", credentials=app))
    with pytest.raises(PeerUnavailable):  # no certificate at all: the handshake fails
        pull(ModelStore(tmp_path / "d"), PeerSource(a.address, "tiny"))
    assert not any((tmp_path / "c" / "store" / "blobs").glob("*"))


def test_a_peer_cannot_heartbeat_in_another_peers_name(tmp_path: Path, start_peer: Start) -> None:
    a = founder(tmp_path, start_peer)
    join_mesh(tmp_path / "b", invite_code(a))
    sender = pb.PeerInfo(
        peer_id=Keyring(tmp_path / "a").peer_id(), mesh_id="x", address="1.2.3.4:1"
    )
    with channels.open_channel(a.address, credentials_of(tmp_path / "b")) as channel:
        stub = channels.mesh_stub(channel)
        impersonation = pb.HeartbeatRequest(sender=sender)
        assert _refused(lambda: stub.Heartbeat(impersonation)) == grpc.StatusCode.PERMISSION_DENIED
        sender.peer_id = Keyring(tmp_path / "b").peer_id()
        sender.address = ""  # its own name is fine
        assert stub.Heartbeat(pb.HeartbeatRequest(sender=sender)).peer.peer_id


def test_the_right_secret_with_a_malformed_request_leaves_the_invite_open(
    tmp_path: Path, start_peer: Start
) -> None:
    a = founder(tmp_path, start_peer, models={})
    assert a.node is not None and a.node.trust.ca is not None
    code = invite_code(a)
    invite = decode_invite(code)
    channel = channels.open_join_channel(invite.addresses[0], pki.cert_pem(a.node.trust.ca))
    request = apb.JoinRequest(secret=invite.secret, csr=b"not a certificate request")
    with pytest.raises(grpc.RpcError) as caught:
        channels.join_stub(channel).Join(request, timeout=10)
    assert "not DER" in str(caught.value.details())
    join_mesh(tmp_path / "b", code)  # the invite still works, once
    assert Keyring(tmp_path / "b").ca() is not None
    with pytest.raises(AccessDenied, match="used or expired"):
        join_mesh(tmp_path / "c", code)


def test_a_restored_ca_holder_invites_and_revokes(tmp_path: Path, start_peer: Start) -> None:
    a = founder(tmp_path, start_peer)
    b = joined(tmp_path, start_peer, a, "b", models={})
    secret = tmp_path / "passphrase"
    secret.write_text("a long passphrase\n")
    backup = tmp_path / "ca.backup"
    made = meshd(
        "ca", "backup", "--out", str(backup), "--passphrase-file", str(secret), home=tmp_path / "a"
    )
    assert made.returncode == 0, made.stderr
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase")
    refused = meshd(
        "ca", "restore", str(backup), "--passphrase-file", str(wrong), home=tmp_path / "b"
    )
    assert refused.returncode == 1 and "wrong passphrase" in refused.stderr
    assert not Keyring(tmp_path / "b").is_founder()
    restored = meshd(
        "ca", "restore", str(backup), "--passphrase-file", str(secret), home=tmp_path / "b"
    )
    assert restored.returncode == 0, restored.stderr
    c = joined(tmp_path, start_peer, b, "c", models={})  # invited by b, not by the founder
    assert c.node is not None and a.node is not None
    c_id = c.node.peer_id
    live_at_a = a.node.table.live
    eventually(lambda: c_id in {e.info.peer_id for e in live_at_a(time.monotonic()) if e.info})
    assert meshd("revoke", c_id, home=tmp_path / "b").returncode == 0
    refuses = a.node.trust.refuses_peer
    eventually(lambda: refuses(c_id))  # the founder honours a list the restored holder signed


def test_the_revocation_list_travels_only_to_a_peer_whose_list_is_older(
    tmp_path: Path, start_peer: Start
) -> None:
    """Every heartbeat says the number of the sender's list; the list itself goes only where
    it is news, so a long list costs nothing once every peer has it."""
    a = founder(tmp_path, start_peer)
    b = joined(tmp_path, start_peer, a, "b", models={})
    c = joined(tmp_path, start_peer, a, "c", models={})
    assert a.node is not None and b.node is not None and c.node is not None
    admin(a).Revoke(apb.RevokeRequest(name=c.node.peer_id))
    eventually(lambda: b.node.trust.revocations.number == 1, timeout=30)  # type: ignore[union-attr]
    sender = pb.PeerInfo(peer_id=b.node.peer_id, mesh_id=b.node.mesh.mesh_id, address=b.address)
    with channels.open_channel(a.address, credentials_of(tmp_path / "b")) as channel:
        stub = channels.mesh_stub(channel)
        current = stub.Heartbeat(pb.HeartbeatRequest(sender=sender, revocations_number=1))
        assert current.revocations_number == 1 and current.revocations == b""
        behind = stub.Heartbeat(pb.HeartbeatRequest(sender=sender, revocations_number=0))
        assert (
            behind.revocations_number == 1 and behind.revocations == a.node.trust.revocations_wire
        )
        # A list claimed newer that does not verify is dropped, and ours stays.
        forged = pb.HeartbeatRequest(sender=sender, revocations=b"{}", revocations_number=9)
        stub.Heartbeat(forged)
    assert a.node.trust.revocations.number == 1
