"""meshd/security/cabackup.py: the CA sealed with a passphrase, and nothing else opens it."""

from __future__ import annotations

import json

import pytest

from meshd.errors import AccessDenied, ConfigError
from meshd.security import pki
from meshd.security.cabackup import seal, unseal


def test_a_backup_opens_with_its_passphrase_only() -> None:
    key, ca = pki.create_ca("friends")
    key_pem, cert_pem = pki.key_pem(key), pki.cert_pem(ca)
    sealed = seal(key_pem, cert_pem, "correct horse battery")
    assert key_pem not in sealed and b"PRIVATE" not in sealed
    assert unseal(sealed, "correct horse battery") == (key_pem, cert_pem, b"[]")
    with pytest.raises(AccessDenied, match="wrong passphrase"):
        unseal(sealed, "correct horse batterY")
    changed = json.loads(sealed)
    changed["sealed"] = changed["sealed"][:-8] + "AAAAAAA="
    with pytest.raises(AccessDenied):
        unseal(json.dumps(changed).encode(), "correct horse battery")


def test_bad_files_and_short_passphrases_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 8"):
        seal(b"k", b"c", "short")
    for data in (b"", b"{}", b'{"kind": "meshd-ca-backup"}', b"[1]"):
        with pytest.raises(ConfigError, match="not a meshd CA backup"):
            unseal(data, "whatever passphrase")
    huge = json.dumps(
        {
            "kind": "meshd-ca-backup",
            "kdf": {"name": "scrypt", "n": 2**30, "r": 8, "p": 1, "salt": ""},
            "nonce": "",
            "sealed": "",
        }
    ).encode()
    with pytest.raises(ConfigError, match="out of range"):
        unseal(huge, "whatever passphrase")
