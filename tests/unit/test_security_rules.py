"""Invite codes, the revocation list, the permission table and identities, without sockets."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.errors import ConfigError, InvalidRequest, Overloaded
from meshd.rpc.guard import Caller, allowed
from meshd.security import pki
from meshd.security.invite import InviteBook, InviteCode, check_host, decode_invite
from meshd.security.keyring import Keyring
from meshd.security.revocation import RevocationList, Revoked, parse_revocations
from meshd.security.trust import Trust


def test_an_invite_code_round_trips_and_fits_in_a_chat_message() -> None:
    code = InviteCode(("192.168.1.20:7071", "[fe80::1]:7071"), os.urandom(32), os.urandom(16))
    text = code.encode()
    assert text.startswith("MESHD-") and len(text) < 140
    named = InviteCode(("mini.tail1234.ts.net:7071",), os.urandom(32), os.urandom(16))
    assert decode_invite(named.encode()) == named
    assert decode_invite(text) == code
    assert decode_invite("  " + text.lower()[:40] + "\n" + text.lower()[40:]) == code


@pytest.mark.parametrize("text", ["", "MESHD-", "hello", "MESHD-AAAA", "MESHD-" + "A" * 90])
def test_a_damaged_code_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidRequest, match="invite code"):
        decode_invite(text)


@pytest.mark.parametrize("host", ["10.0.0.5:7070", "bad_host", "-x", "", "a" * 64])
def test_an_invite_names_a_host_without_a_port(host: str) -> None:
    with pytest.raises(InvalidRequest, match="not a host for an invite"):
        check_host(host)


def test_a_secret_works_once_and_expires() -> None:
    book = InviteBook()
    secret = book.create(ttl=60)
    assert book.redeem(secret) == "peer"
    with pytest.raises(InvalidRequest):
        book.redeem(secret)
    short = book.create(ttl=0.05)
    time.sleep(0.1)
    with pytest.raises(InvalidRequest):
        book.redeem(short)
    assert book.next_expiry() is None


def test_wrong_secrets_are_limited_to_five_a_minute() -> None:
    book = InviteBook()
    good = book.create()
    for _ in range(5):
        with pytest.raises(InvalidRequest):
            book.redeem(os.urandom(16))
    with pytest.raises(Overloaded):
        book.redeem(good)
    book.wrong[0] -= 61  # the oldest wrong guess leaves the window
    assert book.redeem(good) == "peer"


def test_the_revocation_list_is_signed_and_numbered() -> None:
    ca_key, ca = pki.create_ca("friends")
    listed = RevocationList().with_revoked(ca_key, [Revoked(7, "peer-x")])
    again = listed.with_revoked(ca_key, [Revoked(7, "peer-x"), Revoked(9, "app")])
    assert (listed.number, again.number) == (1, 2)
    assert [r.serial for r in again.revoked] == [7, 9]
    parsed = parse_revocations(again.to_bytes(), ca)
    assert parsed == again and parsed.refuses(9) and parsed.refuses(1, "peer-x")
    assert not parsed.refuses(8, "peer-y")
    tampered = again.to_bytes().replace(b"[9, ", b"[8, ")
    with pytest.raises(InvalidRequest, match="not signed"):
        parse_revocations(tampered, ca)
    _, other_ca = pki.create_ca("elsewhere")
    with pytest.raises(InvalidRequest, match="not signed"):
        parse_revocations(again.to_bytes(), other_ca)
    assert parse_revocations(b"", ca) == RevocationList()


@pytest.mark.parametrize(
    ("kind", "method", "expected"),
    [
        ("local", "/meshd.v1.Admin/Revoke", True),
        ("peer", "/meshd.v1.Admin/Revoke", False),
        ("client", "/meshd.v1.Admin/CreateInvite", False),
        ("peer", "/meshd.v1.Mesh/FetchModel", True),
        ("peer", "/meshd.v1.Mesh/Heartbeat", True),
        ("client", "/meshd.v1.Mesh/FetchModel", False),
        ("client", "/meshd.v1.Mesh/Heartbeat", False),
        ("client", "/meshd.v1.Mesh/Generate", True),
        ("client", "/meshd.v1.Mesh/Warm", True),
        ("client", "/meshd.v1.Mesh/ListModels", True),
        ("client", "/grpc.health.v1.Health/Check", True),
        ("dev", "/meshd.v1.Mesh/Generate", True),
        ("dev", "/meshd.v1.Admin/Revoke", False),
        ("stranger", "/meshd.v1.Mesh/Generate", False),
    ],
)
def test_the_permission_table(kind: str, method: str, expected: bool) -> None:
    assert allowed(Caller(kind), method) is expected


def test_identity_files_peer_id_and_mesh_id(tmp_path: Path) -> None:
    home = tmp_path
    ring = Keyring(home)
    peer_id = ring.peer_id()
    assert peer_id == Keyring(home).peer_id() == pki.peer_id_of(ring.peer_key().public_key())
    assert ring.credentials() is None and not ring.is_founder()
    ca = ring.init_mesh("friends")
    assert ring.is_founder() and pki.mesh_name_of(ca) == "friends"
    cert = ring.certificate()
    assert cert is not None and pki.signed_by(cert, ca)
    assert pki.holder_of(cert).role == "peer" and pki.holder_of(cert).name == peer_id
    assert pki.mesh_id_of(ca).startswith("mesh-") and pki.mesh_id_of(ca) != pki.mesh_id_of(
        pki.create_ca("friends")[1]
    )
    assert oct((home / "tls").stat().st_mode & 0o777) == "0o700"
    with pytest.raises(ConfigError, match="already belongs to a mesh"):
        ring.init_mesh("again")
    with pytest.raises(ConfigError, match="cannot revoke itself"):
        ring.revoke(peer_id)
    ring.forget()
    assert not (home / "tls").exists() and Keyring(home).peer_id() != peer_id


def test_a_csr_for_another_curve_or_garbage_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidRequest, match="P-256"):
        pki.requested_key(pki.make_request(other, "x"))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="not DER"):
        pki.requested_key(b"garbage")
    key = pki.new_key()
    assert pki.requested_key(pki.make_request(key, "x")) == key.public_key()


def test_a_revocation_made_offline_is_what_the_daemon_starts_with(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    ring.init_mesh("friends")
    ring.client_bundle("app", ["127.0.0.1:7070"])
    listed, revoked = ring.revoke("app")
    assert listed.number == 1 and [r.name for r in revoked] == ["app"]
    trust = Trust(Keyring(tmp_path))  # what a daemon starting from this home loads
    assert trust.revocations == listed and trust.revocations.refuses(revoked[0].serial)
    with pytest.raises(ConfigError, match="no certificate was issued"):
        ring.revoke("nobody")


def test_the_revocation_list_bytes_and_refusals_exactly() -> None:
    ca_key, ca = pki.create_ca("friends")
    assert RevocationList().to_bytes() == b"", "nothing revoked: nothing to send"
    listed = RevocationList().with_revoked(ca_key, [Revoked(9, "b"), Revoked(7, "a")])
    assert listed.payload() == b'{"number": 1, "revoked": [[7, "a"], [9, "b"]]}'
    assert listed.refuses(7) and listed.refuses(1, "b") and not listed.refuses(1)
    assert not listed.refuses(1, "c")
    wire = json.loads(listed.to_bytes())
    wire["signature"] = wire["signature"][:10] + "!!" + wire["signature"][10:]
    with pytest.raises(InvalidRequest, match=r"^not a revocation list: "):
        parse_revocations(json.dumps(wire).encode(), ca)
    other_key, _ = pki.create_ca("other")
    forged = RevocationList().with_revoked(other_key, [Revoked(7, "a")])
    with pytest.raises(InvalidRequest) as caught:
        parse_revocations(forged.to_bytes(), ca)
    assert str(caught.value) == "the revocation list is not signed by the mesh CA"
