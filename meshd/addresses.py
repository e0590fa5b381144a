"""This machine's addresses, in one place: which listen hosts are loopback or wildcard, the LAN
addresses friends can reach, and the ones mDNS announces."""

from __future__ import annotations

import ipaddress
import socket

WILDCARDS = frozenset({"0.0.0.0", "", "::", "[::]"})


def is_loopback(host: str) -> bool:
    """localhost, 127.x or ::1 (with or without brackets)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """A listen host that means every interface."""
    return host in WILDCARDS


def lan_ipv4() -> list[str]:
    """This machine's non-loopback IPv4 addresses, interface by interface."""
    import psutil  # here: the CLI reads settings without it

    return [
        address.address
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET and not is_loopback(address.address)
    ]


def reachable_hosts(listen_host: str, limit: int = 3) -> list[str]:
    """The hosts friends can reach a listener at: the host itself, or for a wildcard
    listener this machine's LAN addresses (loopback when it has none)."""
    if not is_wildcard(listen_host):
        return [listen_host]
    return lan_ipv4()[:limit] or ["127.0.0.1"]


def announce_addresses(listen_host: str) -> list[str]:
    """The IPv4 addresses to announce over mDNS: the bound one, or every LAN one."""
    if not is_wildcard(listen_host):
        return [socket.gethostbyname(listen_host)]
    return lan_ipv4()
