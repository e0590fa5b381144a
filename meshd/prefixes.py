"""Prompt prefixes as the daemon and the router compare them, without a tokenizer.

A request's *canonical text* is its prompt, or its messages as role and content with
separators, so that a warmed prefix (a system prompt, a document) is a string prefix of the
canonical text of every later request that starts with it. Slots are matched on it (the
runner then reuses the exact tokens llama.cpp holds), and peers announce *fingerprints* of
what their slots hold: a chained hash at every BLOCK_CHARS characters, a few dozen numbers
per model, from which any peer's router can tell how much of a request's text is warm there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from meshd.errors import InvalidRequest, quoted
from meshd.types import ChatMessage, GenerateRequest

BLOCK_CHARS = 256  # one fingerprint per this many characters of canonical text
MAX_FINGERPRINTS = 128  # per model in a heartbeat: ~32k characters of warm text
CHARS_PER_TOKEN = 4.0  # the router's guess, for text it cannot tokenize
MAX_PREFIX_FILE_BYTES = 1024 * 1024
_PROMPT, _TURN, _ROLE = "\x1d", "\x1e", "\x1f"


def canonical(prompt: str | None, messages: Sequence[ChatMessage] = ()) -> str:
    """The text that slot matching and fingerprints compare."""
    if messages:
        return "".join(f"{_TURN}{m.role}{_ROLE}{m.content}" for m in messages)
    return _PROMPT + (prompt or "")


def canonical_of(request: GenerateRequest) -> str:
    """canonical() of a request."""
    return canonical(request.prompt, request.messages)


def shared_chars(a: str, b: str) -> int:
    """Length of the longest common prefix of a and b."""
    limit = min(len(a), len(b))
    if a[:limit] == b[:limit]:
        return limit
    low, high = 0, limit  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def fingerprints(text: str, limit: int = MAX_FINGERPRINTS) -> list[int]:
    """Chained 64-bit hashes of text at every BLOCK_CHARS boundary (the first `limit`)."""
    prints: list[int] = []
    state = b""
    for end in range(BLOCK_CHARS, min(len(text), limit * BLOCK_CHARS) + 1, BLOCK_CHARS):
        block = text[end - BLOCK_CHARS : end].encode("utf-8", "surrogatepass")
        state = hashlib.blake2b(state + block, digest_size=8).digest()
        prints.append(int.from_bytes(state, "big"))
    return prints


def warm_chars(request_prints: Sequence[int], held: Iterable[int]) -> int:
    """Characters of a request's text that a peer holding `held` fingerprints has warm: up to
    the last block boundary whose chained hash it announced."""
    have = set(held)
    for blocks in range(len(request_prints), 0, -1):
        if request_prints[blocks - 1] in have:
            return blocks * BLOCK_CHARS
    return 0


def tokens_of(chars: int) -> int:
    """The router's estimate of the tokens in `chars` characters."""
    return round(chars / CHARS_PER_TOKEN)


def read_prefix_file(path: Path) -> str:
    """A prompt prefix from a file: UTF-8 text, at most 1 MiB, not empty."""
    name = quoted(str(path))
    try:
        if not path.is_file():
            raise InvalidRequest(f"cannot read {name}: not a file", "prefix")
        if path.stat().st_size > MAX_PREFIX_FILE_BYTES:
            raise InvalidRequest(f"{name} is over 1 MiB: not a prompt prefix", "prefix")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {name} as UTF-8 text: {exc}", "prefix") from None
    if not text.strip():
        raise InvalidRequest(f"{name} is empty", "prefix")
    return text
