"""The wire between the daemon and a runner: length-prefixed JSON frames over a socketpair.

Each frame is a 4-byte big-endian length and a JSON object with an "op". Both sides bound the
frame size, and the daemon treats every frame as untrusted: a runner hosts llama.cpp, which
parses model files. JSON rather than pickle, so a compromised runner can send only data.

daemon → runner: load, generate, cancel, exit.
runner → daemon: loaded (one per slot, while loading), ready, failed, progress (prefill),
chunk (the last one has "finish"), error (ends a request), log.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from meshd.errors import InvalidRequest, MeshdError
from meshd.types import ChatMessage, Chunk, FinishReason, GenerateRequest, Sampling

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 8 * 2**20  # a request is bounded by max_message_bytes (1 MiB default) first


class ProtocolError(MeshdError):
    """A frame that is too large, not JSON, or not of a known shape."""


@dataclass(frozen=True)
class LoadOptions:
    """How the runner builds the model's slots."""

    path: str
    slots: int
    context: int
    threads: int
    batch: int
    use_mmap: bool
    chat_template: str = ""  # Jinja text for models whose file has none ("": the file's own)
    gpu_layers: int = -1  # layers offloaded to the GPU (-1: all where the build can, else 0)
    lock_memory: bool = False  # lock the weights in memory (mlock), as far as the OS allows


def encode(message: dict[str, Any]) -> bytes:
    """One frame."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(body)} bytes is over {MAX_FRAME_BYTES}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a header announces; refuses one over the bound."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes is over {MAX_FRAME_BYTES}")
    return int(length)


def decode(body: bytes) -> dict[str, Any]:
    """The message in a frame body."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError("frame has no op")
    return message


# -- requests ------------------------------------------------------------------------------


def request_to_wire(request: GenerateRequest) -> dict[str, Any]:
    """A GenerateRequest as a JSON object."""
    s = request.sampling
    return {
        "prompt": request.prompt,
        "messages": [[m.role, m.content] for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "seed": s.seed,
        "stop": list(s.stop),
        "prefill_only": request.prefill_only,
    }


def request_from_wire(data: dict[str, Any], model: str = "") -> GenerateRequest:
    """The GenerateRequest a JSON object describes (the daemon validated it before sending)."""
    sampling = Sampling(
        temperature=float(data["temperature"]),
        top_p=float(data["top_p"]),
        top_k=int(data["top_k"]),
        seed=None if data["seed"] is None else int(data["seed"]),
        stop=tuple(str(s) for s in data["stop"]),
    )
    return GenerateRequest(
        model=model,
        prompt=data["prompt"],
        messages=tuple(ChatMessage(str(r), str(c)) for r, c in data["messages"]),
        max_tokens=int(data["max_tokens"]),
        sampling=sampling,
        prefill_only=bool(data.get("prefill_only", False)),
    )


# -- results -------------------------------------------------------------------------------


def chunk_to_wire(request_id: int, chunk: Chunk) -> dict[str, Any]:
    """A chunk of text for one request."""
    message: dict[str, Any] = {
        "op": "chunk",
        "id": request_id,
        "text": chunk.text,
        "tokens": chunk.tokens,
    }
    if chunk.finish_reason is not None:
        message["finish"] = chunk.finish_reason.value
        message["prompt_tokens"] = chunk.prompt_tokens
        message["cached_tokens"] = chunk.cached_tokens
    return message


def chunk_from_wire(message: dict[str, Any]) -> Chunk:
    """The Chunk in a chunk frame; refuses fields of the wrong type."""
    text, tokens = message.get("text"), message.get("tokens")
    finish, prompt_tokens = message.get("finish"), message.get("prompt_tokens", 0)
    cached = message.get("cached_tokens", 0)
    if (
        not isinstance(text, str)
        or not isinstance(tokens, int)
        or not isinstance(prompt_tokens, int)
        or not isinstance(cached, int)
    ):
        raise ProtocolError("chunk frame with fields of the wrong type")
    if not _count(tokens) or not _count(prompt_tokens) or not _count(cached):
        raise ProtocolError("chunk frame with counts out of range")
    if cached > prompt_tokens:
        raise ProtocolError("chunk frame with more cached tokens than prompt tokens")
    try:
        reason = None if finish is None else FinishReason(finish)
    except ValueError:
        raise ProtocolError(f"chunk frame with an unknown finish {str(finish)[:32]!r}") from None
    return Chunk(text, tokens, reason, prompt_tokens, cached_tokens=cached)


def error_to_wire(request_id: int, error: MeshdError) -> dict[str, Any]:
    """A typed failure that ends one request (a refusal of the request as InvalidRequest,
    whichever kind of it the runner raised)."""
    kind = "InvalidRequest" if isinstance(error, InvalidRequest) else type(error).__name__
    message: dict[str, Any] = {"op": "error", "id": request_id, "kind": kind, "message": str(error)}
    if isinstance(error, InvalidRequest):
        message["field"] = error.field
    return message


def error_from_wire(message: dict[str, Any], allowed: dict[str, type[MeshdError]]) -> MeshdError:
    """The error an error frame names, if it is one a runner may raise; else a MeshdError."""
    text = str(message.get("message", ""))[:2000]
    kind = allowed.get(str(message.get("kind")))
    if kind is InvalidRequest:
        return InvalidRequest(text, field=str(message.get("field", ""))[:64])
    if kind is None:
        return MeshdError(text)
    return kind(text)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31
