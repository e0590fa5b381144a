"""meshd/gossip.py: which told addresses are taken, backoff, forgetting."""

from __future__ import annotations

import pytest

from meshd import gossip
from meshd.gossip import Told, forgotten, host_of, peer_address, refusal, retry_delay


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("10.0.0.2:7070", "10.0.0.2:7070"),
        ("Mini.Local:7070", "mini.local:7070"),
        ("[::1]:7070", "[::1]:7070"),
        ("[0:0::1]:07070", "[::1]:7070"),
        ("peer-1.tail1234.ts.net:1", "peer-1.tail1234.ts.net:1"),
    ],
)
def test_peer_addresses_are_taken_in_a_normal_form(text: str, normal: str) -> None:
    assert peer_address(text) == normal


@pytest.mark.parametrize(
    "text",
    [
        "",
        "unix:/tmp/x.sock",
        "unix:///tmp/x.sock:1",
        "http://a:80",
        "a:0",
        "a:65536",
        "a:",
        ":7070",
        "a b:1",
        "a/b:1",
        "[::1:7070",
        "::1:7070",
        "1.2.3.4.5:1",
        "999.1.1.1:1",
        "é.local:1",
        "a" * 250 + ".b:1",
        "x" * 300,
        "a:\uff11\uff12",  # full-width digits: int() would take them
        "\u0430.local:1",  # a Cyrillic a
    ],
)
def test_anything_but_host_port_is_refused(text: str) -> None:
    assert peer_address(text) is None


def test_an_address_is_at_most_255_characters() -> None:
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 58])  # 250 characters
    assert peer_address(f"{host}:7070") == f"{host}:7070"  # 255
    assert peer_address(f"{host}d:7070") is None  # 256


def test_the_host_of_an_address() -> None:
    assert host_of("[::1]:7070") == "::1"
    assert host_of("10.0.0.2:7070") == "10.0.0.2"
    assert host_of("Xbox:1") == "Xbox"


def test_refusal_reasons() -> None:
    own = frozenset({"10.0.0.1:7070"})
    assert refusal(Told("10.0.0.1:7070", gossip.PERMANENT), own, 0, 0) == "it is this peer"
    assert refusal(Told("10.0.0.2:7070", "peer-a"), own, 0, 0) is None
    assert refusal(Told("127.0.0.1:7070", "peer-a"), own, 0, 0) == (
        "a loopback address from a teller on another machine"
    )
    assert refusal(Told("127.0.0.1:7070", "peer-a", teller_local=True), own, 0, 0) is None
    assert refusal(Told("127.0.0.1:7070", gossip.PERMANENT), own, 0, 0) is None
    full = gossip.MAX_PER_TELLER
    assert "already has" in str(refusal(Told("10.0.0.2:1", "peer-a"), own, full, full))
    assert refusal(Told("10.0.0.2:1", "peer-a"), own, full - 1, full - 1) is None
    assert "learned" in str(refusal(Told("10.0.0.2:1", "b"), own, 0, gossip.MAX_LEARNED))
    assert refusal(Told("10.0.0.2:1", gossip.PERMANENT), own, full, gossip.MAX_LEARNED) is None


def test_backoff_doubles_to_a_cap_and_spares_peers_that_answered_before() -> None:
    assert [retry_delay(n, 1.0, ever_answered=False) for n in range(8)] == [
        1.0,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        gossip.MAX_BACKOFF,
    ]
    assert retry_delay(10_000, 1.0, ever_answered=False) == gossip.MAX_BACKOFF
    grace = gossip.GRACE_FAILURES
    assert retry_delay(grace, 1.0, ever_answered=True) == 1.0
    assert retry_delay(grace + 1, 1.0, ever_answered=True) == 2.0


def test_learned_addresses_are_forgotten_permanent_ones_never() -> None:
    tries = gossip.NEVER_ANSWERED_TRIES
    assert not forgotten("peer-a", tries - 1, 1e9, ever_answered=False)
    assert forgotten("peer-a", tries, 0.0, ever_answered=False)
    assert forgotten(gossip.MDNS, tries, 0.0, ever_answered=False)
    assert not forgotten("peer-a", 10**6, gossip.FORGET_AFTER - 1, ever_answered=True)
    assert forgotten("peer-a", 1, gossip.FORGET_AFTER, ever_answered=True)
    assert not forgotten(gossip.PERMANENT, 10**6, 1e9, ever_answered=False)
