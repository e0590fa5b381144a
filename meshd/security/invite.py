"""Invite codes, kubeadm-style: where the inviter is, what its CA looks like, and a one-time secret.

A code is base32 so it survives chats and phone keyboards: version, the CA certificate's sha256
fingerprint, a 128-bit secret, and the inviter's addresses. The inviter keeps only a hash of
each secret, with its expiry; a secret works once. Wrong secrets are limited per minute, so
guessing is pointless even before the secret's 128 bits are.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import re
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from meshd.errors import InvalidRequest, Overloaded

VERSION = 1
SECRET_BYTES = 16
FINGERPRINT_BYTES = 32
DEFAULT_TTL_S = 3600.0
MAX_TTL_DAYS = 7  # a code works for a week at most
MAX_TTL_S = MAX_TTL_DAYS * 86400.0
WRONG_SECRETS_PER_MINUTE = 5
_PREFIX = "MESHD-"
_IP_SIZES = {4: 4, 6: 16}  # the tag of an IP address is its version
_DAMAGED = "the invite code is damaged (an address does not parse)"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*\.?")


@dataclass(frozen=True)
class InviteCode:
    """What a code carries."""

    addresses: tuple[str, ...]  # host:port of the inviter's join listener
    fingerprint: bytes  # sha256 of the mesh CA certificate
    secret: bytes

    def encode(self) -> str:
        """The code as printed: MESHD- and base32, no padding."""
        body = bytes([VERSION]) + self.fingerprint + self.secret
        for address in self.addresses:
            body += _pack_address(address)
        return _PREFIX + base64.b32encode(body).decode().rstrip("=")


def decode_invite(code: str) -> InviteCode:
    """Parse a code; a clear error for anything that is not one."""
    text = "".join(code.split()).upper().removeprefix(_PREFIX)
    try:
        body = base64.b32decode(text + "=" * (-len(text) % 8))
    except ValueError:
        raise InvalidRequest("not an invite code (it should start with MESHD-)") from None
    head = 1 + FINGERPRINT_BYTES + SECRET_BYTES
    if len(body) <= head or body[0] != VERSION:
        raise InvalidRequest("not an invite code, or one from another meshd version")
    fingerprint, secret = body[1 : 1 + FINGERPRINT_BYTES], body[1 + FINGERPRINT_BYTES : head]
    addresses, rest = [], body[head:]
    while rest:
        address, rest = _unpack_address(rest)
        addresses.append(address)
    return InviteCode(tuple(addresses), fingerprint, secret)


def check_host(host: str) -> str:
    """An IP address or a DNS name (a Tailscale or .local name) that fits in a code."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise InvalidRequest(
            f"not a host for an invite: {host!r} (an IP address or a DNS name, without a port)",
            field="addresses",
        )
    return host


def _pack_address(address: str) -> bytes:
    host, _, port = address.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a DNS name: tag 0, its length, its ASCII
        name = check_host(host).encode()
        return bytes([0, len(name)]) + name + struct.pack(">H", int(port))
    return bytes([ip.version]) + ip.packed + struct.pack(">H", int(port))


def _unpack_address(data: bytes) -> tuple[str, bytes]:
    tag = data[0]
    if tag == 0:  # a DNS name: its length (0 when the code ends here), then its ASCII
        size, start = sum(data[1:2]), 2
    elif tag in _IP_SIZES:
        size, start = _IP_SIZES[tag], 1
    else:
        raise InvalidRequest(_DAMAGED)
    if len(data) < start + size + 2:
        raise InvalidRequest(_DAMAGED)
    raw = data[start : start + size]
    (port,) = struct.unpack(">H", data[start + size : start + size + 2])
    if tag == 0:
        host = check_host(raw.decode(errors="replace"))  # a hostile code gets no odd host in
    else:
        ip = ipaddress.ip_address(raw)
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{host}:{port}", data[start + size + 2 :]


@dataclass
class _Pending:
    expires: float  # monotonic
    role: str


@dataclass
class InviteBook:
    """The inviter's open invites (secret hashes only) and its wrong-secret limiter."""

    pending: dict[bytes, _Pending] = field(default_factory=dict)
    wrong: collections.deque[float] = field(default_factory=collections.deque)
    clock: Callable[[], float] = time.monotonic

    def create(self, ttl: float = DEFAULT_TTL_S, role: str = "peer") -> bytes:
        """A new one-time secret, valid for ttl seconds."""
        if not 0 < ttl <= MAX_TTL_S:
            raise InvalidRequest(
                f"an invite is valid for some time, up to {MAX_TTL_DAYS} days",
                field="ttl",
            )
        secret = secrets.token_bytes(SECRET_BYTES)
        self.pending[_digest(secret)] = _Pending(self.clock() + ttl, role)
        return secret

    def redeem(self, secret: bytes) -> str:
        """Use up a secret and return the role it grants, or refuse (rate-limited)."""
        with self.redeeming(secret) as role:
            return role

    @contextlib.contextmanager
    def redeeming(self, secret: bytes) -> Iterator[str]:
        """The role a secret grants (or a refusal, rate-limited); the secret is used up only
        when the block succeeds, so a join that fails after the secret matched can retry."""
        role = self._role_of(secret)
        yield role
        self.pending.pop(_digest(secret), None)

    def _role_of(self, secret: bytes) -> str:
        now = self.clock()
        while self.wrong and now - self.wrong[0] > 60:
            self.wrong.popleft()
        if len(self.wrong) >= WRONG_SECRETS_PER_MINUTE:
            raise Overloaded("too many wrong invite secrets in the last minute: try again later")
        self.expire()
        key = _digest(secret)
        match = next((k for k in self.pending if hmac.compare_digest(k, key)), None)
        if match is None:
            self.wrong.append(now)
            raise InvalidRequest("this invite code is wrong, used or expired: ask for a new one")
        return self.pending[match].role

    def to_records(self, now_unix: float) -> list[dict[str, object]]:
        """The open invites for a file: each secret's sha256, role and end (Unix time)."""
        now = self.clock()
        return [
            {"sha256": key.hex(), "role": p.role, "expires_unix": now_unix + p.expires - now}
            for key, p in self.pending.items()
            if p.expires > now
        ]

    def take_records(self, records: object, now_unix: float) -> int:
        """Reopen the invites a file kept (skipping ended or malformed ones); how many."""
        now, taken = self.clock(), 0
        for record in records if isinstance(records, list) else []:
            try:
                key = bytes.fromhex(str(record["sha256"]))
                left = float(record["expires_unix"]) - now_unix
                role = str(record["role"])
            except (KeyError, TypeError, ValueError):
                continue
            if len(key) == 32 and 0 < left <= MAX_TTL_S and 0 < len(role) <= 16:
                self.pending[key] = _Pending(now + left, role)
                taken += 1
        return taken

    def expire(self) -> None:
        """Forget expired invites."""
        now = self.clock()
        for key in [k for k, p in self.pending.items() if p.expires <= now]:
            del self.pending[key]

    def next_expiry(self) -> float | None:
        """Monotonic time the next invite expires, or None when none is open."""
        return min((p.expires for p in self.pending.values()), default=None)


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()
