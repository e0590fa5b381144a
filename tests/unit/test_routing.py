"""meshd/routing.py: which peer serves, which peers warm, as pure functions over plain data."""

from __future__ import annotations

import math
import random

from meshd.routing import (
    PeerView,
    PromptShape,
    choose,
    copies,
    expected_wait,
    prefill,
    replica_source,
    replica_targets,
    warm_copies,
    warm_targets,
)
from meshd.types import ModelState, PeerModel


def peer(
    pid: str, *, local: bool = False, rtt: float = 0.001, free: int = 100, **models: PeerModel
) -> PeerView:
    return PeerView(pid, f"{pid}:1", local, rtt, free, dict(models))


def model(warm: bool, **load: float) -> PeerModel:
    """Model m on a peer, warm or cold, with this load."""
    state = ModelState.WARM if warm else ModelState.COLD
    return PeerModel("m", state, **load)  # type: ignore[arg-type]


WARM = model(True, service_seconds=0.1)


COLD = model(False)


def test_expected_wait_counts_queue_per_slot_and_rtt() -> None:
    busy = peer("p", rtt=0.01, m=model(True, active=2, queued=2, slots=2, service_seconds=0.5))
    assert math.isclose(expected_wait(busy, "m"), 2 * 0.5 + 0.01)


def test_least_expected_wait_wins() -> None:
    idle = peer("idle", m=WARM)
    busy = peer("busy", m=model(True, active=3, slots=1, service_seconds=0.1))
    for seed in range(20):
        assert choose([busy, idle], "m", rng=random.Random(seed)).peer.peer_id == "idle"


def test_local_wins_ties() -> None:
    for seed in range(20):
        decision = choose(
            [peer("far", m=WARM), peer("me", local=True, rtt=0, m=WARM)],
            "m",
            rng=random.Random(seed),
        )
        assert decision is not None and decision.peer.local


def test_two_random_choices_spread_near_equals() -> None:
    peers = [peer(f"p{i}", m=WARM) for i in range(4)]
    picked = {choose(peers, "m", rng=random.Random(s)).peer.peer_id for s in range(50)}
    assert len(picked) >= 3, "near-equal peers share the load"


def test_warm_beats_cold_and_cold_goes_to_most_free_memory() -> None:
    assert choose([peer("cold", m=COLD), peer("warm", m=WARM)], "m").peer.peer_id == "warm"
    decision = choose([peer("small", free=10, m=COLD), peer("big", free=99, m=COLD)], "m")
    assert decision.peer.peer_id == "big" and not decision.warm
    assert "most free memory" in decision.reason


def test_excluded_and_unknown() -> None:
    peers = [peer("a", m=WARM), peer("b", m=WARM)]
    assert choose(peers, "m", exclude=["a"]).peer.peer_id == "b"
    assert choose(peers, "m", exclude=["a", "b"]) is None
    assert choose(peers, "other") is None


def test_warm_targets_prefer_warm_then_memory() -> None:
    peers = [
        peer("cold-big", free=90, m=COLD),
        peer("warm", free=1, m=WARM),
        peer("cold-small", free=5, m=COLD),
        peer("none"),
    ]
    assert [p.peer_id for p in warm_targets(peers, "m", 2)] == ["warm", "cold-big"]
    assert warm_targets(peers, "x", 1) == []


def _waiting(pid: str, wait: float, *, local: bool = False) -> PeerView:
    """A warm peer whose expected wait is exactly `wait` seconds (one request ahead, no RTT)."""
    return peer(pid, local=local, rtt=0.0, m=model(True, active=1, slots=1, service_seconds=wait))


def test_one_slot_counts_the_whole_service_time() -> None:
    one = peer("p", rtt=0.0, m=model(True, active=1, slots=1, service_seconds=0.4))
    assert expected_wait(one, "m") == 0.4
    none = peer("p", rtt=0.0, m=model(True, active=1, slots=0, service_seconds=0.4))
    assert expected_wait(none, "m") == 0.4, "no slots reported counts as one"


def test_a_peer_just_past_the_near_equal_margin_is_never_chosen() -> None:
    # best 1.0 s: within 10% (0.1 s) is near; 1.2 s is not, so the best always wins.
    peers = [_waiting("best", 1.0), _waiting("close", 1.05), _waiting("far", 1.2)]
    for seed in range(40):
        assert choose(peers, "m", rng=random.Random(seed)).peer.peer_id == "best"


def test_peers_exactly_at_the_margin_are_near_equals() -> None:
    peers = [_waiting("best", 1.0), _waiting("b", 1.1), _waiting("c", 1.1)]
    chosen = {choose(peers, "m", rng=random.Random(s)).peer.peer_id for s in range(40)}
    assert "best" in chosen and chosen & {"b", "c"}, "two choices sometimes compare b and c"


