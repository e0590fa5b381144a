"""The mesh CA outlives any one machine: its key and certificate, encrypted with a passphrase
(scrypt, then AES-256-GCM), so that `meshd ca restore` can make another peer a CA holder."""

from __future__ import annotations

import base64
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from meshd.errors import AccessDenied, ConfigError

KIND = "meshd-ca-backup"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # ~32 MiB and ~0.1 s per try: slow to guess
MIN_PASSPHRASE = 8
MAX_BACKUP_BYTES = 8 * 2**20  # a CA key, its certificate and the record of what it issued
MAX_PASSPHRASE_BYTES = 4096


def _key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def seal(ca_key_pem: bytes, ca_cert_pem: bytes, passphrase: str, issued: bytes = b"[]") -> bytes:
    """A backup file's bytes: the CA key and certificate (and the record of what it issued),
    encrypted with the passphrase."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise ConfigError(f"the passphrase needs at least {MIN_PASSPHRASE} characters")
    salt, nonce = os.urandom(16), os.urandom(12)
    key = _key(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    plain = json.dumps(
        {"key": ca_key_pem.decode(), "certificate": ca_cert_pem.decode(), "issued": issued.decode()}
    )
    sealed = AESGCM(key).encrypt(nonce, plain.encode(), KIND.encode())
    record = {
        "kind": KIND,
        "kdf": {
            "name": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode(),
        },
        "nonce": base64.b64encode(nonce).decode(),
        "sealed": base64.b64encode(sealed).decode(),
    }
    return json.dumps(record, indent=1).encode()


def unseal(data: bytes, passphrase: str) -> tuple[bytes, bytes, bytes]:
    """The CA key and certificate (PEM) and the issued record from a backup; AccessDenied for
    a wrong passphrase, ConfigError for a file that is not a backup."""
    try:
        record = json.loads(data)
        if record.get("kind") != KIND or record["kdf"]["name"] != "scrypt":
            raise ValueError("not a meshd CA backup")
        kdf = record["kdf"]
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        if (n, r, p) != (SCRYPT_N, SCRYPT_R, SCRYPT_P):  # a file does not choose its own cost
            raise ValueError(f"its key derivation settings are not meshd's (n={n}, r={r})")
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(record["nonce"])
        sealed = base64.b64decode(record["sealed"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"not a meshd CA backup: {exc}") from None
    try:
        plain = AESGCM(_key(passphrase, salt, n, r, p)).decrypt(nonce, sealed, KIND.encode())
    except (InvalidTag, ValueError):
        raise AccessDenied("wrong passphrase, or the backup was changed") from None
    inner = json.loads(plain)
    return inner["key"].encode(), inner["certificate"].encode(), inner["issued"].encode()
