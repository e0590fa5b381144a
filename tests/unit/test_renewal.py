"""Certificate renewal: when it is due (fake clock), what a CA holder issues, what a peer keeps."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.errors import AccessDenied, InvalidRequest, PeerUnavailable
from meshd.peers import PeerTable
from meshd.renewal import FAILING_AFTER, Renewer, read_record, renewal_due
from meshd.security import pki
from meshd.security.keyring import Keyring
from meshd.security.trust import Trust

DAY = 86400.0


def _founder(tmp_path: Path) -> Keyring:
    ring = Keyring(tmp_path / "ca")
    ring.init_mesh("friends")
    return ring


def _member(tmp_path: Path, founder: Keyring, days: float = 365, name: str = "b") -> Keyring:
    """A peer whose certificate the founder issued for `days` (started a day ago)."""
    ring = Keyring(tmp_path / name)
    ca = founder.ca()
    assert ca is not None
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    cert = pki.issue(
        founder.ca_key(), ca, ring.peer_key().public_key(), "peer", ring.peer_id(),
        days=days, not_before=start,
    )  # fmt: skip
    founder.record_issued(cert)
    ring.save_membership(pki.cert_pem(ca), pki.cert_pem(cert), [])
    return ring


def test_renewal_is_due_in_the_last_30_days_or_third_of_the_life(tmp_path: Path) -> None:
    founder = _founder(tmp_path)
    ring = _member(tmp_path, founder, days=365)
    cert = ring.certificate()
    assert cert is not None
    end = cert.not_valid_after_utc.timestamp()
    assert not renewal_due(cert, ring.peer_id(), time.time(), 30 * DAY)
    assert not renewal_due(cert, ring.peer_id(), end - 31 * DAY, 30 * DAY)
    assert renewal_due(cert, ring.peer_id(), end - 29 * DAY, 30 * DAY)
    short = _member(tmp_path, founder, days=9, name="c").certificate()  # a 9-day certificate
    assert short is not None
    short_end = short.not_valid_after_utc.timestamp()
    assert not renewal_due(
        short, Keyring(tmp_path / "c").peer_id(), short_end - 3.5 * DAY, 30 * DAY
    )
    assert renewal_due(short, Keyring(tmp_path / "c").peer_id(), short_end - 2.5 * DAY, 30 * DAY)


def test_a_certificate_that_does_not_name_its_peer_is_renewed_at_once(tmp_path: Path) -> None:
    founder = _founder(tmp_path)
    ring = _member(tmp_path, founder)
    cert = ring.certificate()
    assert cert is not None and pki.names_peer(cert, ring.peer_id())
    assert not pki.names_peer(cert, Keyring(tmp_path / "x").peer_id())
    assert renewal_due(cert, Keyring(tmp_path / "x").peer_id(), time.time(), 30 * DAY)


def test_a_ca_holder_renews_key_name_and_role_of_a_current_unrevoked_certificate(
    tmp_path: Path,
) -> None:
    founder = _founder(tmp_path)
    trust = Trust(founder)
    ring = _member(tmp_path, founder, days=20)
    old = ring.certificate()
    assert old is not None
    fresh = pki.load_cert(trust.renew(pki.cert_pem(old)))
    assert fresh.public_key() == old.public_key()
    assert pki.holder_of(fresh).name == ring.peer_id() and pki.holder_of(fresh).role == "peer"
    assert fresh.not_valid_after_utc > old.not_valid_after_utc + dt.timedelta(days=300)
    ring.save_renewed_certificate(pki.cert_pem(fresh))
    assert ring.certificate() == fresh
    with pytest.raises(InvalidRequest, match="not a later one"):  # the old one back: refused
        ring.save_renewed_certificate(pki.cert_pem(old))
    stranger = _founder(tmp_path / "other")
    with pytest.raises(AccessDenied, match="not issued by this mesh"):
        trust.renew(pki.cert_pem(_member(tmp_path / "other", stranger).certificate()))  # type: ignore[arg-type]
    trust.revoke(ring.peer_id())
    with pytest.raises(AccessDenied, match="revoked"):
        trust.renew(pki.cert_pem(fresh))


def test_a_peer_keeps_only_a_certificate_for_its_own_key(tmp_path: Path) -> None:
    founder = _founder(tmp_path)
    ring, other = _member(tmp_path, founder), _member(tmp_path, founder, name="c", days=20)
    theirs = Trust(founder).renew(pki.cert_pem(other.certificate()))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="not a later one for this peer"):
        ring.save_renewed_certificate(theirs)
    with pytest.raises(InvalidRequest, match="not PEM"):
        ring.save_renewed_certificate(b"junk")


class _CaLink:
    """A PeerLink whose CA holder is the founder's Trust, or fails."""

    def __init__(
        self,
        trust: Trust,
        presented: bytes,
        fail: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trust, self.presented, self.fail, self.clock = trust, presented, fail, clock
        self.asked: list[str] = []

    async def renew_certificate(self, address: str, peer_id: str) -> bytes:
        self.asked.append(peer_id)
        if self.fail:
            raise PeerUnavailable("down")
        return self.trust.renew(self.presented, now=self.clock())  # the CA holder's clock


def _table_with_ca_holder(ring: Keyring, founder: Keyring) -> PeerTable:
    from meshd.types import PeerInfo

    table = PeerTable(ring.peer_id(), "m", dead_after=60)
    table.add("10.0.0.1:7070")
    info = PeerInfo(founder.peer_id(), "m", "1", "10.0.0.1:7070", ca_holder=True)
    table.record_ok("10.0.0.1:7070", info, 0.001, time.monotonic())
    return table


def test_the_renewer_asks_a_live_ca_holder_with_a_fake_clock_near_expiry(tmp_path: Path) -> None:
    founder = _founder(tmp_path)
    ring = _member(tmp_path, founder, days=365)
    cert = ring.certificate()
    assert cert is not None
    end = cert.not_valid_after_utc.timestamp()
    now = [time.time()]
    link = _CaLink(Trust(founder), pki.cert_pem(cert), clock=lambda: now[0])
    renewed: list[bool] = []
    table = _table_with_ca_holder(ring, founder)
    renewer = Renewer(
        ring, Trust(ring), table, link, 30 * DAY, lambda: renewed.append(True), lambda: now[0]
    )
    assert asyncio.run(renewer.check()) is None and link.asked == []  # not due yet
    now[0] = end - 10 * DAY
    assert asyncio.run(renewer.check()) is True
    assert link.asked == [founder.peer_id()] and renewed == [True]
    fresh = ring.certificate()
    assert fresh is not None and fresh.not_valid_after_utc > cert.not_valid_after_utc
    assert read_record(ring).renewed_at == now[0] and not read_record(ring).failing


def test_renewal_that_keeps_failing_is_recorded_for_doctor(tmp_path: Path) -> None:
    founder = _founder(tmp_path)
    ring = _member(tmp_path, founder, days=20)
    cert = ring.certificate()
    assert cert is not None
    near_end = cert.not_valid_after_utc.timestamp() - DAY  # a fake clock: due
    link = _CaLink(Trust(founder), b"", fail=True)
    table = _table_with_ca_holder(ring, founder)
    renewer = Renewer(ring, Trust(ring), table, link, 30 * DAY, lambda: None, lambda: near_end)
    for attempt in range(1, FAILING_AFTER + 1):
        assert asyncio.run(renewer.check()) is False
        assert read_record(ring).failures == attempt
    record = read_record(ring)
    assert record.failing and "down" in record.last_error
    nobody = PeerTable(ring.peer_id(), "m", 60)
    alone = Renewer(ring, Trust(ring), nobody, link, 30 * DAY, lambda: None, lambda: near_end)
    assert asyncio.run(alone.check()) is False
    assert "no CA holder is reachable" in read_record(ring).last_error


def test_a_renewal_flood_is_refused_and_revocation_stays_one_entry(tmp_path: Path) -> None:
    """A member renewing over and over gets one renewal a day; revoking it lists its name
    once, however many certificates it holds."""
    founder = _founder(tmp_path)
    trust = Trust(founder)
    ring = _member(tmp_path, founder, days=20)
    presented = pki.cert_pem(ring.certificate())  # type: ignore[arg-type]
    now = time.time()
    trust.renew(presented, now=now)
    for later in (now + 1, now + 3600, now + 86_000):
        with pytest.raises(AccessDenied, match="renewed less than a day ago"):
            trust.renew(presented, now=later)
    trust.renew(presented, now=now + 86_401)
    fresh = _member(tmp_path / "n", founder, name="fresh")  # a whole year left
    with pytest.raises(AccessDenied, match="not due for renewal"):
        trust.renew(pki.cert_pem(fresh.certificate()), now=now)  # type: ignore[arg-type]
    for day in (2, 3, 4):
        trust.renew(presented, now=now + day * 86_401)
    issued = [r for r in founder.issued() if r["name"] == ring.peer_id()]
    assert len(issued) == 6  # the join, then five renewals
    trust.revoke(ring.peer_id())
    entries = [r for r in trust.revocations.revoked if r.name == ring.peer_id()]
    assert len(entries) == 1, "one entry for the name, not one per certificate"
    for record in issued:
        assert trust.revocations.refuses(int(record["serial"]), ring.peer_id())


def test_a_list_no_newer_than_ours_is_never_parsed(tmp_path: Path) -> None:
    founder = _founder(tmp_path)
    trust = Trust(founder)
    ring = _member(tmp_path, founder)
    trust.revoke(ring.peer_id())
    member = Trust(ring)
    wire = trust.revocations_wire
    assert member.adopt(wire, number=1) and member.revocations.number == 1
    assert not member.adopt(b"garbage that would not parse", number=1), "not newer: not read"
    assert not member.adopt(wire), "the same bytes again: not read"
    assert not member.adopt(b"garbage", number=2) and member.revocations.number == 1
