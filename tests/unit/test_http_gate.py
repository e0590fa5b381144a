"""meshd/http/gate.py and meshd/security/apikeys.py: who gets in over HTTP."""

from __future__ import annotations

import pytest

from meshd.http.gate import DEFAULT_ORIGINS, Gate, host_of_header, origin_allowed
from meshd.http.openai import HttpError
from meshd.security import pki
from meshd.security.apikeys import KeyCheck, issue_key
from meshd.security.revocation import RevocationList, Revoked


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("http://localhost", True),
        ("http://127.0.0.1:5173", True),
        ("http://[::1]:8080", True),
        ("tauri://localhost", True),
        ("app://x", True),
        ("null", False),  # any site's sandboxed iframe or no-referrer form
        ("file://", False),
        ("http://localhost.evil.example", False),
        ("http://localhost:3000.evil.example", False),
        ("https://evil.example", False),
        ("http://127.0.0.2:80", False),
    ],
)
def test_the_default_origins(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin, DEFAULT_ORIGINS) is allowed


def test_host_headers() -> None:
    assert host_of_header("localhost:7071") == "localhost"
    assert host_of_header("[::1]:7071") == "::1"
    assert host_of_header("127.0.0.1") == "127.0.0.1"
    gate = Gate(keys_required=False, keys=None, hosts=["meshd.home"])
    for host in ("localhost:7071", "127.0.0.1:7071", "[::1]:7071", "MESHD.home:80"):
        gate.check_host(host)
    with pytest.raises(HttpError) as caught:
        gate.check_host("rebound.evil.example:7071")
    assert caught.value.status == 403


def _keys() -> tuple[KeyCheck, object, list[RevocationList]]:
    ca_key, ca = pki.create_ca("friends")
    revocations = [RevocationList()]
    check = KeyCheck(ca_key.public_key(), pki.mesh_id_of(ca), lambda: revocations[0])
    return check, ca_key, revocations


def test_keys_are_verified_offline_and_revocable() -> None:
    check, ca_key, revocations = _keys()
    key, serial = issue_key(ca_key, check.mesh_id, "webapp")  # type: ignore[arg-type]
    assert check.holder(key).name == "webapp"
    other_key, _ = pki.create_ca("other")
    foreign, _ = issue_key(other_key, check.mesh_id, "webapp")
    for bad in (foreign, key[:-2], key + "x", "meshd_", "meshd_.", "x" * 600, "Bearer"):
        with pytest.raises(Exception, match="invalid API key"):
            check.holder(bad)
    elsewhere, _ = issue_key(ca_key, "mesh-other", "webapp")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="invalid API key"):
        check.holder(elsewhere)
    revocations[0] = RevocationList().with_revoked(ca_key, [Revoked(serial, "webapp")])  # type: ignore[arg-type]
    with pytest.raises(Exception, match="revoked"):
        check.holder(key)


def test_bad_keys_are_limited_per_source() -> None:
    check, ca_key, _ = _keys()
    key, _ = issue_key(ca_key, check.mesh_id, "webapp")  # type: ignore[arg-type]
    gate = Gate(keys_required=True, keys=check)
    assert gate.authenticate("/v1/models", f"Bearer {key}", "10.0.0.2") is not None
    assert gate.authenticate("/meshd-warm.js", None, "10.0.0.2") is None
    for _ in range(10):
        with pytest.raises(HttpError) as caught:
            gate.authenticate("/v1/models", "Bearer nope", "10.0.0.2")
        assert caught.value.status == 401
    with pytest.raises(HttpError) as caught:
        gate.authenticate("/v1/models", f"Bearer {key}", "10.0.0.2")
    assert caught.value.status == 429
    assert gate.authenticate("/v1/models", f"Bearer {key}", "10.0.0.3") is not None


def test_keyless_requests_never_lock_out_a_good_key() -> None:
    """The public page's own calls carry no key: however many, they are no guesses."""
    check, ca_key, _ = _keys()
    key, _ = issue_key(ca_key, check.mesh_id, "webapp")  # type: ignore[arg-type]
    gate = Gate(keys_required=True, keys=check)
    for missing in [None, "", "Bearer", "Bearer  ", "Basic abc"] * 10:
        with pytest.raises(HttpError) as caught:
            gate.authenticate("/v1/models", missing, "10.0.0.2")
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    assert gate.authenticate("/v1/models", f"Bearer {key}", "10.0.0.2") is not None
