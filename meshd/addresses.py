"""This machine's addresses, in one place: which listen hosts are loopback or wildcard, the LAN
addresses friends can reach (not tunnels, bridges or link-local ones), and the ones mDNS
announces."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

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


# Interfaces that are not the LAN friends share: container and VM bridges (Docker, libvirt,
# VMware, VirtualBox, macOS Internet Sharing and VM networks on bridge100 and up).
_VIRTUAL = re.compile(r"^(docker\d|br-|virbr|vmnet|vboxnet|veth|bridge1\d\d)")


@dataclass(frozen=True)
class Interface:
    """What `usable_ipv4` needs to know of one network interface."""

    name: str
    ipv4: tuple[str, ...]
    up: bool
    point_to_point: bool  # a tunnel: VPN, Tailscale, WireGuard, PPP, macOS utun
    multicast: bool = True  # psutil before 5.9.3 does not say: assume it can


def read_interfaces() -> list[Interface]:
    """This machine's interfaces, as psutil sees them."""
    import psutil  # here: the CLI reads settings without it

    stats = psutil.net_if_stats()
    found = []
    for name, addresses in psutil.net_if_addrs().items():
        stat = stats.get(name)
        flags = getattr(stat, "flags", None)  # psutil ≥ 5.9.3
        said = str(flags).split(",") if flags is not None else ["multicast"]
        ipv4 = tuple(a.address for a in addresses if a.family == socket.AF_INET)
        up = stat is not None and stat.isup
        found.append(Interface(name, ipv4, up, "pointopoint" in said, "multicast" in said))
    return found


def usable_ipv4(interfaces: Iterable[Interface]) -> list[str]:
    """The IPv4 addresses friends on the LAN can reach this machine at: up, not loopback, not
    link-local (169.254/16, what a machine gives itself without DHCP), not a tunnel, not a
    container or VM bridge."""
    usable = []
    for interface in interfaces:
        if not interface.up or interface.point_to_point or _VIRTUAL.match(interface.name):
            continue
        for address in interface.ipv4:
            ip = ipaddress.ip_address(address)
            if not ip.is_loopback and not ip.is_link_local:
                usable.append(address)
    return usable


def lan_ipv4() -> list[str]:
    """This machine's LAN IPv4 addresses, interface by interface."""
    return usable_ipv4(read_interfaces())


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
