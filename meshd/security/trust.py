"""This peer's view of who belongs to the mesh: the CA, the newest revocation list, open invites."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from meshd.errors import AccessDenied, InvalidRequest
from meshd.logthrottle import Throttle
from meshd.security import pki
from meshd.security.invite import InviteBook
from meshd.security.keyring import Keyring
from meshd.security.revocation import RevocationList, Revoked, parse_revocations

log = logging.getLogger("meshd.trust")
INVITES_FILE = "invites.json"
# A certificate is renewed once it ends within a third of a certificate's life (the longest
# renew_before a peer may set), or at once when it does not name its peer id yet, and at most
# once a day per holder: renewals cannot be turned into a flood of certificates.
RENEW_WINDOW_S = pki.CERT_DAYS * 86400.0 / 3
RENEW_MIN_INTERVAL_S = 86400.0


class Trust:
    """Revocations (adopted when newer and CA-signed) and, on the founder, invites."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.ca = keyring.ca()
        self.revocations = keyring.revocations() if self.ca else RevocationList()
        self.revocations_wire = self.revocations.to_bytes()  # sent with every heartbeat
        self.invites = InviteBook()
        self.invite_port = 0  # where the join listener was, for codes that survive a restart
        self.on_revoked: Callable[[RevocationList], None] | None = None
        self._throttle = Throttle()
        if keyring.is_founder():
            self._load_invites()

    def adopt(self, data: bytes, number: int | None = None) -> bool:
        """Take a revocation list heard from a peer if the CA signed it and it is newer. A
        sender that says its list's number is no newer than ours (or sends ours again) costs
        nothing: the list is parsed and its signature verified only when it may be news."""
        if not data or self.ca is None:
            return False
        if (number is not None and number <= self.revocations.number) or (
            data == self.revocations_wire
        ):
            return False
        try:
            heard = parse_revocations(data, self.ca)
        except InvalidRequest as exc:
            self._throttle.log(
                log, logging.WARNING, "bad-list", "dropped a revocation list: %s", exc
            )
            return False
        if heard.number <= self.revocations.number:
            return False
        self._install(heard)
        return True

    def revoke(self, name: str) -> list[Revoked]:
        """Founder: revoke everything issued to name, and start spreading the new list."""
        revocations, revoked = self.keyring.revoke(name)
        self._install(revocations, saved=True)
        return revoked

    def _install(self, revocations: RevocationList, saved: bool = False) -> None:
        if not saved:
            self.keyring.save_revocations(revocations)
        self.revocations, self.revocations_wire = revocations, revocations.to_bytes()
        log.info("revocation list %d: %d revoked", revocations.number, len(revocations.revoked))
        if self.on_revoked is not None:
            self.on_revoked(revocations)

    def refuses_peer(self, peer_id: str) -> bool:
        """True when every certificate of this peer id is revoked."""
        return any(r.name == peer_id for r in self.revocations.revoked)

    def create_invite(self, ttl: float) -> bytes:
        """Founder: a new one-time secret, kept (as a hash) across daemon restarts."""
        secret = self.invites.create(ttl)
        self.save_invites()
        return secret

    def save_invites(self) -> None:
        """Keep the open invites (hashes, roles, ends) and the listener's port, 0600."""
        record = {"port": self.invite_port, "invites": self.invites.to_records(time.time())}
        self.keyring.save_private(INVITES_FILE, json.dumps(record).encode())

    def _load_invites(self) -> None:
        raw = self.keyring.read_private(INVITES_FILE)
        if raw is None:
            return
        try:
            record = json.loads(raw)
            port = int(record.get("port", 0))
            taken = self.invites.take_records(record.get("invites"), time.time())
        except (ValueError, TypeError, AttributeError):
            log.warning("ignored %s: it is damaged", INVITES_FILE)
            return
        self.invite_port = port if 0 < port < 65536 else 0
        if taken:
            log.info("%d invite(s) still open from before the restart", taken)

    def sign_joiner(self, secret: bytes, csr_der: bytes) -> bytes:
        """Founder: redeem an invite secret, and sign the joining peer's certificate (PEM).
        The secret is used up only when a certificate was issued: a malformed request with
        the right secret leaves the invite open."""
        with self.invites.redeeming(secret) as role:
            ca_key = self.keyring.ca_key()
            assert self.ca is not None
            public_key = pki.requested_key(csr_der)
            name = pki.peer_id_of(public_key)  # the id is the key's hash, whatever the CSR says
            cert = pki.issue(
                ca_key, self.ca, public_key, "peer" if role == "peer" else "client", name
            )
            self.keyring.record_issued(cert)
        self.save_invites()
        log.info("signed a certificate for %s (%s) after an invite", name, role)
        return pki.cert_pem(cert)

    def renew(self, cert_pem: bytes, now: float | None = None) -> bytes:
        """CA holder: a new certificate (PEM) for the key, role and name of a current,
        unrevoked mesh certificate (the one its holder just presented over mutual TLS), once
        it is due: within RENEW_WINDOW_S of its end, or at once when it does not name its
        peer id; never twice within a day for the same holder."""
        ca_key = self.keyring.ca_key()
        assert self.ca is not None
        now = time.time() if now is None else now
        cert = pki.load_cert(cert_pem)
        holder = pki.holder_of(cert)
        if not pki.signed_by(cert, self.ca):
            raise AccessDenied("that certificate was not issued by this mesh's CA")
        if self.revocations.refuses(holder.serial, holder.name) or holder.not_after < now:
            raise AccessDenied(f"{holder.name}'s certificate is revoked or has ended")
        names_itself = holder.role != "peer" or pki.names_peer(cert, holder.name)
        if names_itself and holder.not_after - now > RENEW_WINDOW_S:
            days, window = (holder.not_after - now) / 86400, RENEW_WINDOW_S / 86400
            raise AccessDenied(
                f"{holder.name}'s certificate is not due for renewal: it ends in {days:.0f} "
                f"days, and is renewed in its last {window:.0f}"
            )
        last = self.keyring.last_renewed_at(holder.name)
        if last is not None and now - last < RENEW_MIN_INTERVAL_S:
            raise AccessDenied(f"{holder.name}'s certificate was renewed less than a day ago")
        fresh = pki.renewed(ca_key, self.ca, cert)
        self.keyring.record_issued(fresh, renewal=True)
        log.info("renewed the certificate of %s (%s)", holder.name, holder.role)
        return pki.cert_pem(fresh)
