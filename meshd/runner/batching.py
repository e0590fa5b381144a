"""Continuous batching: every request of a model in one llama.cpp context, one decode per step.

Each step the scheduler builds one batch: the next token of every sequence that is generating,
then chunks of the prompts still being prefilled, up to `batch` tokens in all (so a long prompt
delays the streams already running by one chunk at most, never by its whole prefill). One
`llama_decode` computes them all; each generating sequence then samples from its own row of the
logits with its own sampler chain, and its text goes through its stop strings. Cancellation is
seen between steps. This is how llama.cpp's own server schedules (`update_slots`).

Sequence i is the daemon's slot i (meshd.engine.slots hands them out by the prefix their cache
holds). A request may also start from a prefix another sequence holds: that sequence's cells
are copied (`llama_memory_seq_cp`, a copy of its stream's buffer: milliseconds where computing
the prefix again takes seconds), so one warmed system prompt serves every concurrent request.

Everything that touches the context runs on the scheduler's thread; `submit` may be called from
any thread, and renders and tokenizes the prompt on a thread of its own first, so a slow chat
template never holds up the streams.
"""

from __future__ import annotations

import codecs
import collections
import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp

from meshd.errors import Cancelled, InvalidRequest, MeshdError
from meshd.runner import savedstate
from meshd.runner.context import LoadedModel
from meshd.runner.generation import Emit, Job, Vocabulary, prompt_tokens
from meshd.runner.mapping import pages_used
from meshd.runner.sampling import Sampler
from meshd.runner.stops import StopMatcher
from meshd.types import Chunk, FinishReason

log = logging.getLogger("meshd.runner.batching")
Ended = Callable[[BaseException | None], None]  # called once when a request ends, with its error


@dataclass
class Active:
    """A request on a sequence: its prompt, how much of it is in the cache, and its answer."""

    job: Job
    emit: Emit
    ended: Ended
    prompt: list[int]
    order: int  # admission order: prompts are prefilled first come, first served
    cached: int = 0  # prompt tokens found in the cache
    fed: int = 0  # prompt tokens in the cache now
    budget: int = 0  # tokens it may generate
    count: int = 0
    next_token: int | None = None  # sampled, decoded in the next step
    sampler: Sampler | None = None
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )


@dataclass
class Sequence:
    """One sequence of the context: what its KV cells hold, and the request using it."""

    index: int
    held: list[int] = field(default_factory=list)  # tokens at positions 0..len-1
    active: Active | None = None


def shared_prefix(held: list[int], tokens: list[int]) -> int:
    """How many leading tokens two token lists share."""
    shared = 0
    for have, want in zip(held, tokens, strict=False):
        if have != want:
            break
        shared += 1
    return shared


