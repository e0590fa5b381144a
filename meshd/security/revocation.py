"""The mesh's revocation list: which certificates are refused, signed by the CA, newest wins.

Every peer keeps the newest list it has seen and passes it on with each heartbeat, so a
revocation made on the founder reaches every live peer within a couple of heartbeats. A list
whose signature does not verify against the mesh CA is dropped.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.errors import InvalidRequest


@dataclass(frozen=True)
class Revoked:
    """One refused certificate: its serial, and the peer id or app name it was issued to."""

    serial: int
    name: str


@dataclass(frozen=True)
class RevocationList:
    """A numbered, CA-signed list of revoked certificates."""

    number: int = 0
    revoked: tuple[Revoked, ...] = ()
    signature: bytes = b""

    def payload(self) -> bytes:
        """The bytes the CA signs: the number and the entries sorted by serial, as JSON (the
        literal fixes the key order, so the bytes are the same on every peer)."""
        entries = [[r.serial, r.name] for r in sorted(self.revoked, key=lambda r: r.serial)]
        return json.dumps({"number": self.number, "revoked": entries}).encode()

    def to_bytes(self) -> bytes:
        """The list as sent in heartbeats and kept on disk (empty when nothing is revoked)."""
        if not self.signature:
            return b""
        signature = base64.b64encode(self.signature).decode()
        return json.dumps({"payload": self.payload().decode(), "signature": signature}).encode()

    def refuses(self, serial: int, name: str | None = None) -> bool:
        """True when the certificate with this serial (or anything issued to name) is revoked."""
        return any(r.serial == serial or r.name == name for r in self.revoked)

    def with_revoked(
        self, ca_key: ec.EllipticCurvePrivateKey, add: list[Revoked]
    ) -> RevocationList:
        """The next list: these entries added (a name already revoked is not listed again; a
        serial of 0 stands for every certificate of its name), numbered one higher, signed."""
        names = {r.name for r in self.revoked if r.serial == 0}
        known = {r.serial for r in self.revoked if r.serial}
        fresh = [r for r in add if r.name not in names and (r.serial == 0 or r.serial not in known)]
        revoked = (*self.revoked, *fresh)
        unsigned = RevocationList(self.number + 1, revoked)
        return RevocationList(unsigned.number, revoked, ca_key.sign(unsigned.payload(), _ECDSA))


_ECDSA = ec.ECDSA(hashes.SHA256())


def parse_revocations(data: bytes, ca: x509.Certificate) -> RevocationList:
    """A list from its bytes, after checking the CA signed it; empty bytes are the empty list."""
    if not data:
        return RevocationList()
    try:
        outer = json.loads(data)
        payload = outer["payload"].encode()
        signature = base64.b64decode(outer["signature"], validate=True)
        public_key = ca.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(signature, payload, _ECDSA)
        inner = json.loads(payload)
        revoked = tuple(Revoked(int(serial), str(name)) for serial, name in inner["revoked"])
        return RevocationList(int(inner["number"]), revoked, signature)
    except InvalidSignature:
        raise InvalidRequest("the revocation list is not signed by the mesh CA") from None
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError) as exc:
        raise InvalidRequest(f"not a revocation list: {exc}") from None
