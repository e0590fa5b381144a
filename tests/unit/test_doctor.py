"""meshd doctor's checks on real identity files and settings (no daemon, no network)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from meshd import doctor
from meshd.config import load_settings
from meshd.security import pki
from meshd.security.keyring import Keyring


def _by_name(home: Path, **flags: object) -> dict[str, doctor.Check]:
    settings = load_settings(home, {"discovery": False, **flags}, environ={})
    return {check.name: check for check in doctor.run_checks(settings)}


def test_outside_a_mesh_each_failure_says_what_to_do(tmp_path: Path) -> None:
    checks = _by_name(tmp_path)
    assert checks["mesh identity"].outcome == "fail" and "meshd init" in checks["mesh identity"].fix
    assert checks["daemon"].outcome == "fail" and "meshd service install" in checks["daemon"].fix
    assert checks["peers"].outcome == "skip"
    assert doctor.failed(list(checks.values()))


def test_certificate_expiry_and_a_loopback_listener_are_flagged(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    ring.init_mesh("friends")
    checks = _by_name(tmp_path, listen="127.0.0.1:7070")
    assert checks["certificate"].outcome == "ok" and checks["mesh identity"].outcome == "ok"
    assert checks["listening"].outcome == "warn" and "0.0.0.0:7070" in checks["listening"].fix
    ca = ring.ca()
    assert ca is not None
    soon = dt.datetime.now(dt.UTC) - dt.timedelta(days=360)
    renewed = pki.issue(
        ring.ca_key(), ca, ring.peer_key().public_key(), "peer", ring.peer_id(), not_before=soon
    )
    (tmp_path / "tls" / "peer.crt").write_bytes(pki.cert_pem(renewed))
    assert _by_name(tmp_path)["certificate"].outcome == "warn"
    gone = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    expired = pki.issue(
        ring.ca_key(), ca, ring.peer_key().public_key(), "peer", ring.peer_id(), not_before=gone
    )
    (tmp_path / "tls" / "peer.crt").write_bytes(pki.cert_pem(expired))
    check = _by_name(tmp_path)["certificate"]
    assert check.outcome == "fail" and "meshd join" in check.fix
