"""Certificate renewal: well before this peer's mesh certificate ends, a CA holder issues a new
one for the same key, name and role (asked over mutual TLS with the current certificate).

A CA holder renews its own certificate itself. The outcome of the last attempt is kept in
`tls/renewal.json` so that `meshd doctor` can warn when renewal keeps failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cryptography import x509

from meshd.errors import MeshdError, PeerUnavailable
from meshd.links import PeerLink
from meshd.peers import PeerTable
from meshd.security import pki
from meshd.security.keyring import Keyring
from meshd.security.trust import Trust
from meshd.tasks import Periodic

log = logging.getLogger("meshd.renewal")
RENEWAL_FILE = "renewal.json"
FIRST_CHECK_S = 3.0  # after start: heartbeats have found the CA holders by then
CHECK_EVERY_S = 3600.0
RETRY_EVERY_S = 60.0
FAILING_AFTER = 3  # attempts in a row before doctor warns


def renewal_due(cert: x509.Certificate, peer_id: str, now: float, renew_before: float) -> bool:
    """Renew once the certificate ends within renew_before (at most a third of its life), or
    when it does not yet name this peer's id (issued by an earlier meshd)."""
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    window = min(renew_before, (end - start) / 3)
    return now >= end - window or not pki.names_peer(cert, peer_id)


@dataclass(frozen=True)
class RenewalRecord:
    """The last renewal attempts: when it last worked, how many failed since, the last error."""

    renewed_at: float = 0.0
    failures: int = 0
    failing_since: float = 0.0
    last_error: str = ""

    @property
    def failing(self) -> bool:
        """Renewal was due and failed FAILING_AFTER times in a row."""
        return self.failures >= FAILING_AFTER


def read_record(keyring: Keyring) -> RenewalRecord:
    """The saved record (an empty one when none, or when it is damaged)."""
    raw = keyring.read_private(RENEWAL_FILE)
    if raw is None:
        return RenewalRecord()
    try:
        data = json.loads(raw)
        return RenewalRecord(
            float(data["renewed_at"]),
            int(data["failures"]),
            float(data["failing_since"]),
            str(data["last_error"])[:300],
        )
    except (ValueError, TypeError, KeyError):
        return RenewalRecord()


class Renewer:
    """Checks this peer's certificate now and then, and renews it when due."""

    def __init__(
        self,
        keyring: Keyring,
        trust: Trust,
        table: PeerTable,
        link: PeerLink,
        renew_before: float,
        on_renewed: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring, self.trust, self.table, self.link = keyring, trust, table, link
        self.renew_before, self.on_renewed, self.clock = renew_before, on_renewed, clock
        self.peer_id = keyring.peer_id()
        self._loop = Periodic("meshd-renewal", self._step, CHECK_EVERY_S, log, FIRST_CHECK_S)

    def start(self) -> None:
        """Check in the background (only inside a mesh)."""
        if self.keyring.certificate() is not None:
            self._loop.start()

    async def _step(self) -> float:
        renewed = await self.check()
        return CHECK_EVERY_S if renewed is not False else RETRY_EVERY_S

    async def check(self) -> bool | None:
        """Renew if due: True when renewed, False when that failed, None when not due."""
        cert = self.keyring.certificate()
        if cert is None or not renewal_due(cert, self.peer_id, self.clock(), self.renew_before):
            return None
        record = read_record(self.keyring)
        try:
            pem = await self._renew(cert)
            self.keyring.save_renewed_certificate(pem)
        except MeshdError as error:
            since = record.failing_since or self.clock()
            failed = RenewalRecord(record.renewed_at, record.failures + 1, since, str(error))
            self._save(failed)
            log.warning("certificate renewal failed (%d in a row): %s", failed.failures, error)
            return False
        self._save(RenewalRecord(renewed_at=self.clock()))
        fresh = pki.load_cert(pem)
        log.info("certificate renewed: valid until %s", fresh.not_valid_after_utc.date())
        self.on_renewed()
        return True

    async def _renew(self, cert: x509.Certificate) -> bytes:
        presented = pki.cert_pem(cert)
        if self.keyring.is_founder():  # a CA holder signs its own
            return await asyncio.to_thread(self.trust.renew, presented)
        holders = [
            e for e in self.table.live(time.monotonic()) if e.info is not None and e.info.ca_holder
        ]
        if not holders:
            raise PeerUnavailable("no CA holder is reachable to renew this peer's certificate")
        failure: MeshdError | None = None
        for entry in holders:
            assert entry.info is not None
            try:
                return await self.link.renew_certificate(entry.address, entry.info.peer_id)
            except MeshdError as error:
                failure = error
        assert failure is not None
        raise failure

    def _save(self, record: RenewalRecord) -> None:
        self.keyring.save_private(RENEWAL_FILE, json.dumps(asdict(record)).encode())

    async def close(self) -> None:
        """Stop checking."""
        await self._loop.close()
