"""meshd/peers.py: liveness and the peer table."""

from __future__ import annotations

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
