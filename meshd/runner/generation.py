"""A request in a runner: the job the scheduler runs, its prompt as tokens (chat rendered
through the model's template), and token pieces as bytes.

Runs inside a runner process only: this is where chat templates execute.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from meshd.errors import Cancelled, InvalidRequest
from meshd.runner.chatrender import ChatTemplate
from meshd.runner.savedstate import SavedState
from meshd.types import Chunk, GenerateRequest

Emit = Callable[[Chunk], None]


@dataclass
class Job:
    """One request on one sequence; `cancel` is checked before every decode step."""

    request: GenerateRequest
    cancel: threading.Event = field(default_factory=threading.Event)
    # Called between prefill chunks, so that the daemon sees a long prompt is progressing.
    progress: Callable[[], None] = lambda: None
    # A pinned prefix's state on disk: restored instead of evaluated when it matches, saved
    # after it was evaluated.
    saved: SavedState | None = None

    def check(self) -> None:
        """Raise Cancelled once the daemon cancelled this job."""
        if self.cancel.is_set():
            raise Cancelled("generation cancelled")


class Vocabulary:
    """Token pieces and end-of-generation checks for one loaded model, cached."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.vocab = llm._model.vocab
        self.pieces: dict[int, bytes] = {}
        self.buffer = ctypes.create_string_buffer(256)

    def piece(self, token: int) -> bytes:
        cached = self.pieces.get(token)
        if cached is None:
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self.buffer, 256, 0, False)
            cached = self.buffer.raw[: max(n, 0)]
            self.pieces[token] = cached
        return cached

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))


# A next turn's content, for rendering a chat prefix: the text before it is what any later
# request with the same messages first renders, whatever its own next turn says.
_NEXT_TURN = "\ue000meshd-next-turn\ue000"


def prompt_tokens(
    llm: Any, request: GenerateRequest, cancelled: Callable[[], bool] = lambda: False
) -> list[int]:
    """Tokens of the prompt, or of the chat rendered through the model's own template (for a
    prefill_only chat: the rendering up to the next turn's content)."""
    if not request.messages:
        assert request.prompt is not None
        tokens: list[int] = llm.tokenize(request.prompt.encode("utf-8"), add_bos=True)
        return tokens
    rendered, added_special = _render_chat(llm, request, cancelled)
    result: list[int] = llm.tokenize(
        rendered.encode("utf-8"), add_bos=not added_special, special=True
    )
    return result


def _render_chat(
    llm: Any, request: GenerateRequest, cancelled: Callable[[], bool]
) -> tuple[str, bool]:
    """The chat rendered through the model's template (compiled once per context), within its
    time and size bounds; and whether the rendering holds the special tokens (it always may:
    a template writes its own BOS)."""
    if not llm.chat_template:
        raise InvalidRequest(
            "this model has no chat template and none is known for its family: send a prompt "
            "instead, or name one (chat_template in its [models.NAME] entry of meshd.toml)",
            field="messages",
        )
    if llm.chat_renderer is None:
        llm.chat_renderer = ChatTemplate(
            llm.chat_template,
            bos_token=_token_text(llm, llm.token_bos()),
            eos_token=_token_text(llm, llm.token_eos()),
        )
    chat: Any = [{"role": m.role, "content": m.content} for m in request.messages]
    if request.prefill_only:  # a turn after the prefix, so that it renders as it will then
        after = "assistant" if request.messages[-1].role == "user" else "user"
        chat.append({"role": after, "content": _NEXT_TURN})
    text = llm.chat_renderer.render(chat, cancelled)
    if request.prefill_only:
        text = text.partition(_NEXT_TURN)[0]
    return text, True


def _token_text(llm: Any, token: int) -> str:
    return "" if token < 0 else llm._model.token_get_text(token)