def test_two_choices_follow_the_random_source_and_take_the_lower_wait() -> None:
    peers = [_waiting("a", 1.0), _waiting("b", 1.0), _waiting("c", 1.0)]
    for seed in range(20):
        first, _ = random.Random(seed).sample(peers, 2)
        decision = choose(peers, "m", rng=random.Random(seed))
        assert decision.peer.peer_id == first.peer_id, "on a tie the first sampled wins"


def test_of_two_near_peers_the_lower_wait_wins_in_either_order() -> None:
    for order in ([_waiting("worse", 1.05), _waiting("better", 1.0)],
                  [_waiting("better", 1.0), _waiting("worse", 1.05)]):  # fmt: skip
        for seed in range(10):
            assert choose(order, "m", rng=random.Random(seed)).peer.peer_id == "better"


def test_a_near_local_peer_wins_over_a_slightly_faster_remote() -> None:
    peers = [_waiting("remote", 1.0), _waiting("me", 1.05, local=True)]
    for seed in range(20):
        decision = choose(peers, "m", rng=random.Random(seed))
        assert decision.peer.peer_id == "me"
        assert decision.reason == "warm on this peer, least expected wait 1050 ms"
        assert decision.warm is True


def test_the_reason_names_the_peer_and_its_wait() -> None:
    decision = choose([_waiting("p1", 2.0)], "m", rng=random.Random(0))
    assert decision.reason == "warm on p1, least expected wait 2000 ms"
    cold = choose([peer("p2", free=5, m=COLD)], "m")
    assert cold.reason == "no peer had it warm; p2 has the most free memory"
    assert cold.warm is False


def test_warm_targets_prefer_this_peer_on_equal_memory() -> None:
    peers = [peer("far", free=10, m=COLD), peer("me", local=True, free=10, m=COLD)]
    assert [p.peer_id for p in warm_targets(peers, "m", 1)] == ["me"]
    assert [p.peer_id for p in warm_targets(peers, "m", 0)] == ["me"], "at least one"
    assert [p.peer_id for p in warm_targets(peers, "m", 2)] == ["me", "far"]


def test_a_paused_peer_takes_no_mesh_requests_unless_nobody_else_can() -> None:
    from meshd.routing import PeerView, choose, warm_targets
    from meshd.types import ModelState, PeerModel

    warm = {"m": PeerModel("m", ModelState.WARM, slots=1)}
    cold = {"m": PeerModel("m", ModelState.COLD, slots=1)}
    here = PeerView("me", "", True, 0.0, 1, warm, paused="paused by its owner")
    there = PeerView("b", "b:1", False, 0.01, 1, cold)
    decision = choose([here, there], "m")
    assert decision is not None and decision.peer.peer_id == "b", "even cold, elsewhere"
    alone = choose([here], "m")
    assert alone is not None and alone.peer.local, "its owner's own requests still run"
    paused_remote = PeerView("c", "c:1", False, 0.01, 1, warm, paused="quiet hours")
    assert choose([paused_remote], "m") is None
    assert [p.peer_id for p in warm_targets([here, there], "m", 1)] == ["b"]


DIGEST = "sha256:" + "ab" * 32


def _holding(pid: str, *, free: int = 100, memory: int = 50, **kw: object) -> PeerView:
    m = PeerModel("m", ModelState.COLD, memory_bytes=memory, digest=DIGEST)
    return PeerView(pid, f"{pid}:1", False, 0.001, free, {"m": m}, **kw)  # type: ignore[arg-type]


def test_replicas_go_to_open_peers_with_the_most_room() -> None:
    holder = _holding("a")
    small, big = peer("b", free=60), peer("c", free=400)
    paused = PeerView("d", "d:1", False, 0.001, 900, {}, paused="owner")
    busy = PeerView("e", "e:1", False, 0.001, 800, {}, yielding="cpu")
    tight = peer("f", free=40)  # less than the model needs
    peers = [holder, small, big, paused, busy, tight]
    assert [p.peer_id for p in replica_targets(peers, "m", 3)] == ["c", "b"]
    assert [p.peer_id for p in replica_targets(peers, "m", 2)] == ["c"]
    assert replica_targets(peers, "m", 1) == []
    assert replica_targets([small, big], "m", 3) == []  # nobody holds it: nothing to copy


def test_pulls_under_way_count_as_copies() -> None:
    pulling = PeerView("b", "b:1", False, 0.001, 500, {}, pulling=frozenset({"m"}))
    peers = [_holding("a"), pulling, peer("c", free=300), peer("d", free=200)]
    assert [p.peer_id for p in replica_targets(peers, "m", 3)] == ["c"]
    assert replica_targets(peers, "m", 2) == []


