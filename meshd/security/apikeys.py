"""API keys for HTTP apps: tokens the mesh CA signs, so every peer verifies them offline.

A key is `meshd_` + base64url(payload) + "." + base64url(ECDSA P-256 signature by the CA key).
The payload names the mesh, the app and a random serial; the signed revocation list refuses a
key by serial or name like a certificate (`meshd revoke APP`). The founder keeps only a hash
of each key it issued, to list and revoke them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.errors import AccessDenied
from meshd.security.revocation import RevocationList

PREFIX = "meshd_"
MAX_KEY_CHARS = 512


@dataclass(frozen=True)
class KeyHolder:
    """Who an API key was issued to."""

    name: str
    serial: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_key(ca_key: ec.EllipticCurvePrivateKey, mesh_id: str, name: str) -> tuple[str, int]:
    """A new key for app `name`, and its serial."""
    serial = secrets.randbits(63)
    payload = _b64(json.dumps({"m": mesh_id, "n": name, "s": serial}).encode())
    signature = ca_key.sign(payload.encode(), ec.ECDSA(hashes.SHA256()))
    return f"{PREFIX}{payload}.{_b64(signature)}", serial


def key_hash(key: str) -> str:
    """What the founder keeps of a key: its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCheck:
    """Verifies API keys against the mesh CA's public key and the revocation list."""

    def __init__(
        self,
        ca_public_key: ec.EllipticCurvePublicKey,
        mesh_id: str,
        revocations: Callable[[], RevocationList],
    ) -> None:
        self.public_key, self.mesh_id, self.revocations = ca_public_key, mesh_id, revocations
        self._verified = functools.lru_cache(maxsize=256)(self._verify_signature)

    def holder(self, key: str) -> KeyHolder:
        """The app a key names; AccessDenied for a malformed, forged, foreign or revoked key."""
        holder = self._verified(key)
        if holder is None:
            raise AccessDenied("invalid API key")
        if self.revocations().refuses(holder.serial, holder.name):
            raise AccessDenied(f"the API key of {holder.name} is revoked")
        return holder

    def _verify_signature(self, key: str) -> KeyHolder | None:
        if len(key) > MAX_KEY_CHARS or not key.startswith(PREFIX):
            return None
        payload, _, signature = key.removeprefix(PREFIX).partition(".")
        try:
            self.public_key.verify(_unb64(signature), payload.encode(), ec.ECDSA(hashes.SHA256()))
            fields = json.loads(_unb64(payload))
            holder = KeyHolder(str(fields["n"]), int(fields["s"]))
            mesh = fields["m"]
        except (InvalidSignature, binascii.Error, ValueError, KeyError, TypeError):
            return None
        return holder if mesh == self.mesh_id else None