class Scheduler:
    """The batch loop of one runner: `Scheduler.load(...)` makes one."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.vocab = Vocabulary(model)
        self.seqs = [Sequence(i) for i in range(model.sequences)]
        self.n_swa = model.n_swa
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(model.vocab))
        self.capacity = model.batch  # tokens per step
        self.batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)
        self.cond = threading.Condition()
        self.inbox: collections.deque[tuple[int, Active]] = collections.deque()
        self.closing = False
        self.orders = itertools.count()
        self.preparer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prepare")

    @classmethod
    def load(cls, make: Callable[[], LoadedModel]) -> Scheduler:
        """Load the model and run the batch loop on one thread of their own; return once a
        first token has decoded (the graph built, the weights' pages faulted), or raise what
        loading raised.

        Every llama.cpp call that computes (loading, which repacks weights, and every decode)
        runs on that one thread: with OpenMP (llama.cpp's Linux build), each calling thread
        gets a thread team of its own, and once more threads than cores are in teams, GOMP
        stops spinning at ggml's barriers and sleeps there instead, which made every decode
        about a third slower."""
        made: list[Scheduler] = []
        failed: list[BaseException] = []
        ready = threading.Event()

        def run() -> None:
            try:
                model = make()
                first_token(model)
                model.pages_used = pages_used(model.path, lambda: first_token(model))
                made.append(cls(model))
            except BaseException as error:
                failed.append(error)
                return
            finally:
                ready.set()
            made[0]._loop()

        threading.Thread(target=run, name="batch", daemon=True).start()
        ready.wait()
        if failed:
            raise failed[0]
        return made[0]

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.preparer.shutdown(wait=False, cancel_futures=True)

    def submit(self, index: int, job: Job, emit: Emit, ended: Ended) -> None:
        """Run job on sequence `index`; emit gets its chunks, ended its end (None or the error)."""
        self.preparer.submit(self._prepare, index, job, emit, ended)

    def count(self, job: Job) -> int:
        """Tokens of a request's prompt (renders its chat), on the caller's thread."""
        return len(prompt_tokens(self.model, job.request, job.cancel.is_set))

    # -- arrival (preparer thread) ---------------------------------------------------------------

    def _prepare(self, index: int, job: Job, emit: Emit, ended: Ended) -> None:
        try:
            tokens = prompt_tokens(self.model, job.request, job.cancel.is_set)
            what = "prefix" if job.request.prefill_only else "prompt"
            if not tokens:  # a model without BOS, asked with nothing: nothing to decode
                raise InvalidRequest(f"the {what} is empty", field=what)
            if len(tokens) >= self.model.context:
                raise InvalidRequest(
                    f"{what} is {len(tokens)} tokens; the context holds {self.model.context}",
                    field=what,
                )
            job.check()
        except BaseException as error:
            ended(error)
            return
        active = Active(job, emit, ended, tokens, next(self.orders))
        with self.cond:
            self.inbox.append((index, active))
            self.cond.notify()

    # -- the loop (scheduler thread) ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.closing and not self.inbox and not self._busy():
                    self.cond.wait()
                if self.closing:
                    break
                arrivals = list(self.inbox)
                self.inbox.clear()
            try:
                for index, active in arrivals:
                    self._admit(self.seqs[index], active)
                self._drop_cancelled()
                if self._busy():
                    self._step()
            except Exception as error:  # a bug here must end requests, never the runner
                log.exception("batch step failed")
                for seq in self.seqs:
                    self._forget(seq)
                    self._end(seq, MeshdError(f"runner error: {error}"))
        for seq in self.seqs:
            self._end(seq, MeshdError("the runner is stopping"))
        llama_cpp.llama_batch_free(self.batch)

    def _busy(self) -> bool:
        return any(seq.active is not None for seq in self.seqs)

    def _admit(self, seq: Sequence, active: Active) -> None:
        """Put a request on its sequence, starting from the longest prefix any sequence holds."""
        if seq.active is not None:  # the daemon hands out each sequence once at a time
            active.ended(MeshdError(f"sequence {seq.index} is busy"))
            return
        job, prompt = active.job, active.prompt
        seq.active = active
        restored = job.saved is not None and self._restore(seq, job.saved, prompt)
        if restored and job.request.prefill_only:
            n = len(prompt)
            self._emit(seq, Chunk("", 0, FinishReason.LENGTH, n, cached_tokens=n))
            self._end(seq, None)
            return
        limit = max(len(prompt) - 1, 0)  # at least the last token is decoded: its logits
        own = min(self._reusable(seq, shared_prefix(seq.held, prompt)), limit)
        source, best = None, own
        for other in self.seqs:
            shared = min(self._reusable(other, shared_prefix(other.held, prompt)), limit)
            if other is not seq and shared > best:
                source, best = other, shared
        memory, keep = self.model.memory, best
        if source is not None:
            # Streams are copied whole (llama.cpp copies across streams only so); the copy's
            # tail past the shared prefix is dropped at once.
            llama_cpp.llama_memory_seq_rm(memory, seq.index, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, source.index, seq.index, -1, -1)
        if not llama_cpp.llama_memory_seq_rm(memory, seq.index, keep, -1):
            llama_cpp.llama_memory_seq_rm(memory, seq.index, -1, -1)
            keep = 0
        seq.held = prompt[:keep]
        active.cached = active.fed = keep
        if not job.request.prefill_only:
            request = job.request
            active.budget = min(request.max_tokens, self.model.context - len(prompt))
            active.sampler = Sampler(request.sampling, self.n_vocab)
            active.stops = StopMatcher(request.sampling.stop)

    def _reusable(self, seq: Sequence, shared: int) -> int:
        """How many of the `shared` leading tokens seq's cells can really serve: a model with
        sliding-window attention (Gemma 3) keeps only the last window's cells of its windowed
        layers, so a prefix that ends before what those still hold must be computed again (as
        llama-server decides)."""
        if shared == 0 or self.n_swa <= 0:
            return shared
        oldest = llama_cpp.llama_memory_seq_pos_min(self.model.memory, seq.index)
        return shared if oldest <= max(0, shared - self.n_swa) else 0

    def _restore(self, seq: Sequence, saved: savedstate.SavedState, prompt: list[int]) -> bool:
        if not savedstate.restore(self.model, seq.index, saved, prompt):
            seq.held = []
            return False
        seq.held = list(prompt)
        return True

    def _drop_cancelled(self) -> None:
        for seq in self.seqs:
            if seq.active is not None and seq.active.job.cancel.is_set():
                self._end(seq, Cancelled("generation cancelled"))

    def _step(self) -> None:
        """One decode: every generating sequence's next token, then prompt chunks."""
        batch, n = self.batch, 0
        generating = [s for s in self.seqs if s.active and s.active.next_token is not None]
        rows: list[tuple[Sequence, int]] = []  # (sequence, batch row of its logits)
        for seq in generating:
            assert seq.active is not None and seq.active.next_token is not None
            self._add(n, seq.active.next_token, len(seq.held), seq.index, True)
            rows.append((seq, n))
            n += 1
        prefilling = sorted(
            (s for s in self.seqs if s.active and s.active.fed < len(s.active.prompt)),
            key=lambda s: s.active.order if s.active else 0,
        )
        chunks: list[tuple[Sequence, int]] = []
        for seq in prefilling:
            active = seq.active
            assert active is not None
            take = min(self.capacity - n, len(active.prompt) - active.fed)
            if take <= 0:
                break
            last = len(active.prompt) - 1
            for pos in range(active.fed, active.fed + take):
                self._add(n, active.prompt[pos], pos, seq.index, pos == last)
                if pos == last:
                    rows.append((seq, n))
                n += 1
            chunks.append((seq, take))
        batch.n_tokens = n
        result = llama_cpp.llama_decode(self.model.ctx, batch)
        if result != 0:
            error = MeshdError(f"llama.cpp could not decode (llama_decode returned {result})")
            for seq in {s.index: s for s in generating + [c[0] for c in chunks]}.values():
                self._forget(seq)
                self._end(seq, error)
            return
        for seq in generating:
            assert seq.active is not None and seq.active.next_token is not None
            seq.held.append(seq.active.next_token)
            seq.active.next_token = None
        for seq, take in chunks:
            active = seq.active
            assert active is not None
            seq.held.extend(active.prompt[active.fed : active.fed + take])
            active.fed += take
            if active.fed < len(active.prompt):
                active.job.progress()
            elif active.job.request.prefill_only:
                self._prefilled(seq)
        for seq, row in rows:
            if seq.active is not None:
                self._sample(seq, row)

    def _add(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    def _prefilled(self, seq: Sequence) -> None:
        """A warmed prefix is in the cache: save it if pinned, and say so."""
        active = seq.active
        assert active is not None
        if active.job.saved is not None:
            savedstate.save(self.model, seq.index, active.job.saved, active.prompt)
        n = len(active.prompt)
        self._emit(seq, Chunk("", 0, FinishReason.LENGTH, n, cached_tokens=active.cached))
        self._end(seq, None)

    def _sample(self, seq: Sequence, row: int) -> None:
        active = seq.active
        assert active is not None and active.sampler is not None
        token = active.sampler.sample(self.model.ctx, row)
        if self.vocab.is_end(token):
            self._finish(seq, FinishReason.EOS)
            return
        active.count += 1
        text, stopped = active.stops.feed(active.decoder.decode(self.vocab.piece(token)))
        if stopped:
            n = len(active.prompt)
            self._emit(
                seq, Chunk(text, active.count, FinishReason.STOP, n, cached_tokens=active.cached)
            )
            self._end(seq, None)
            return
        if text:
            self._emit(seq, Chunk(text, active.count))
        if active.count >= active.budget:
            self._finish(seq, FinishReason.LENGTH)
            return
        active.next_token = token

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        active = seq.active
        assert active is not None
        tail = active.stops.feed(active.decoder.decode(b"", final=True))[0] + active.stops.flush()
        n = len(active.prompt)
        self._emit(seq, Chunk(tail, active.count, reason, n, cached_tokens=active.cached))
        self._end(seq, None)

    def _emit(self, seq: Sequence, chunk: Chunk) -> None:
        assert seq.active is not None
        seq.active.emit(chunk)

    def _end(self, seq: Sequence, error: BaseException | None) -> None:
        """The request on seq is over; the cells stay (a prefix for the next request)."""
        active, seq.active = seq.active, None
        if active is None:
            return
        if active.sampler is not None:
            active.sampler.close()
        active.ended(error)

    def _forget(self, seq: Sequence) -> None:
        """Drop what seq's cells hold (after a failed decode their contents are unknown)."""
        llama_cpp.llama_memory_seq_rm(self.model.memory, seq.index, -1, -1)
        seq.held = []


def first_token(model: LoadedModel) -> None:
    """Decode one token, so that the compute graph is built and the weights' pages are faulted
    before the model is called warm; then forget it."""
    bos = model.token_bos()
    token = (llama_cpp.llama_token * 1)(bos if bos >= 0 else 0)  # alive while it decodes
    batch = llama_cpp.llama_batch_get_one(token, 1)
    if llama_cpp.llama_decode(model.ctx, batch) != 0:
        raise MeshdError("the first token did not decode")
    llama_cpp.llama_memory_seq_rm(model.memory, 0, -1, -1)
