"""meshd/addresses.py: loopback and wildcard hosts, and where friends connect."""

from __future__ import annotations

import pytest

from meshd.addresses import (
    announce_addresses,
    is_loopback,
    is_wildcard,
    lan_ipv4,
    reachable_hosts,
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
