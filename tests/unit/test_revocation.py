"""meshd/security/revocation.py: the numbered, CA-signed list of refused certificates."""

from __future__ import annotations

import json

import pytest

from meshd.errors import InvalidRequest
from meshd.security import pki
from meshd.security.revocation import RevocationList, Revoked, parse_revocations


def test_the_revocation_list_is_signed_and_numbered() -> None:
    ca_key, ca = pki.create_ca("friends")
    listed = RevocationList().with_revoked(ca_key, [Revoked(7, "peer-x")])
    again = listed.with_revoked(ca_key, [Revoked(7, "peer-x"), Revoked(9, "app")])
    assert (listed.number, again.number) == (1, 2)
    assert [r.serial for r in again.revoked] == [7, 9]
    parsed = parse_revocations(again.to_bytes(), ca)
    assert parsed == again and parsed.refuses(9) and parsed.refuses(1, "peer-x")
    assert not parsed.refuses(8, "peer-y")
    tampered = again.to_bytes().replace(b"[9, ", b"[8, ")
    with pytest.raises(InvalidRequest, match="not signed"):
        parse_revocations(tampered, ca)
    _, other_ca = pki.create_ca("elsewhere")
    with pytest.raises(InvalidRequest, match="not signed"):
        parse_revocations(again.to_bytes(), other_ca)
    assert parse_revocations(b"", ca) == RevocationList()


def test_the_revocation_list_bytes_and_refusals_exactly() -> None:
    ca_key, ca = pki.create_ca("friends")
    assert RevocationList().to_bytes() == b"", "nothing revoked: nothing to send"
    listed = RevocationList().with_revoked(ca_key, [Revoked(9, "b"), Revoked(7, "a")])
    assert listed.payload() == b'{"number": 1, "revoked": [[7, "a"], [9, "b"]]}'
    assert listed.refuses(7) and listed.refuses(1, "b") and not listed.refuses(1)
    assert not listed.refuses(1, "c")
    wire = json.loads(listed.to_bytes())
    wire["signature"] = wire["signature"][:10] + "!!" + wire["signature"][10:]
    with pytest.raises(InvalidRequest, match=r"^not a revocation list: "):
        parse_revocations(json.dumps(wire).encode(), ca)
    other_key, _ = pki.create_ca("other")
    forged = RevocationList().with_revoked(other_key, [Revoked(7, "a")])
    with pytest.raises(InvalidRequest) as caught:
        parse_revocations(forged.to_bytes(), ca)
    assert str(caught.value) == "the revocation list is not signed by the mesh CA"
