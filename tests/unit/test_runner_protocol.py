"""meshd/runner/protocol.py: frames between the daemon and a runner, bounded and typed."""

from __future__ import annotations

import pytest

from meshd.errors import Cancelled, InvalidRequest, MeshdError, ModelUnavailable
from meshd.runner import protocol
from meshd.runner.protocol import MAX_FRAME_BYTES, ProtocolError
from meshd.types import ChatMessage, Chunk, FinishReason, GenerateRequest, Sampling

ALLOWED = {c.__name__: c for c in (InvalidRequest, Cancelled, ModelUnavailable, MeshdError)}


def roundtrip(message: dict) -> dict:
    frame = protocol.encode(message)
    length = protocol.frame_length(frame[: protocol.HEADER.size])
    assert length == len(frame) - protocol.HEADER.size
    return protocol.decode(frame[protocol.HEADER.size :])


def test_a_request_survives_the_wire() -> None:
    request = GenerateRequest(
        model="m",
        messages=(ChatMessage("user", "héllo ✓"),),
        max_tokens=7,
        sampling=Sampling(temperature=0.0, top_p=0.5, top_k=3, seed=9, stop=("\n", "END")),
    )
    wire = roundtrip({"op": "generate", "request": protocol.request_to_wire(request)})
    assert protocol.request_from_wire(wire["request"], "m") == request


def test_a_prompt_request_without_a_seed() -> None:
    request = GenerateRequest(model="m", prompt="Once", max_tokens=1)
    assert protocol.request_from_wire(protocol.request_to_wire(request), "m") == request


def test_chunks_survive_the_wire() -> None:
    middle, last = Chunk("ab", 2), Chunk("c", 3, FinishReason.STOP, prompt_tokens=4)
    assert protocol.chunk_from_wire(roundtrip(protocol.chunk_to_wire(1, middle))) == middle
    assert protocol.chunk_from_wire(roundtrip(protocol.chunk_to_wire(1, last))) == last


@pytest.mark.parametrize(
    "bad",
    [
        {"text": 5, "tokens": 1},
        {"text": "x", "tokens": "1"},
        {"text": "x", "tokens": True},
        {"text": "x", "tokens": -1},
        {"text": "x", "tokens": 2**31},
        {"text": "x", "tokens": 1, "prompt_tokens": 1.5},
        {"text": "x", "tokens": 1, "finish": "exploded"},
    ],
)
def test_a_chunk_of_the_wrong_shape_is_refused(bad: dict) -> None:
    with pytest.raises(ProtocolError):
        protocol.chunk_from_wire({"op": "chunk", "id": 1, **bad})


def test_counts_at_the_edge_of_the_range_pass() -> None:
    chunk = protocol.chunk_from_wire({"op": "chunk", "text": "", "tokens": 2**31 - 1})
    assert chunk.tokens == 2**31 - 1


def test_errors_keep_their_type_and_field() -> None:
    wire = roundtrip(protocol.error_to_wire(3, InvalidRequest("too long", field="prompt")))
    error = protocol.error_from_wire(wire, ALLOWED)
    assert type(error) is InvalidRequest and error.field == "prompt" and str(error) == "too long"
    cancelled = protocol.error_from_wire(protocol.error_to_wire(3, Cancelled("stop")), ALLOWED)
    assert type(cancelled) is Cancelled


def test_an_error_kind_a_runner_may_not_raise_becomes_a_plain_error() -> None:
    wire = {"op": "error", "id": 1, "kind": "AccessDenied", "message": "x" * 5000}
    error = protocol.error_from_wire(wire, ALLOWED)
    assert type(error) is MeshdError and len(str(error)) == 2000


def test_a_frame_over_the_bound_is_refused_both_ways() -> None:
    with pytest.raises(ProtocolError, match="over"):
        protocol.encode({"op": "log", "text": "x" * MAX_FRAME_BYTES})
    header = protocol.HEADER.pack(MAX_FRAME_BYTES + 1)
    with pytest.raises(ProtocolError, match="over"):
        protocol.frame_length(header)
    assert protocol.frame_length(protocol.HEADER.pack(MAX_FRAME_BYTES)) == MAX_FRAME_BYTES


@pytest.mark.parametrize("body", [b"\xff\xfe", b"not json", b"[1, 2]", b'{"id": 1}', b'{"op": 5}'])
def test_a_frame_that_is_not_a_message_is_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(body)
