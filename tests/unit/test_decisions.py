"""Pure decision functions: eviction, expiry, stop sequences, request checks, status mapping."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from meshd import errors
from meshd.engine.eviction import Resident, expired, plan_eviction, warm_until
from meshd.engine.runnerproc import _merge_backlog
from meshd.engine.validate import Limits, validate_request
from meshd.rpc.status import error_from_rpc, status_of, trailers_of
from meshd.runner.stops import StopMatcher
from meshd.types import Chunk, FinishReason, GenerateRequest, Sampling


def resident(
    name: str,
    memory: int,
    last_used: float,
    *,
    pinned: bool = False,
    busy: bool = False,
    warm_until: float = 0.0,
) -> Resident:
    return Resident(name, memory, pinned, busy, last_used, warm_until)


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


class TestStopMatcher:
    def test_text_passes_through_without_stops(self) -> None:
        assert StopMatcher(()).feed("abc") == ("abc", False)

    def test_holds_back_a_possible_start_then_releases_it(self) -> None:
        stops = StopMatcher(("END",))
        assert stops.feed("hello E") == ("hello ", False)
        assert stops.feed("x") == ("Ex", False)

    def test_cuts_at_a_stop_split_across_pieces(self) -> None:
        stops = StopMatcher(("END", "\n\n"))
        assert stops.feed("one E") == ("one ", False)
        assert stops.feed("N") == ("", False)
        assert stops.feed("D and more") == ("", True)

    def test_earliest_stop_wins(self) -> None:
        assert StopMatcher(("b", "a")).feed("xxabxx") == ("xx", True)

    def test_flush_returns_what_was_held(self) -> None:
        stops = StopMatcher(("END",))
        stops.feed("tail EN")
        assert stops.flush() == "EN"


class TestValidate:
    limits = Limits(max_tokens=1000, max_prompt_bytes=50)

    def test_a_good_request_passes(self) -> None:
        validate_request(GenerateRequest("m", "hi", max_tokens=1000), self.limits)

    @pytest.mark.parametrize(
        ("request_", "field"),
        [
            (GenerateRequest("m", "", max_tokens=5), "prompt"),
            (GenerateRequest("m", "x" * 51, max_tokens=5), "prompt"),
            (GenerateRequest("m", "hi", max_tokens=1001), "max_tokens"),
            (GenerateRequest("m", "hi", sampling=Sampling(temperature=math.nan)), "temperature"),
            (GenerateRequest("m", "hi", sampling=Sampling(top_p=1.5)), "top_p"),
            (GenerateRequest("m", "hi", sampling=Sampling(seed=2**40)), "seed"),
            (GenerateRequest("m", "hi", sampling=Sampling(stop=("a",) * 9)), "stop"),
        ],
    )
    def test_each_bad_field_is_named(self, request_: GenerateRequest, field: str) -> None:
        with pytest.raises(errors.InvalidRequest) as caught:
            validate_request(request_, self.limits)
        assert caught.value.field == field


class FakeRpcError(grpc.RpcError):
    """The three methods a failed gRPC call offers, for a pure mapping test."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple = ()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return self._trailers


class TestStatusMapping:
    @pytest.mark.parametrize(
        "error_type",
        sorted(
            (t for t in errors.error_types().values() if t is not errors.MeshdError),
            key=lambda t: t.__name__,
        ),
    )
    def test_every_error_round_trips_as_its_own_type(self, error_type: type) -> None:
        sent = error_type("boom")
        received = error_from_rpc(FakeRpcError(status_of(sent), "boom", trailers_of(sent)))
        assert type(received) is error_type and str(received) == "boom"

    def test_invalid_request_keeps_its_field(self) -> None:
        sent = errors.InvalidRequest("bad", field="top_k")
        received = error_from_rpc(FakeRpcError(status_of(sent), "bad", trailers_of(sent)))
        assert isinstance(received, errors.InvalidRequest) and received.field == "top_k"

    def test_foreign_statuses_map_by_code(self) -> None:
        too_big = FakeRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 4)"
        )
        assert isinstance(error_from_rpc(too_big), errors.RequestTooLarge)
        down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Connection refused")
        assert "cannot reach meshd at h:1" in str(error_from_rpc(down, "h:1"))
        odd = FakeRpcError(grpc.StatusCode.DATA_LOSS, "?")
        assert type(error_from_rpc(odd)) is errors.MeshdError


class TestMergeBacklog:
    """Chunks that piled up while the consumer was busy go out as one message."""

    @staticmethod
    def _queue(*items: object) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        return queue

    async def test_nothing_waiting_passes_the_chunk_through(self) -> None:
        chunk = Chunk("a", 1)
        assert _merge_backlog(chunk, self._queue()) is chunk

    async def test_waiting_chunks_fold_into_one_up_to_the_last(self) -> None:
        backlog = self._queue(Chunk("b", 2), Chunk("c", 3, FinishReason.LENGTH, 5), Chunk("x", 9))
        merged = _merge_backlog(Chunk("a", 1), backlog)
        assert merged == Chunk("abc", 3, FinishReason.LENGTH, 5)
        assert backlog.qsize() == 1, "nothing after the last chunk is taken"

    async def test_an_error_in_the_backlog_wins(self) -> None:
        error = RuntimeError("slot failed")
        assert _merge_backlog(Chunk("a", 1), self._queue(Chunk("b", 2), error)) is error
