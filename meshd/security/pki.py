"""Keys and certificates: the mesh CA, and the peer and app certificates it signs.

Every key is ECDSA P-256 (what BoringSSL, inside gRPC, and Apple's TLS stacks all speak).
A certificate's organizational unit says its role: "peer" (serves and calls everything) or
"client" (an app: generate, warm, list). A peer's id is a hash of its public key, so a peer
cannot claim another's id without its key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.errors import InvalidRequest, quoted
from meshd.security.credentials import CA_SERVER_NAME, PEER_SERVER_NAME, peer_server_name

Role = Literal["peer", "client"]
CA_YEARS = 10
CERT_DAYS = 365
_CLOCK_SLACK = dt.timedelta(minutes=5)  # a friend's clock a little behind is not a failure


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (the file holding it is 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """A private key from PEM."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidRequest("not an EC private key", field="key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    """A certificate from PEM or DER."""
    try:
        if pem.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(pem)
        return x509.load_der_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidRequest(f"not a certificate: {exc}", field="certificate") from None


def fingerprint(cert: x509.Certificate) -> bytes:
    """sha256 of the certificate's DER bytes (what an invite code carries)."""
    return cert.fingerprint(hashes.SHA256())


def peer_id_of(public_key: ec.EllipticCurvePublicKey) -> str:
    """A peer's id: base32 of the sha256 of its public key, 80 bits, Syncthing-style."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "peer-" + base64.b32encode(hashlib.sha256(der).digest()[:10]).decode().lower()


def mesh_id_of(ca: x509.Certificate) -> str:
    """The mesh id advertised over mDNS: derived from the CA, so it cannot collide by accident."""
    return "mesh-" + fingerprint(ca).hex()[:16]


def _name(common_name: str, role: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if role:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name(attributes)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


MAX_MESH_NAME = 48  # "meshd CA " + the name fits a certificate's 64-character common name


def check_mesh_name(name: str) -> str:
    """A mesh name: 1 to MAX_MESH_NAME printable characters, not only spaces."""
    if not name.strip() or len(name) > MAX_MESH_NAME or not name.isprintable():
        raise InvalidRequest(
            f"a mesh name is 1 to {MAX_MESH_NAME} printable characters, got {quoted(name)}",
            field="name",
        )
    return name


def create_ca(mesh_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new mesh CA: key and self-signed certificate, valid ten years."""
    check_mesh_name(mesh_name)
    key = new_key()
    subject = _name(f"meshd CA {mesh_name}")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SLACK)
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_SERVER_NAME)]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def mesh_name_of(ca: x509.Certificate) -> str:
    """The name given to `meshd init --name`."""
    common = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value).removeprefix("meshd CA ") if common else ""


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    role: Role,
    name: str,
    *,
    days: float = CERT_DAYS,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A certificate for a peer (named by its peer id) or an app (named by its client name)."""
    start = not_before or _now() - _CLOCK_SLACK
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name, role))
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if role == "peer":  # only peers serve: only their certificates name the peer server
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        names = [x509.DNSName(PEER_SERVER_NAME), x509.DNSName(peer_server_name(name))]
        san = x509.SubjectAlternativeName(names)
        builder = builder.add_extension(san, critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class Holder:
    """Who a certificate names: role, name (peer id or app name), serial and expiry."""

    role: Role
    name: str
    serial: int
    not_after: float  # Unix time


def names_peer(cert: x509.Certificate, peer_id: str) -> bool:
    """Whether a peer certificate carries its peer id as a server name (those issued before
    peers checked it do not; they are renewed)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return peer_server_name(peer_id) in san.get_values_for_type(x509.DNSName)


def renewed(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cert: x509.Certificate
) -> x509.Certificate:
    """A new certificate for cert's key, role and name, valid from now."""
    holder = holder_of(cert)
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InvalidRequest("the certificate's key is not P-256", field="certificate")
    return issue(ca_key, ca, public_key, holder.role, holder.name)


def holder_of(cert: x509.Certificate) -> Holder:
    """The role and name a mesh certificate states."""
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    role = str(units[0].value) if units else ""
    if role not in ("peer", "client") or not names:
        raise InvalidRequest("the certificate names no meshd role", field="certificate")
    not_after = cert.not_valid_after_utc.timestamp()
    return Holder(role, str(names[0].value), cert.serial_number, not_after)  # type: ignore[arg-type]


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """True when ca's key signed cert."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def requested_key(csr_der: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a certificate request, after checking its self-signature."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError:
        raise InvalidRequest("the certificate request is not DER", field="csr") from None
    public_key = csr.public_key()
    if (
        not isinstance(public_key, ec.EllipticCurvePublicKey)
        or not isinstance(public_key.curve, ec.SECP256R1)
        or not csr.is_signature_valid
    ):
        raise InvalidRequest("the certificate request is not a signed P-256 key", field="csr")
    return public_key


def make_request(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A DER certificate signing request for key."""
    csr = (
        x509.CertificateSigningRequestBuilder().subject_name(_name(name)).sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)
