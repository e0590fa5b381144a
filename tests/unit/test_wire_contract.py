"""The generated code in meshd/v1 is exactly what proto/ generates, and the conversions hold."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from meshd.rpc import convert
from meshd.types import (
    ChatMessage,
    Chunk,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    ModelState,
    Sampling,
    WarmResult,
)

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    fresh = {p.name: p.read_bytes() for p in gen_proto.generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in (ROOT / "meshd" / "v1").glob("*.py*")}
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run: python scripts/gen_proto.py  (stale: {stale})"


def test_requests_round_trip() -> None:
    plain = GenerateRequest(
        "m", "hi", max_tokens=7, sampling=Sampling(0.0, 0.5, 3, seed=9, stop=("x",)), hops=2
    )
    chat = GenerateRequest("m", None, (ChatMessage("user", "hi"),), 5)
    for request in (plain, chat):
        assert convert.request_from_pb(convert.request_to_pb(request)) == request


def test_absent_sampling_fields_take_defaults() -> None:
    message = convert.request_to_pb(GenerateRequest("m", "hi"))
    message.sampling.Clear()
    assert convert.request_from_pb(message).sampling == Sampling()


def test_replies_round_trip() -> None:
    chunk = Chunk("t", 3, FinishReason.STOP, 4, "peer-1", "local")
    assert convert.chunk_from_pb(convert.chunk_to_pb(chunk)) == chunk
    assert convert.chunk_from_pb(convert.chunk_to_pb(Chunk("t", 1))).finish_reason is None
    warm = WarmResult("m", ModelState.LOADING, 1.5, 99.0, "peer-1")
    assert convert.warm_from_pb(convert.warm_to_pb(warm)) == warm
    info = ModelInfo(
        "m", "/p", 1, ModelState.FAILED, True, 2, 3, 4.0, 5.0, "llama", "Q4", 6, "x", "sha256:d",
        runner_pid=7, runner_rss=8, restarts=9,
    )  # fmt: skip
    assert convert.model_from_pb(convert.model_to_pb(info)) == info
