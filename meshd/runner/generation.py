"""The token loop that runs on a slot's worker thread: prompt → tokens → text pieces.

Runs inside a runner process only: this is where llama.cpp and chat templates execute.
"""

from __future__ import annotations

import codecs
import ctypes
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from meshd.errors import Cancelled, InvalidRequest
from meshd.runner import savedstate
from meshd.runner.chatrender import ChatTemplate
from meshd.runner.savedstate import SavedState
from meshd.runner.stops import StopMatcher
from meshd.types import Chunk, FinishReason, GenerateRequest

Emit = Callable[[Chunk], None]


@dataclass
class Job:
    """One request on one slot; `cancel` is checked before every token and prefill batch."""

    request: GenerateRequest
    cancel: threading.Event = field(default_factory=threading.Event)
    # Called between prefill batches, so that the daemon sees a long prompt is progressing.
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


def cached_prefix(llm: Any, tokens: list[int]) -> int:
    """How many leading tokens of `tokens` the context already holds (llama.cpp re-evaluates
    at least the last one of a prompt)."""
    held = llm.input_ids[: llm.n_tokens]
    shared = 0
    for have, want in zip(held, tokens, strict=False):
        if have != want:
            break
        shared += 1
    return min(shared, max(len(tokens) - 1, 0))


def run_prefill(llm: Any, job: Job, emit: Emit) -> None:
    """Evaluate the prompt into the context and keep it (a warmed prefix); emits one last
    chunk with the prompt's tokens and how many were already there: all of them when it was
    restored from a saved state (an evaluation always evaluates at least one)."""
    tokens = prompt_tokens(llm, job.request, job.cancel.is_set)
    if len(tokens) >= llm.n_ctx():
        raise InvalidRequest(
            f"prefix is {len(tokens)} tokens; the context holds {llm.n_ctx()}", field="prefix"
        )
    if job.saved is not None and savedstate.restore(llm, job.saved, tokens):
        emit(Chunk("", 0, FinishReason.LENGTH, len(tokens), cached_tokens=len(tokens)))
        return
    cached = cached_prefix(llm, tokens)
    llm.between_batches = _between_batches(job)
    llm.n_tokens = cached
    llm.eval(tokens[cached:])
    if job.saved is not None:
        savedstate.save(llm, job.saved, tokens)
    emit(Chunk("", 0, FinishReason.LENGTH, prompt_tokens=len(tokens), cached_tokens=cached))


def _token_text(llm: Any, token: int) -> str:
    return "" if token < 0 else llm._model.token_get_text(token)


def run_generation(llm: Any, vocab: Vocabulary, job: Job, emit: Emit) -> None:
    """Generate for job on llm, calling emit per piece of text; the last chunk says why it ended."""
    request, sampling = job.request, job.request.sampling
    if request.prefill_only:
        run_prefill(llm, job, emit)
        return
    tokens = prompt_tokens(llm, request, job.cancel.is_set)
    cached = cached_prefix(llm, tokens)
    n_ctx = llm.n_ctx()
    if len(tokens) >= n_ctx:
        raise InvalidRequest(
            f"prompt is {len(tokens)} tokens; the context holds {n_ctx}", field="prompt"
        )
    budget = min(request.max_tokens, n_ctx - len(tokens))
    llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
    llm.between_batches = _between_batches(job)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = StopMatcher(sampling.stop)
    count, finish = 0, FinishReason.LENGTH
    for token in llm.generate(
        tokens,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=0.0,
        temp=sampling.temperature,
        repeat_penalty=1.0,
    ):
        job.check()
        if vocab.is_end(token):
            finish = FinishReason.EOS
            break
        count += 1
        text, stopped = stops.feed(decoder.decode(vocab.piece(token)))
        if stopped:
            emit(Chunk(text, count, FinishReason.STOP, len(tokens), cached_tokens=cached))
            return
        if text:
            emit(Chunk(text, count))
        if count >= budget:
            break
    tail = stops.feed(decoder.decode(b"", final=True))[0] + stops.flush()
    emit(Chunk(tail, count, finish, prompt_tokens=len(tokens), cached_tokens=cached))


def _between_batches(job: Job) -> Callable[[], None]:
    def step() -> None:
        job.check()
        job.progress()

    return step
