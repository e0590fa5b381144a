"""A slot: one llama.cpp context with its own worker thread. Slots of a model share its mmap."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llama_cpp import Llama

from meshd.runner.generation import Emit, Job, Vocabulary, run_generation
from meshd.runner.llamalog import route_llama_logs


class BatchedLlama(Llama):
    """Llama whose prompt evaluation stops between batches to call `between_batches`.

    Llama.eval already walks the prompt n_batch tokens at a time; calling it once per batch is
    the same work, and gives the runner a place to notice cancellation and to report progress
    while a long prompt is prefilled.
    """

    between_batches: Callable[[], None] = staticmethod(lambda: None)
    # The Jinja chat template chats render with: the file's own, or the one meshd chose for a
    # model whose file has none; "" when the model takes prompts only.
    chat_template: str = ""
    chat_renderer: Any = None  # compiled from chat_template at the first chat

    def eval(self, tokens: Sequence[int]) -> None:
        step = max(int(self.n_batch), 1)
        for start in range(0, len(tokens), step):
            if start:
                self.between_batches()
            super().eval(tokens[start : start + step])


class Slot:
    """One llama.cpp context; every call into it runs on the slot's single thread."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=label)
        self.llm: Any = None
        self.vocab: Vocabulary | None = None

    def load(
        self,
        path: Path,
        *,
        context: int,
        threads: int,
        batch: int,
        use_mmap: bool,
        chat_template: str = "",
        gpu_layers: int = 0,
    ) -> None:
        """Map the weights and evaluate one token, so that the graph is built and pages faulted.

        Runs on the caller's thread; call it through `submit`.
        """
        route_llama_logs()
        llm = BatchedLlama(
            model_path=str(path),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=batch,
            use_mmap=use_mmap,
            n_gpu_layers=gpu_layers,
            verbose=False,
        )
        llm.chat_template = chat_template or llm.metadata.get("tokenizer.chat_template", "")
        bos = llm.token_bos()
        llm.eval([bos if bos >= 0 else 0])
        self.llm, self.vocab = llm, Vocabulary(llm)

    def run(self, job: Job, emit: Emit) -> None:
        """Generate for job; runs on the slot's thread through `submit`."""
        assert self.vocab is not None, "slot used before load"
        run_generation(self.llm, self.vocab, job, emit)

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run fn on this slot's thread."""
        return self.executor.submit(fn, *args, **kwargs)
