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
    with pytest.raises(ConfigError, match="not meshd's"):
        unseal(huge, "whatever passphrase")
    # Any other cost than the one seal writes, cheaper or dearer, is not a backup of meshd's.
    key, ca = pki.create_ca("friends")
    good = json.loads(seal(pki.key_pem(key), pki.cert_pem(ca), "correct horse battery"))
    for n, r, p in ((2**14, 8, 1), (2**15, 16, 1), (2**15, 8, 2), (2**20, 32, 16)):
        other = {**good, "kdf": {**good["kdf"], "n": n, "r": r, "p": p}}
        with pytest.raises(ConfigError, match="not meshd's"):
            unseal(json.dumps(other).encode(), "correct horse battery")


def test_backup_and_passphrase_files_must_be_small_regular_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    from meshd.fsutil import read_small_file

    os.mkfifo(tmp_path / "fifo")
    for path, message in (
        (tmp_path / "fifo", "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (tmp_path, "not a regular file"),
        (tmp_path / "missing", "cannot read"),
    ):
        with pytest.raises(ConfigError, match=message):
            read_small_file(path, 4096, "passphrase file")  # type: ignore[arg-type]
    (tmp_path / "big").write_bytes(b"x" * 4097)
    with pytest.raises(ConfigError, match="over 4,096 bytes"):
        read_small_file(tmp_path / "big", 4096, "passphrase file")
    (tmp_path / "ok").write_bytes(b"correct horse battery\n")
    assert read_small_file(tmp_path / "ok", 4096, "passphrase file") == b"correct horse battery\n"
