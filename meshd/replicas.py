"""Replicas on demand: copy a model file from another peer, then warm it here.

- `PeerFetcher`: a peer asked to warm a model it lacks (a Warm with `pull_from`, sent by the
  router of a peer that wants more copies) pulls the file peer-to-peer as `meshd pull --from`
  does (verified by its digest, resumable), then warms it for the lease. Progress goes out in
  heartbeats so every `meshd status` shows it; a pull under way is joined, never repeated.
- `ReplicaKeeper`: `auto_replicas = {model = N}` keeps N warm copies of a model while apps
  use it through this peer, as peers come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from meshd.engine import Engine
from meshd.errors import MeshdError, Overloaded
from meshd.logthrottle import Throttle
from meshd.mesh import Mesh
from meshd.pull import PeerSource, pull
from meshd.security.credentials import TlsCredentials
from meshd.store import ModelStore
from meshd.tasks import stop_task
from meshd.types import Prefix, ReplicaPull

log = logging.getLogger("meshd.replicas")
MAX_PULLS = 2  # model files copied at once: each is a disk and network hog
KEEP_EVERY_S = 5.0  # how often auto_replicas counts the copies


class PullStopped(MeshdError):
    """The daemon stopped while a replica was being pulled (the partial file is kept)."""


class PeerFetcher:
    """Pulls model files from other peers into this peer's store and warms them."""

    def __init__(
        self,
        store: ModelStore,
        engine: Engine,
        credentials: Callable[[], TlsCredentials | None],
        max_bytes: int,
    ) -> None:
        self.store, self.engine = store, engine
        self.credentials, self.max_bytes = credentials, max_bytes
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._progress: dict[str, ReplicaPull] = {}
        self.failures: dict[str, str] = {}  # the last failed pull of each model, why
        self._stopping = False
        self._throttle = Throttle()

    def pulling(self) -> tuple[ReplicaPull, ...]:
        """The pulls under way, with their progress."""
        return tuple(self._progress.values())

    def start(
        self, model: str, address: str, source: str, lease: float, prefix: Prefix | None = None
    ) -> asyncio.Task[None]:
        """Pull model from the peer at address (peer id source), then warm it (and the
        prefix) for the lease; a pull of the same model under way is joined, not repeated."""
        task = self._tasks.get(model)
        if task is not None and not task.done():
            return task
        running = sum(not t.done() for t in self._tasks.values())
        if running >= MAX_PULLS:
            raise Overloaded(f"already pulling {running} models; try again when one is done")
        self._progress[model] = ReplicaPull(model, source)
        pulling = self._run(model, address, source, lease, prefix)
        task = asyncio.create_task(pulling, name=f"pull-{model}")
        task.add_done_callback(_observed)  # its failure is logged and kept in failures
        self._tasks[model] = task
        return task

    async def _run(
        self, model: str, address: str, source: str, lease: float, prefix: Prefix | None
    ) -> None:
        started = time.monotonic()
        try:
            peer = PeerSource(address, model, credentials=self.credentials(), peer_id=source)

            def progress(done: int, total: int | None) -> None:
                if self._stopping:
                    raise PullStopped(f"stopped while pulling {model!r}; the pull resumes later")
                self._progress[model] = ReplicaPull(model, source, done, total or 0)

            result = await asyncio.to_thread(
                pull,
                self.store,
                peer,
                name=model,
                progress=progress,
                memory_budget=self.engine.memory_budget,
                strict=True,  # a replica is for serving: it must fit this peer's budget
                max_bytes=self.max_bytes,
            )
            log.info(
                "pulled %s from %s (%d MiB) in %.1f s; warming it",
                model,
                source,
                result.model.size // 2**20,
                time.monotonic() - started,
            )
            self.failures.pop(model, None)
            await self.engine.refresh()
            await self.engine.warm(model, lease, True, prefix)
        except MeshdError as error:
            self.failures[model] = str(error)
            self._throttle.log(log, logging.WARNING, model, "replica of %s: %s", model, error)
            raise
        finally:
            self._progress.pop(model, None)

    async def close(self) -> None:
        """Stop every pull (each ends at its next block; partial files stay for a resume)."""
        self._stopping = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task


class ReplicaKeeper:
    """Keeps auto_replicas warm copies of each model apps use through this peer."""

    def __init__(
        self, mesh: Mesh, wanted: Mapping[str, int], in_use_for: float, every: float = KEEP_EVERY_S
    ) -> None:
        self.mesh, self.wanted, self.in_use_for, self.every = mesh, wanted, in_use_for, every
        self._task: asyncio.Task[None] | None = None
        self._throttle = Throttle()

    def start(self) -> None:
        """Count copies every few seconds in the background (nothing to do without settings)."""
        if self.wanted and self._task is None:
            self._task = asyncio.create_task(self._run(), name="replica-keeper")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.check()

    async def check(self) -> None:
        """Warm (and, where peers lack the file, copy) every model short of its count."""
        for model, count in self.mesh.replicas_due(self.wanted, self.in_use_for):
            try:
                await self.mesh.warm(model, 0.0, False, count, 0, from_owner=True)
            except MeshdError as error:
                self._throttle.log(
                    log, logging.WARNING, model, "auto_replicas %s: %s", model, error
                )

    async def close(self) -> None:
        """Stop counting."""
        task, self._task = self._task, None
        await stop_task(task)


def _observed(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
