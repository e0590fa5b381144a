"""The joining side of an invite: check the inviter's CA against the code, trade a CSR for a
certificate, and keep the result. Nothing is written unless every check passed."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from meshd.errors import AccessDenied, Cancelled, ConfigError, PeerUnavailable
from meshd.rpc import channels
from meshd.rpc.status import error_from_rpc
from meshd.security import pki
from meshd.security.invite import decode_invite
from meshd.security.keyring import Keyring
from meshd.security.revocation import parse_revocations
from meshd.v1 import access_pb2 as apb

JOIN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Joined:
    """The mesh a join got this peer into."""

    mesh_name: str
    mesh_id: str
    peer_id: str
    inviter: str
    addresses: tuple[str, ...]


# The inviter's join listener closes when its last code is used or expires.
LISTENER_GONE = (
    "the inviter listens only while a code is open: ask for a new code if this one was used "
    "or has expired"
)


def verified_ca(address: str, fingerprint: bytes) -> bytes:
    """The CA certificate the inviter presents, if its sha256 matches the code."""
    try:
        pem = channels.fetch_unverified_certificate(address)
    except (OSError, ValueError) as exc:
        raise PeerUnavailable(
            f"cannot reach the inviter at {address} ({exc}); {LISTENER_GONE}"
        ) from None
    if not hmac.compare_digest(pki.fingerprint(pki.load_cert(pem)), fingerprint):
        raise AccessDenied(
            f"{address} presented a certificate that does not match the invite code: "
            "a mistyped code, or someone between you and the inviter"
        )
    return pem


def join_mesh(home: Path, code_text: str) -> Joined:
    """Join the mesh of an invite code, trying each of the inviter's addresses in turn."""
    code = decode_invite(code_text)
    keyring = Keyring(home)
    if keyring.ca() is not None:
        raise ConfigError(f"{home} already belongs to a mesh: run `meshd leave` first")
    failures: list[str] = []
    for address in code.addresses:
        try:
            return _join_at(keyring, address, code.fingerprint, code.secret)
        except PeerUnavailable as exc:
            failures.append(str(exc))
    raise PeerUnavailable("; ".join(failures) or "the invite code holds no address")


def _join_at(keyring: Keyring, address: str, fingerprint: bytes, secret: bytes) -> Joined:
    ca_pem = verified_ca(address, fingerprint)
    ca = pki.load_cert(ca_pem)
    key = keyring.peer_key()
    request = apb.JoinRequest(secret=secret, csr=pki.make_request(key, keyring.peer_id()))
    channel = channels.open_join_channel(address, ca_pem)
    try:
        reply = channels.join_stub(channel).Join(request, timeout=JOIN_TIMEOUT_S)
    except grpc.RpcError as exc:
        error = error_from_rpc(exc, address)
        # It closed between the certificate and the call (or during it: CANCELLED).
        if isinstance(error, PeerUnavailable | Cancelled):
            raise PeerUnavailable(f"{error}; {LISTENER_GONE}") from None
        raise error from None
    finally:
        channel.close()
    cert = pki.load_cert(reply.certificate)
    if not pki.signed_by(cert, ca) or cert.public_key() != key.public_key():
        raise AccessDenied(f"{address} returned a certificate that is not for this peer's key")
    revocations = parse_revocations(reply.revocations, ca)
    keyring.save_revocations(revocations)
    keyring.save_membership(ca_pem, reply.certificate, list(reply.addresses))
    return Joined(
        pki.mesh_name_of(ca),
        pki.mesh_id_of(ca),
        keyring.peer_id(),
        address,
        tuple(reply.addresses),
    )
