"""meshd/security/keyring.py and pki.py: identity files, peer ids, mesh ids, CSRs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.errors import ConfigError, InvalidRequest
from meshd.security import pki
from meshd.security.keyring import Keyring


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
