"""This peer's view of who belongs to the mesh: the CA, the newest revocation list, open invites."""

from __future__ import annotations

import logging
from collections.abc import Callable

from meshd.errors import InvalidRequest
from meshd.security import pki
from meshd.security.invite import InviteBook
from meshd.security.keyring import Keyring
from meshd.security.revocation import RevocationList, Revoked, parse_revocations

log = logging.getLogger("meshd.trust")


class Trust:
    """Revocations (adopted when newer and CA-signed) and, on the founder, invites."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.ca = keyring.ca()
        self.revocations = keyring.revocations() if self.ca else RevocationList()
        self.revocations_wire = self.revocations.to_bytes()  # sent with every heartbeat
        self.invites = InviteBook()
        self.on_revoked: Callable[[RevocationList], None] | None = None

    def adopt(self, data: bytes) -> bool:
        """Take a revocation list heard from a peer if the CA signed it and it is newer."""
        if not data or self.ca is None:
            return False
        try:
            heard = parse_revocations(data, self.ca)
        except InvalidRequest as exc:
            log.warning("dropped a revocation list: %s", exc)
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
        log.info("signed a certificate for %s (%s) after an invite", name, role)
        return pki.cert_pem(cert)
