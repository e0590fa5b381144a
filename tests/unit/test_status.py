"""meshd/rpc/status.py: the one table between meshd errors and gRPC status codes."""

from __future__ import annotations

import grpc
import pytest

from meshd import errors
from meshd.rpc.status import error_from_rpc, status_of, trailers_of


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