def test_a_replica_is_pulled_from_an_open_warm_holder_first() -> None:
    target = peer("t", free=500)
    paused_warm = PeerView(
        "a",
        "a:1",
        False,
        0.001,
        0,
        {"m": PeerModel("m", ModelState.WARM, digest=DIGEST)},
        paused="owner",
    )
    cold = _holding("b")
    warm = PeerView(
        "c", "c:1", False, 0.001, 0, {"m": PeerModel("m", ModelState.WARM, digest=DIGEST)}
    )
    assert replica_source([paused_warm, cold, warm, target], "m", target) is warm
    assert replica_source([paused_warm, cold, target], "m", target) is cold
    assert replica_source([paused_warm, target], "m", target) is paused_warm
    assert replica_source([target], "m", target) is None


def _prefix_peer(
    pid: str, prints: tuple[int, ...], active: int = 0, local: bool = False
) -> PeerView:
    m = PeerModel(
        "m", ModelState.WARM, active=active, slots=1, service_seconds=0.5,
        prefix_prints=prints, prefill_rate=1000.0,
    )  # fmt: skip
    return PeerView(pid, f"{pid}:1", local, 0.001, 100, {"m": m})


def test_a_request_goes_where_its_prefix_is_warm_unless_that_peer_is_busier_by_more() -> None:
    from meshd.prefixes import canonical, fingerprints

    system = canonical("You are a helpful assistant. " * 200)  # ~1,500 tokens of prefix
    request = system + " What is the capital of France?"
    shape = PromptShape(len(request), tuple(fingerprints(request)))
    holder = _prefix_peer("holder", tuple(fingerprints(system)))
    other = _prefix_peer("other", (), local=True)
    decision = choose([other, holder], "m", prompt=shape)
    assert decision is not None and decision.peer.peer_id == "holder"
    assert decision.reason.startswith("prefix warm on holder, ~1,4")
    assert "tokens cached" in decision.reason
    # Busier by three requests (1.5 s of waiting) than the ~1.5 s of prefill it saves: not worth it.
    busy = _prefix_peer("holder", tuple(fingerprints(system)), active=4)
    decision = choose([other, busy], "m", prompt=shape)
    assert decision is not None and decision.peer.peer_id == "other"
    assert prefill(busy, "m", shape).cached > 1400 and prefill(other, "m", shape).cached == 0


def test_without_a_prompt_shape_routing_is_as_before() -> None:
    holder = _prefix_peer("holder", (1, 2, 3))
    other = _prefix_peer("other", (), local=True)
    decision = choose([other, holder], "m")
    assert decision is not None and decision.peer.local


def test_the_shared_prefill_rate_is_the_median_of_measured_ones() -> None:
    from meshd.routing import DEFAULT_PREFILL_RATE, Prefill, shared_rate

    def rated(*rates: float) -> list[PeerView]:
        return [
            PeerView(
                f"p{i}",
                "a:1",
                False,
                0.0,
                0,
                {"m": PeerModel("m", ModelState.WARM, prefill_rate=r)},
            )
            for i, r in enumerate(rates)
        ]

    assert shared_rate(rated(0, 0.5, 0.7, 300), "m") == 0.7  # unmeasured (0) left out
    assert shared_rate(rated(1, 2, 3, 4), "m") == 3
    assert shared_rate(rated(0, 0), "m") == DEFAULT_PREFILL_RATE
    assert prefill(rated(5)[0], "m", None) == Prefill(0, 0, 0.0)


def test_a_yielding_peer_serves_only_when_no_other_can() -> None:
    quick = PeerView("y", "y:1", False, 0.0, 100, {"m": WARM}, yielding="cpu")
    slower = PeerView("o", "o:1", False, 0.05, 100, {"m": WARM})
    decision = choose([quick, slower], "m")
    assert decision is not None and decision.peer.peer_id == "o"
    decision = choose([quick], "m")
    assert decision is not None and decision.peer.peer_id == "y"


def test_replica_edges_room_exactly_and_sources_that_hold_it() -> None:
    holder = _holding("a", memory=50)
    exact = peer("b", free=50)
    assert [p.peer_id for p in replica_targets([holder, exact], "m", 2)] == ["b"]
    target = peer("t", free=500)
    assert replica_source([peer("x"), target], "m", target) is None
    yielding_warm = PeerView(
        "w",
        "w:1",
        False,
        0.0,
        0,
        {"m": PeerModel("m", ModelState.WARM, digest=DIGEST)},
        yielding="cpu",
    )
    cold = _holding("c")
    assert replica_source([yielding_warm, cold, target], "m", target) is cold


