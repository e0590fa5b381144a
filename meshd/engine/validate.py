"""Request checks that need no model: done before a request takes a place in any queue."""

from __future__ import annotations

import math
from dataclasses import dataclass

from meshd.errors import InvalidRequest, quoted
from meshd.types import GenerateRequest

MAX_LEASE_S = 7 * 86400.0  # a warm lease of up to a week
MAX_REPLICAS = 16
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_STOP_SEQUENCES = 8
MAX_STOP_BYTES = 256


@dataclass(frozen=True)
class Limits:
    """The caps a peer enforces on every request."""

    max_tokens: int = 4096
    max_prompt_bytes: int = 256 * 1024


def validate_request(request: GenerateRequest, limits: Limits) -> None:
    """Raise InvalidRequest naming the first field that is out of range."""
    _check_input(request, limits)
    if not 1 <= request.max_tokens <= limits.max_tokens:
        raise InvalidRequest(
            f"max_tokens must be between 1 and {limits.max_tokens}, got {request.max_tokens}",
            field="max_tokens",
        )
    sampling = request.sampling
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise InvalidRequest(
            f"temperature must be a finite number ≥ 0, got {sampling.temperature}",
            field="temperature",
        )
    if not math.isfinite(sampling.top_p) or not 0 < sampling.top_p <= 1:
        raise InvalidRequest(f"top_p must be in (0, 1], got {sampling.top_p}", field="top_p")
    if sampling.top_k < 0:
        raise InvalidRequest(f"top_k must be ≥ 0, got {sampling.top_k}", field="top_k")
    if sampling.seed is not None and not 0 <= sampling.seed < 2**32:
        raise InvalidRequest("seed must fit in 32 bits", field="seed")
    if len(sampling.stop) > MAX_STOP_SEQUENCES or any(
        not s or len(s.encode()) > MAX_STOP_BYTES for s in sampling.stop
    ):
        raise InvalidRequest(
            f"stop takes up to {MAX_STOP_SEQUENCES} non-empty sequences "
            f"of ≤ {MAX_STOP_BYTES} bytes",
            field="stop",
        )


def _check_input(request: GenerateRequest, limits: Limits) -> None:
    if request.prompt is not None and request.messages:
        raise InvalidRequest("send a prompt or chat messages, not both", field="prompt")
    if request.messages:
        for i, message in enumerate(request.messages):
            if message.role not in CHAT_ROLES:
                raise InvalidRequest(
                    f"messages[{i}].role must be one of {', '.join(sorted(CHAT_ROLES))}, "
                    f"got {quoted(message.role)}",
                    field="messages",
                )
        size = sum(len(m.content.encode()) for m in request.messages)
        field = "messages"
    else:
        if not request.prompt:
            raise InvalidRequest("prompt is empty", field="prompt")
        size, field = len(request.prompt.encode()), "prompt"
    if size > limits.max_prompt_bytes:
        raise InvalidRequest(
            f"{field} is {size} bytes; this peer accepts at most {limits.max_prompt_bytes}",
            field=field,
        )


def validate_warm(lease: float, replicas: int) -> None:
    """Raise InvalidRequest unless the lease is 0 (the peer's keep-alive) or a finite number of
    seconds up to MAX_LEASE_S, and replicas is at most MAX_REPLICAS."""
    if not (lease == 0 or (math.isfinite(lease) and 0 < lease <= MAX_LEASE_S)):
        raise InvalidRequest(
            f"lease_seconds must be 0 (the peer's keep-alive) or in (0, {MAX_LEASE_S:.0f}], "
            f"got {lease}",
            field="lease_seconds",
        )
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidRequest(
            f"replicas must be between 0 and {MAX_REPLICAS}, got {replicas}", field="replicas"
        )
