"""meshd/engine/runnerproc.py: chunks that piled up are sent as one message."""

from __future__ import annotations

import asyncio

from meshd.engine.runnerproc import _merge_backlog
from meshd.types import Chunk, FinishReason


class TestMergeBacklog:
    """Chunks that piled up while the consumer was busy go out as one message."""

    @staticmethod
    def _queue(*items: object) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        return queue

    async def test_nothing_waiting_passes_the_chunk_through(self) -> None:
        chunk = Chunk("a", 1)
        assert _merge_backlog(chunk, self._queue()) is chunk

    async def test_waiting_chunks_fold_into_one_up_to_the_last(self) -> None:
        backlog = self._queue(Chunk("b", 2), Chunk("c", 3, FinishReason.LENGTH, 5), Chunk("x", 9))
        merged = _merge_backlog(Chunk("a", 1), backlog)
        assert merged == Chunk("abc", 3, FinishReason.LENGTH, 5)
        assert backlog.qsize() == 1, "nothing after the last chunk is taken"

    async def test_an_error_in_the_backlog_wins(self) -> None:
        error = RuntimeError("slot failed")
        assert _merge_backlog(Chunk("a", 1), self._queue(Chunk("b", 2), error)) is error