# -- residency: a warm model the OS paged out pays its page-in -----------------------------

MIB = 2**20


def resident(
    share: float, *, read_rate: float = 100 * MIB, warm: bool = True, **load: float
) -> PeerModel:
    """Model m (100 MiB) with this share of its file in memory, on a disk of read_rate."""
    size = 100 * MIB
    return PeerModel(
        "m",
        ModelState.WARM if warm else ModelState.COLD,
        size_bytes=size,
        resident_bytes=int(share * size),
        read_rate=read_rate,
        service_seconds=0.1,
        **load,  # type: ignore[arg-type]
    )


def test_the_page_in_is_the_bytes_not_in_memory_over_the_read_rate() -> None:
    assert math.isclose(resident(0.25).page_in_seconds(), 0.75)  # 75 MiB at 100 MiB/s
    assert resident(1.0).page_in_seconds() == 0.0
    unknown = PeerModel("m", ModelState.WARM, size_bytes=100 * MIB)
    assert unknown.page_in_seconds() == 0.0 and not unknown.paged_out
    assert resident(0.5).paged_out and not resident(0.95).paged_out
    assert not resident(0.1, warm=False).paged_out  # a cold model is not "paged out"


def test_routing_prefers_the_peer_where_the_model_is_really_resident() -> None:
    evicted = peer("evicted", local=True, rtt=0, m=resident(0.03))
    kept = peer("kept", m=resident(1.0))
    for seed in range(20):
        decision = choose([evicted, kept], "m", rng=random.Random(seed))
        assert decision is not None and decision.peer.peer_id == "kept"
        assert "resident there, paged out on this peer (3% resident" in decision.reason


def test_a_busy_resident_peer_loses_to_a_quick_page_in() -> None:
    """The page-in is a cost like any other: a tiny one loses to a long queue."""
    nearly = peer("nearly", m=resident(0.85, read_rate=10_000 * MIB))  # 1.5 ms to page in
    busy = peer("busy", m=resident(1.0, active=4, slots=1))
    decision = choose([nearly, busy], "m", rng=random.Random(1))
    assert decision is not None and decision.peer.peer_id == "nearly"
    assert "paged out (85% resident), ~2 ms to page in" in decision.reason


def test_the_cold_choice_says_whether_the_load_reads_the_page_cache_or_the_disk() -> None:
    cached = choose([peer("p", m=resident(0.99, warm=False))], "m")
    assert cached is not None and "loads from the page cache (99% of its file" in cached.reason
    on_disk = choose([peer("p", m=resident(0.0, warm=False))], "m")
    assert on_disk is not None and "loads from disk (~1,000 ms to read 100%)" in on_disk.reason
    unknown = choose([peer("p", m=COLD)], "m")
    assert unknown is not None and "loads" not in unknown.reason


# -- one replica rule: what counts as a copy -------------------------------------------------


def _holder(pid: str, state: ModelState = ModelState.WARM, **flags: str) -> PeerView:
    return PeerView(pid, f"{pid}:1", False, 0.001, 0, {"m": PeerModel("m", state)}, **flags)


def test_a_paused_or_yielding_holder_is_no_copy_for_placement_or_topping_up() -> None:
    paused = _holder("a", paused="its owner")
    yielding = _holder("y", yielding="memory pressure")
    open_warm = _holder("b")
    room = peer("c", free=500)
    peers = [paused, yielding, open_warm, room]
    assert [p.peer_id for p in copies(peers, "m")] == ["b"]
    assert warm_copies(peers, "m") == 1
    # Two copies asked: the paused and yielding holders do not count, so c pulls one; the
    # auto_replicas count agrees (it would otherwise ask, again and again, for nothing).
    assert [p.peer_id for p in replica_targets(peers, "m", 2)] == ["c"]
    assert replica_targets(peers, "m", 1) == []


def test_warm_copies_count_loading_and_pulls_not_cold_holders() -> None:
    pulling = PeerView("p", "p:1", False, 0.001, 500, {}, pulling=frozenset({"m"}))
    peers = [_holder("a"), _holder("b", ModelState.LOADING), _holder("c", ModelState.COLD), pulling]
    assert len(copies(peers, "m")) == 4
    assert warm_copies(peers, "m") == 3


def test_a_model_served_from_a_path_is_no_source_for_a_copy() -> None:
    from_path = PeerView("a", "a:1", False, 0.001, 0, {"m": PeerModel("m", ModelState.WARM)})
    target = peer("t", free=500)
    assert replica_source([from_path, target], "m", target) is None
    assert replica_source([from_path, _holding("b"), target], "m", target).peer_id == "b"
