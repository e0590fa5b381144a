"""meshd/engine/eviction.py: what the memory budget evicts and keep-alive expires."""

from __future__ import annotations

import math

from meshd.engine.eviction import Resident, expired, plan_eviction, warm_until


def resident(
    name: str,
    memory: int,
    last_used: float,
    *,
    pinned: bool = False,
    busy: bool = False,
    warm_until: float = 0.0,
    last_request: float = 0.0,
) -> Resident:
    return Resident(name, memory, pinned, busy, last_used, warm_until, last_request)


class TestEviction:
    def test_fits_without_eviction(self) -> None:
        assert plan_eviction([resident("a", 10, 1)], need=5, budget=20) == []

    def test_least_recently_used_goes_first(self) -> None:
        models = [resident("new", 10, 3), resident("old", 10, 1), resident("mid", 10, 2)]
        assert plan_eviction(models, need=10, budget=30) == ["old"]
        assert plan_eviction(models, need=20, budget=30) == ["old", "mid"]

    def test_pinned_and_busy_are_never_evicted(self) -> None:
        models = [
            resident("pin", 10, 0, pinned=True),
            resident("busy", 10, 1, busy=True),
            resident("idle", 10, 2),
        ]
        assert plan_eviction(models, need=10, budget=30) == ["idle"]
        assert plan_eviction(models, need=11, budget=30) is None

    def test_a_warm_spares_what_a_request_asked_for_recently(self) -> None:
        models = [
            resident("asked", 10, 5, last_request=5),
            resident("warmed", 10, 6),  # used later, but only warmed
            resident("asked-long-ago", 10, 1, last_request=1),
        ]
        assert plan_eviction(models, need=20, budget=30, spare_asked_after=4) == [
            "asked-long-ago",
            "warmed",
        ]
        assert plan_eviction(models, need=30, budget=30, spare_asked_after=4) is None
        assert plan_eviction(models, need=30, budget=30, spare_asked_after=5) == [
            "asked-long-ago",
            "asked",
            "warmed",
        ]  # asked at 5: not after 5
        assert plan_eviction(models, need=30, budget=30) == ["asked-long-ago", "asked", "warmed"]

    def test_exactly_filling_the_budget_fits(self) -> None:
        assert plan_eviction([resident("a", 10, 1)], need=20, budget=30) == []
        assert plan_eviction([resident("a", 10, 1)], need=21, budget=30) == ["a"]

    def test_expiry_at_the_very_moment(self) -> None:
        assert expired([resident("due", 1, 0, warm_until=10)], now=10) == ["due"]
        assert expired([resident("due", 1, 0, warm_until=10)], now=9.99) == []

    def test_bigger_than_the_budget_cannot_fit(self) -> None:
        assert plan_eviction([], need=31, budget=30) is None

    def test_expiry_skips_pinned_busy_and_unexpired(self) -> None:
        models = [
            resident("gone", 1, 0, warm_until=5),
            resident("live", 1, 0, warm_until=50),
            resident("pin", 1, 0, pinned=True, warm_until=5),
            resident("busy", 1, 0, busy=True, warm_until=5),
        ]
        assert expired(models, now=10) == ["gone"]

    def test_lease_extends_keep_alive_and_pins_never_end(self) -> None:
        assert warm_until(100, 30, 0, pinned=False) == 130
        assert warm_until(100, 30, 500, pinned=False) == 500
        assert warm_until(100, 30, 0, pinned=True) == math.inf
