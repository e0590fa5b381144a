"""What this peer believes of addresses other parties tell it, and how often it dials them.

Pure decisions, no sockets: which told address is acceptable, how long to wait after a failed
dial, and when to forget an address. An address comes from one of:
- this peer's own settings or its join (permanent: retried forever, with backoff);
- mDNS, or another peer's heartbeat (learned: bounded per teller and in total, forgotten when
  it keeps failing, dropped when the teller is revoked).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from meshd.addresses import is_loopback

# Teller names for what no peer told: settings, joins and mDNS.
PERMANENT = "settings"
MDNS = "mdns"

MAX_ADDRESS_CHARS = 255
MAX_PER_TELLER = 32  # learned addresses one teller may have in the table at once
MAX_LEARNED = 128  # learned addresses in the table, all tellers together
MAX_IGNORED = 256  # addresses remembered as "this peer" or "another mesh"
MAX_BACKOFF = 60.0  # seconds between dials of an address that keeps failing
NEVER_ANSWERED_TRIES = 6  # a learned address that never answered is forgotten after these
FORGET_AFTER = 600.0  # a learned address that answered once is forgotten after failing this long
GRACE_FAILURES = 5  # an address that answered once is dialled every round this many times
# A peer's own sender address, as its heartbeats give it: one at a time per peer, and another
# taken at most this often while the one before never answered (an honest peer's address
# changes with a new network, not with every heartbeat).
SENDER_CHANGE_EVERY = 30.0

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*\.?\Z")


def peer_address(text: str) -> str | None:
    """`host:port` (a hostname, IPv4 or bracketed IPv6, port 1-65535) in a normal form,
    or None for anything else: `unix:` paths, URLs, missing or bad ports, odd characters."""
    if not text or len(text) > MAX_ADDRESS_CHARS or not text.isascii():
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]:{int(port)}"
        except ValueError:
            return None
    try:
        return f"{ipaddress.IPv4Address(host)}:{int(port)}"
    except ValueError:
        pass
    if _HOSTNAME.match(host) and not host.replace(".", "").isdigit():
        return f"{host.lower()}:{int(port)}"
    return None


def host_of(address: str) -> str:
    """The host part of host:port, without brackets."""
    return address.rpartition(":")[0].strip("[]")


@dataclass(frozen=True)
class Told:
    """An address and who told it: a peer id, MDNS or PERMANENT; teller_local when the teller
    itself is on this machine (only such a teller may name a loopback address)."""

    address: str
    teller: str
    teller_local: bool = False


def refusal(told: Told, own: frozenset[str], per_teller: int, learned: int) -> str | None:
    """Why a told address is not taken into the table, or None to take it. `own` are this
    peer's own addresses; per_teller and learned count what is already in the table."""
    if told.address in own:
        return "it is this peer"
    if told.teller == PERMANENT:
        return None
    if is_loopback(host_of(told.address)) and not told.teller_local:
        return "a loopback address from a teller on another machine"
    if per_teller >= MAX_PER_TELLER:
        return f"its teller already has {MAX_PER_TELLER} addresses here"
    if learned >= MAX_LEARNED:
        return f"{MAX_LEARNED} learned addresses are known already"
    return None


def retry_delay(failures: int, interval: float, ever_answered: bool) -> float:
    """Seconds until the next dial after `failures` failures in a row: every round for a
    peer that answered before (a restart is back within a round), then doubling to MAX_BACKOFF."""
    if failures <= 0 or (ever_answered and failures <= GRACE_FAILURES):
        return interval
    steps = failures - (GRACE_FAILURES if ever_answered else 1)
    return min(interval * 2.0 ** min(steps, 30), MAX_BACKOFF)


def forgotten(teller: str, failures: int, failing_for: float, ever_answered: bool) -> bool:
    """A learned address is forgotten when it never answered NEVER_ANSWERED_TRIES dials, or
    has not answered for FORGET_AFTER seconds; permanent ones never are."""
    if teller == PERMANENT:
        return False
    if not ever_answered:
        return failures >= NEVER_ANSWERED_TRIES
    return failing_for >= FORGET_AFTER
