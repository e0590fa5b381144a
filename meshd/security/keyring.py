"""This peer's identity files in <home>/tls (a 0700 folder), and app credential bundles.

peer.key         this peer's private key (0600); its hash is the peer id
peer.crt         this peer's certificate, signed by the mesh CA (after init or join)
ca.crt           the mesh CA certificate
ca.key           the mesh CA key (0600), on the founder only
issued.json      founder only: every certificate the CA signed, to revoke by name
revocations.json the newest CA-signed revocation list this peer has seen
mesh.json        how to reach the mesh: addresses learned when joining
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.errors import ConfigError, InvalidRequest, quoted
from meshd.fsutil import atomic_write_bytes, private_dir
from meshd.security import apikeys, cabackup, pki
from meshd.security.credentials import TlsCredentials
from meshd.security.revocation import RevocationList, Revoked, parse_revocations

TLS_DIR = "tls"
BUNDLE_KIND = "meshd-client-bundle"


class Keyring:
    """The identity files of one meshd home."""

    def __init__(self, home: Path) -> None:
        self.dir = home / TLS_DIR

    def _path(self, name: str) -> Path:
        return self.dir / name

    def _write(self, name: str, data: bytes, mode: int = 0o644) -> None:
        private_dir(self.dir.parent)  # the home: keys now, the CLI socket later
        private_dir(self.dir)
        atomic_write_bytes(self._path(name), data, mode)

    def save_private(self, name: str, data: bytes) -> None:
        """Keep a file only this user may read, beside the keys."""
        self._write(name, data, 0o600)

    def read_private(self, name: str) -> bytes | None:
        """A file kept with save_private, or None."""
        return self._read(name)

    def _read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    # -- this peer -------------------------------------------------------------------------

    def peer_key(self) -> ec.EllipticCurvePrivateKey:
        """This peer's key, made on first use."""
        stored = self._read("peer.key")
        if stored is not None:
            return pki.load_key(stored)
        key = pki.new_key()
        self._write("peer.key", pki.key_pem(key), 0o600)
        return key

    def peer_id(self) -> str:
        """This peer's id: the hash of its public key."""
        return pki.peer_id_of(self.peer_key().public_key())

    def ca(self) -> x509.Certificate | None:
        """The mesh CA certificate, once this peer belongs to a mesh."""
        stored = self._read("ca.crt")
        return None if stored is None else pki.load_cert(stored)

    def certificate(self) -> x509.Certificate | None:
        """This peer's certificate, once this peer belongs to a mesh."""
        stored = self._read("peer.crt")
        return None if stored is None else pki.load_cert(stored)

    def credentials(self) -> TlsCredentials | None:
        """TLS credentials for serving and calling peers, or None outside a mesh."""
        ca, cert = self._read("ca.crt"), self._read("peer.crt")
        if ca is None or cert is None:
            return None
        return TlsCredentials(ca, cert, pki.key_pem(self.peer_key()))

    def is_founder(self) -> bool:
        """True on a peer that holds the CA key (the founder, or a restored CA holder)."""
        return self._path("ca.key").exists()

    def ca_key(self) -> ec.EllipticCurvePrivateKey:
        """The CA key; only CA holders (the founder, peers that restored a backup) have it."""
        stored = self._read("ca.key")
        if stored is None:
            raise ConfigError(
                "only a CA holder can do this: the peer that ran `meshd init`, or one that ran "
                "`meshd ca restore`"
            )
        return pki.load_key(stored)

    def save_renewed_certificate(self, pem: bytes) -> None:
        """Replace this peer's certificate with a renewed one, after checking that the mesh CA
        signed it for this peer's own key and id, and that it ends later than the current one."""
        ca, current = self.ca(), self.certificate()
        if ca is None or current is None:
            raise ConfigError("this peer belongs to no mesh: nothing to renew")
        try:
            fresh = pki.load_cert(pem)
        except InvalidRequest:
            raise InvalidRequest("the renewed certificate is not PEM", "certificate") from None
        key = self.peer_key().public_key()
        if (
            not pki.signed_by(fresh, ca)
            or fresh.public_key() != key
            or pki.holder_of(fresh).name != self.peer_id()
            or not pki.names_peer(fresh, self.peer_id())
            or fresh.not_valid_after_utc <= current.not_valid_after_utc
        ):
            raise InvalidRequest(
                "the renewed certificate is not a later one for this peer from this mesh's CA",
                "certificate",
            )
        self._write("peer.crt", pem)

    # -- joining and leaving ---------------------------------------------------------------

    def init_mesh(self, name: str) -> x509.Certificate:
        """Create a mesh: its CA, and this peer's certificate signed by it."""
        if self._path("ca.crt").exists():
            raise ConfigError(f"{self.dir} already belongs to a mesh (`meshd leave` first)")
        ca_key, ca = pki.create_ca(name)
        self._write("ca.key", pki.key_pem(ca_key), 0o600)
        key = self.peer_key()
        cert = pki.issue(ca_key, ca, key.public_key(), "peer", self.peer_id())
        self.record_issued(cert)
        self._write("peer.crt", pki.cert_pem(cert))
        self._write("ca.crt", pki.cert_pem(ca))  # last: the mesh exists once this is here
        return ca

    def save_membership(self, ca_pem: bytes, cert_pem: bytes, addresses: list[str]) -> None:
        """Keep what a join returned: the CA, this peer's certificate, the mesh's addresses."""
        self._write("mesh.json", json.dumps({"addresses": addresses}).encode())
        self._write("peer.crt", cert_pem)
        self._write("ca.crt", ca_pem)

    def mesh_addresses(self) -> list[str]:
        """Addresses of peers learned when joining: where to start heartbeating."""
        stored = self._read("mesh.json")
        return [] if stored is None else [str(a) for a in json.loads(stored)["addresses"]]

    def forget(self) -> None:
        """Leave the mesh: remove every identity file (a new peer id next time)."""
        if self.dir.exists():
            for path in self.dir.iterdir():
                path.unlink()
            self.dir.rmdir()

    # -- the founder's records -------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.dir.parent)
        private_dir(self.dir)
        with (self.dir / ".lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def issued(self) -> list[dict[str, Any]]:
        """Every certificate the CA signed: serial, role, name, expiry."""
        stored = self._read("issued.json")
        return [] if stored is None else list(json.loads(stored))

    def record_issued(self, cert: x509.Certificate, renewal: bool = False) -> None:
        """Remember a certificate the CA signed (when, and whether it renewed one), so it can
        be revoked by name."""
        holder = pki.holder_of(cert)
        record = {**vars(holder), "serial": str(holder.serial), "at": time.time()}
        self._record({**record, "renewal": True} if renewal else record)

    def last_renewed_at(self, name: str) -> float | None:
        """When the CA last renewed a certificate of name (None: never, as far as it kept)."""
        times = [
            float(r["at"])
            for r in self.issued()
            if r.get("name") == name and r.get("renewal") and isinstance(r.get("at"), int | float)
        ]
        return max(times, default=None)

    def _record(self, record: dict[str, Any]) -> None:
        with self._locked():
            records = [*self.issued(), record]
            self._write("issued.json", json.dumps(records, indent=1).encode(), 0o600)

    def issue_api_key(self, name: str) -> str:
        """Founder: an API key for app `name`, signed by the CA; only its hash is kept."""
        ca = self.ca()
        assert ca is not None
        if any(r["name"] == name for r in self.issued()):
            raise ConfigError(f"a credential was already issued to {quoted(name)}; pick another")
        key, serial = apikeys.issue_key(self.ca_key(), pki.mesh_id_of(ca), name)
        record = {"role": "client", "name": name, "serial": str(serial), "kind": "api-key"}
        self._record({**record, "key_sha256": apikeys.key_hash(key)})
        return key

    def revocations(self) -> RevocationList:
        """The newest revocation list this peer has seen."""
        ca, stored = self.ca(), self._read("revocations.json")
        if ca is None or stored is None:
            return RevocationList()
        return parse_revocations(stored, ca)

    def save_revocations(self, revocations: RevocationList) -> None:
        """Keep a (verified) revocation list."""
        self._write("revocations.json", revocations.to_bytes())

    def revoke(self, name: str) -> tuple[RevocationList, list[Revoked]]:
        """Founder: revoke every certificate issued to name (a peer id or an app name)."""
        ca_key = self.ca_key()
        with self._locked():
            matches = [
                Revoked(int(r["serial"]), r["name"]) for r in self.issued() if r["name"] == name
            ]
            if not matches:
                known = sorted({r["name"] for r in self.issued()})
                raise ConfigError(f"no certificate was issued to {quoted(name)} (known: {known})")
            if name == self.peer_id():
                raise ConfigError("the founder cannot revoke itself; use `meshd leave`")
            # One entry for the name refuses every certificate it was ever issued: the list
            # grows by revoked members, not by how many certificates each one had.
            revocations = self.revocations().with_revoked(ca_key, [Revoked(0, name)])
            self.save_revocations(revocations)
        return revocations, matches

    def ca_backup(self, passphrase: str) -> bytes:
        """CA holder: the CA key and certificate, and the record of what it issued (so that
        revoking by name works on the peer that restores it), sealed with a passphrase."""
        ca = self.ca()
        assert ca is not None
        issued = json.dumps(self.issued()).encode()
        return cabackup.seal(pki.key_pem(self.ca_key()), pki.cert_pem(ca), passphrase, issued)

    def ca_restore(self, data: bytes, passphrase: str) -> None:
        """Make this peer (a member of the same mesh) a CA holder from a backup."""
        key_pem, cert_pem, issued = cabackup.unseal(data, passphrase)
        ca = self.ca()
        if ca is None:
            raise ConfigError("join the mesh first (`meshd join CODE`), then restore its CA")
        if pki.fingerprint(pki.load_cert(cert_pem)) != pki.fingerprint(ca):
            raise ConfigError("this backup holds the CA of another mesh")
        if pki.load_key(key_pem).public_key() != ca.public_key():
            raise ConfigError("the backup's key does not belong to its certificate")
        with self._locked():
            known = {r["serial"] for r in self.issued()}
            merged = [*self.issued(), *(r for r in json.loads(issued) if r["serial"] not in known)]
            self._write("issued.json", json.dumps(merged, indent=1).encode(), 0o600)
        self._write("ca.key", key_pem, 0o600)

    def client_bundle(self, name: str, addresses: list[str]) -> bytes:
        """Founder: a credential bundle for an app (JSON, holds a private key: keep it 0600)."""
        ca, ca_key = self.ca(), self.ca_key()
        assert ca is not None
        if any(r["name"] == name for r in self.issued()):
            raise ConfigError(f"a certificate was already issued to {name!r}; pick another name")
        key = pki.new_key()
        cert = pki.issue(ca_key, ca, key.public_key(), "client", name)
        self.record_issued(cert)
        bundle = {
            "kind": BUNDLE_KIND,
            "name": name,
            "mesh": pki.mesh_name_of(ca),
            "addresses": addresses,
            "ca": pki.cert_pem(ca).decode(),
            "certificate": pki.cert_pem(cert).decode(),
            "key": pki.key_pem(key).decode(),
        }
        return json.dumps(bundle, indent=1).encode()


def load_bundle(path: Path) -> tuple[TlsCredentials, list[str]]:
    """Credentials and addresses from an app bundle made by `meshd invite --client`."""
    try:
        bundle = json.loads(path.read_bytes())
        if bundle.get("kind") != BUNDLE_KIND:
            raise ValueError("not a meshd client bundle")
        credentials = TlsCredentials(
            bundle["ca"].encode(), bundle["certificate"].encode(), bundle["key"].encode()
        )
        return credentials, [str(a) for a in bundle["addresses"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"cannot read the bundle {path}: {exc}") from None
