"""A slot: one llama.cpp context with its own worker thread. Slots of a model share its mmap."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

from llama_cpp import Llama

from meshd.engine.generation import Emit, Job, Vocabulary, run_generation
from meshd.engine.llamalog import route_llama_logs


class Slot:
    """One llama_cpp.Llama context; every call into it runs on the slot's single thread."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=label)
        self.llm: Any = None
        self.vocab: Vocabulary | None = None

    def load(self, path: Path, *, context: int, threads: int, batch: int, use_mmap: bool) -> None:
        """Map the weights and evaluate one token, so that the graph is built and pages faulted.

        Runs on the caller's thread; call it through `submit`.
        """
        route_llama_logs()
        llm = Llama(
            model_path=str(path),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=batch,
            use_mmap=use_mmap,
            verbose=False,
        )
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

    def close(self) -> None:
        """Free the context and stop the thread; waits for the job in progress."""
        self.executor.submit(self._free).result()
        self.executor.shutdown(wait=True)

    def _free(self) -> None:
        if self.llm is not None:
            self.llm.close()
        self.llm, self.vocab = None, None
