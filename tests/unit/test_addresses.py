"""meshd/addresses.py: loopback and wildcard hosts, and where friends connect."""

from __future__ import annotations

import pytest

from meshd.addresses import (
    Interface,
    announce_addresses,
    is_loopback,
    is_wildcard,
    lan_ipv4,
    reachable_hosts,
    read_interfaces,
    usable_ipv4,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "localhost", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.5", "0.0.0.0", "mini.local", "fe80::1", ""])
def test_hosts_that_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_wildcards() -> None:
    assert all(is_wildcard(h) for h in ("0.0.0.0", "", "::", "[::]"))
    assert not is_wildcard("127.0.0.1") and not is_wildcard("10.0.0.5")


def test_a_bound_host_is_reached_as_itself() -> None:
    assert reachable_hosts("192.0.2.7") == ["192.0.2.7"]
    assert announce_addresses("127.0.0.1") == ["127.0.0.1"]


def test_a_wildcard_is_reached_at_the_lan_addresses() -> None:
    lan = lan_ipv4()
    assert all(not is_loopback(a) for a in lan)
    assert reachable_hosts("0.0.0.0", limit=2) == (lan[:2] or ["127.0.0.1"])
    assert announce_addresses("0.0.0.0") == lan


def test_only_lan_addresses_are_usable() -> None:
    """Tunnels (Tailscale, VPN, macOS utun), container and VM bridges, link-local addresses a
    machine gives itself without DHCP, and interfaces that are down go into no mDNS record."""
    interfaces = [
        Interface("lo0", ("127.0.0.1",), True, False),
        Interface("en0", ("192.168.1.20",), True, False),
        Interface("en1", ("169.254.7.9",), True, False),  # no DHCP answer yet
        Interface("en5", ("10.0.0.9",), False, False),  # cable out
        Interface("utun3", ("100.101.102.103",), True, True),  # Tailscale on macOS
        Interface("tailscale0", ("100.64.0.2",), True, True),
        Interface("docker0", ("172.17.0.1",), True, False),
        Interface("br-5e1f", ("172.18.0.1",), True, False),
        Interface("bridge100", ("192.168.64.1",), True, False),  # a VM's network on macOS
        Interface("bridge0", ("10.9.9.1",), True, False),  # Thunderbolt bridge: a real LAN
        Interface("eth0", ("10.213.0.1", "10.213.0.77"), True, False),
        Interface("awdl0", (), True, False),
    ]
    assert usable_ipv4(interfaces) == ["192.168.1.20", "10.9.9.1", "10.213.0.1", "10.213.0.77"]


def test_this_machines_interfaces_are_read() -> None:
    found = read_interfaces()
    assert any(i.ipv4 == ("127.0.0.1",) for i in found)
    assert lan_ipv4() == usable_ipv4(found)
