"""meshd/peers.py: liveness and the peer table."""

from __future__ import annotations

from meshd import gossip
from meshd.peers import PeerTable, is_alive
from meshd.types import PeerInfo


def test_liveness_and_the_table() -> None:
    assert is_alive(last_ok=10.0, now=12.0, dead_after=2.5)
    assert not is_alive(last_ok=10.0, now=13.0, dead_after=2.5)
    table = PeerTable("me", "mesh", dead_after=2.5)
    table.add("a:1")
    table.add("self:1")
    table.add("other:1")
    table.record_ok("a:1", PeerInfo("pa", "mesh", "1", "a:1"), rtt=0.01, now=100.0)
    table.record_ok("self:1", PeerInfo("me", "mesh", "1", "self:1"), rtt=0.01, now=100.0)
    table.record_ok("other:1", PeerInfo("px", "elsewhere", "1", "other:1"), rtt=0.01, now=100.0)
    assert [e.address for e in table.live(101.0)] == ["a:1"]
    assert table.live(103.0) == []
    table.add("other:1")  # ignored addresses stay ignored
    assert "other:1" not in table.entries
    table.record_ok("a2:1", PeerInfo("pa", "mesh", "1", "a2:1"), rtt=0.01, now=104.0)
    assert list(table.entries) == ["a2:1"], "one entry per peer id"


def _table() -> PeerTable:
    table = PeerTable("me", "mesh", dead_after=2.5)
    table.set_own(["10.0.0.1:7070"])
    return table


def test_gossip_is_bounded_per_teller_and_in_total() -> None:
    table = _table()
    taken = [table.add(f"10.1.0.{i}:7070", teller="peer-a") for i in range(100)]
    assert sum(taken) == gossip.MAX_PER_TELLER
    for teller in range(20):
        for i in range(gossip.MAX_PER_TELLER):
            table.add(f"10.2.{teller}.{i}:7070", teller=f"peer-{teller}")
    learned = [e for e in table.entries.values() if e.teller != gossip.PERMANENT]
    assert len(learned) == gossip.MAX_LEARNED
    assert table.add("10.9.9.9:7070"), "settings are not bounded by gossip"


def test_never_unix_paths_never_itself_never_others_loopback() -> None:
    table = _table()
    assert not table.add("unix:/tmp/victim.sock", teller="peer-a")
    assert not table.add("10.0.0.1:7070", teller="peer-a")
    assert not table.add("127.0.0.1:22", teller="peer-a")
    assert table.add("127.0.0.1:7071", teller="peer-b", teller_local=True)
    assert list(table.entries) == ["127.0.0.1:7071"]


def test_failing_addresses_back_off_then_are_forgotten() -> None:
    table = _table()
    forgotten: list[str] = []
    table.on_forget = forgotten.append
    table.add("10.1.0.1:7070", teller="peer-a")
    table.add("10.1.0.2:7070")  # from settings
    now = 0.0
    for _ in range(gossip.NEVER_ANSWERED_TRIES):
        for address in table.due(now):
            table.dialling(address)
            table.record_failure(address, now, interval=1.0)
        now += gossip.MAX_BACKOFF
    assert forgotten == ["10.1.0.1:7070"]
    assert list(table.entries) == ["10.1.0.2:7070"]
    kept = table.entries["10.1.0.2:7070"]
    assert kept.dials == gossip.NEVER_ANSWERED_TRIES
    assert table.due(kept.next_dial - 0.1) == []
    assert table.due(kept.next_dial) == ["10.1.0.2:7070"]
    assert table.dials == 2 * gossip.NEVER_ANSWERED_TRIES
    assert not table.add("10.1.0.1:7070", teller="peer-b", now=now), "told again: not redialled"
    assert table.add("10.1.0.1:7070", teller="peer-b", now=now + gossip.FORGET_AFTER)


def test_what_a_revoked_peer_told_is_forgotten() -> None:
    table = _table()
    revoked: set[str] = set()
    table.refused = revoked.__contains__
    table.add("10.1.0.1:7070", teller="peer-a")
    table.add("10.1.0.2:7070", teller="peer-a")
    table.record_ok("10.1.0.2:7070", PeerInfo("pb", "mesh", "1", "10.1.0.2:7070"), 0.01, 1.0)
    table.add("10.1.0.3:7070", teller="peer-c")
    revoked.add("peer-a")
    table.forget_refused()
    assert sorted(table.entries) == ["10.1.0.2:7070", "10.1.0.3:7070"], (
        "an address that answered vouches for itself"
    )


def test_an_address_a_peer_vouches_for_is_dialled_like_a_known_peer() -> None:
    table = _table()
    table.add("10.1.0.9:7070", teller="peer-z", vouched=True)  # peer-z heartbeat us from there
    now = 0.0
    for _ in range(gossip.NEVER_ANSWERED_TRIES + gossip.GRACE_FAILURES):
        table.dialling("10.1.0.9:7070")
        table.record_failure("10.1.0.9:7070", now, interval=1.0)
        now += 1.0
    assert "10.1.0.9:7070" in table.entries, "a slow first connection does not lose a peer"
    table.record_failure("10.1.0.9:7070", now + gossip.FORGET_AFTER, interval=1.0)
    assert "10.1.0.9:7070" not in table.entries
    assert table.add("10.1.0.9:7070", teller="peer-z", vouched=True), "it may come back"
    revoked = {"peer-z"}
    table.refused = revoked.__contains__
    table.forget_refused()
    assert "10.1.0.9:7070" not in table.entries, "a revoked peer's word is worth nothing"


def test_a_peer_vouches_for_one_sender_address_at_a_time() -> None:
    """A member that names a new address of its own in every heartbeat gets one of them dialled
    at a time, another at most every SENDER_CHANGE_EVERY seconds while none answers."""
    table = _table()
    dialled: list[str] = []
    table.on_new = dialled.append
    now = 1000.0
    taken = [
        table.add(f"10.9.0.{i}:7070", teller="peer-r", vouched=True, now=now + i * 0.01)
        for i in range(200)
    ]
    assert sum(taken) == 1 and dialled == ["10.9.0.0:7070"]
    assert [e.address for e in table.entries.values() if e.teller == "peer-r"] == dialled
    later = now + gossip.SENDER_CHANGE_EVERY + 1
    assert table.add("10.9.1.1:7070", teller="peer-r", vouched=True, now=later)
    assert [e.address for e in table.entries.values() if e.teller == "peer-r"] == [
        "10.9.1.1:7070"
    ], "the new one replaces the one that never answered"
    # One that answered is the peer's: a move to another address is taken at once.
    info = PeerInfo("peer-r", "mesh", "1", "10.9.1.1:7070")
    table.record_ok("10.9.1.1:7070", info, rtt=0.01, now=later)
    assert table.add("10.9.2.2:7070", teller="peer-r", vouched=True, now=later + 1)
    assert "10.9.1.1:7070" in table.entries, "an address that answered is kept until it fails"


def test_vouched_addresses_that_never_answered_count_against_the_caps() -> None:
    table = _table()
    for i in range(gossip.MAX_LEARNED + 10):
        table.add(f"10.8.{i // 200}.{i % 200}:7070", teller=f"peer-{i}", vouched=True, now=1.0)
    unanswered = [e for e in table.entries.values() if e.info is None]
    assert len(unanswered) == gossip.MAX_LEARNED
