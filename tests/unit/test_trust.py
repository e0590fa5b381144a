"""meshd/security/trust.py: a peer view of the mesh: the revocations it adopted."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.errors import ConfigError
from meshd.security.keyring import Keyring
from meshd.security.trust import Trust


def test_a_revocation_made_offline_is_what_the_daemon_starts_with(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    ring.init_mesh("friends")
    ring.client_bundle("app", ["127.0.0.1:7070"])
    listed, revoked = ring.revoke("app")
    assert listed.number == 1 and [r.name for r in revoked] == ["app"]
    trust = Trust(Keyring(tmp_path))  # what a daemon starting from this home loads
    assert trust.revocations == listed and trust.revocations.refuses(revoked[0].serial, "app")
    with pytest.raises(ConfigError, match="no certificate was issued"):
        ring.revoke("nobody")
