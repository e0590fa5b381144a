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
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.engine import Engine
from meshd.errors import ConfigError, MeshdError, Overloaded
from meshd.fsutil import atomic_write_bytes, read_small_file
from meshd.logthrottle import Throttle
from meshd.mesh import Mesh
from meshd.pull import PeerSource, pull
from meshd.security.credentials import TlsCredentials
from meshd.store import ModelStore
from meshd.tasks import Periodic
from meshd.types import Prefix, ReplicaPull, WarmRequest

log = logging.getLogger("meshd.replicas")
MAX_PULLS = 2  # model files copied at once: each is a disk and network hog
KEEP_EVERY_S = 5.0  # how often auto_replicas counts the copies
EXPIRE_EVERY_S = 600.0  # how often replicas nobody uses are looked for
RECORD_FILE = "replicas.json"  # in the home: the replicas pulled for others, and when
MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True)
class ReplicaQuota:
    """What this peer holds for other peers and apps: at most max_models files of max_bytes
    together, each removed once nobody used it for expire_after seconds."""

    max_models: int
    max_bytes: int
    expire_after: float


@dataclass(frozen=True)
class Held:
    """A replica in the store: its name, file, size, and when it was pulled."""

    name: str
    digest: str
    size: int
    pulled_at: float


class ReplicaRecord:
    """The replicas this peer pulled on others' behalf (a small JSON file in the home): what
    the quota counts, and what may expire. A model the owner pulled is never in it."""

    def __init__(self, home: Path) -> None:
        self.path = home / RECORD_FILE

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(read_small_file(self.path, MAX_RECORD_BYTES, "replica record"))
        except ConfigError as exc:
            if self.path.exists():
                log.warning("%s; counting no replicas", exc)
            return {}
        except ValueError:
            return {}
        return (
            {str(k): v for k, v in raw.items() if isinstance(v, dict)}
            if isinstance(raw, dict)
            else {}
        )

    def write(self, records: Mapping[str, dict[str, Any]]) -> None:
        atomic_write_bytes(self.path, json.dumps(dict(records)).encode(), 0o600)

    def held(self, store: ModelStore) -> list[Held]:
        """The recorded replicas still in the store under their name and file."""
        stored = {m.name: m for m in store.models()}
        found = []
        for name, record in self.read().items():
            model = stored.get(name)
            if model is not None and model.digest == record.get("digest"):
                pulled = record.get("pulled_at")
                when = float(pulled) if isinstance(pulled, int | float) else 0.0
                found.append(Held(name, model.digest, model.size, when))
        return found

    def add(self, name: str, digest: str, now: float) -> None:
        self.write({**self.read(), name: {"digest": digest, "pulled_at": now}})

    def drop(self, name: str) -> None:
        records = self.read()
        if records.pop(name, None) is not None:
            self.write(records)


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
        quota: ReplicaQuota,
    ) -> None:
        self.store, self.engine = store, engine
        self.credentials, self.max_bytes = credentials, max_bytes
        self.quota = quota
        self.record = ReplicaRecord(store.root.parent)
        self._expiry: Periodic | None = None
        self._use = (0, 0)
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
        held = self.record.held(self.store)
        if len(held) + running >= self.quota.max_models:
            raise Overloaded(
                f"this peer already holds {len(held) + running} replicas for the mesh, its most "
                f"(replica_max_models = {self.quota.max_models}); unused ones go after "
                f"{self.quota.expire_after / 86400:.0f} days"
            )
        if self.bytes_left(held) <= 0:
            raise Overloaded(
                f"this peer's replicas for the mesh fill their {self.quota.max_bytes / 2**30:.1f}"
                " GiB (replica_max_bytes)"
            )
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
                max_bytes=min(self.max_bytes, self.bytes_left(self.record.held(self.store))),
            )
            if not result.already_present:
                self.record.add(model, result.model.digest, time.time())
            self._count()
            log.info(
                "pulled %s from %s (%d MiB) in %.1f s; warming it",
                model,
                source,
                result.model.size // 2**20,
                time.monotonic() - started,
            )
            self.failures.pop(model, None)
            await self.engine.refresh()
            await self.engine.warm(WarmRequest(model, lease, wait=True, prefix=prefix))
        except MeshdError as error:
            self.failures[model] = str(error)
            self._throttle.log(log, logging.WARNING, model, "replica of %s: %s", model, error)
            raise
        finally:
            self._progress.pop(model, None)

    def bytes_left(self, held: list[Held]) -> int:
        """Bytes of replica files this peer may still take for the mesh."""
        return self.quota.max_bytes - sum(h.size for h in held)

    def use(self) -> tuple[int, int, int, int]:
        """Replicas held for the mesh and their bytes, against the most of each: as counted
        at start and after each pull or expiry (status asks often; the store is a file)."""
        return (*self._use, self.quota.max_models, self.quota.max_bytes)

    def _count(self) -> None:
        held = self.record.held(self.store)
        self._use = (len(held), sum(h.size for h in held))

    def start_expiry(self, every: float = EXPIRE_EVERY_S) -> None:
        """Look for replicas nobody used, now and then (the first time now), in the background."""
        if self._expiry is None:
            self._expiry = Periodic("replica-expiry", self._expire_once, every, log, 0.0)
            self._expiry.start()

    async def _expire_once(self) -> None:
        await self.expire(time.time())
        await asyncio.to_thread(self._count)

    async def expire(self, now: float) -> list[str]:
        """Remove the replicas nobody used (asked for or warmed) for quota.expire_after, and
        not loaded now; returns their names."""
        gone = []
        for held in await asyncio.to_thread(self.record.held, self.store):
            host = self.engine.hosts.get(held.name)
            used = max(held.pulled_at, host.last_used if host is not None else 0.0)
            if now - used < self.quota.expire_after or (host is not None and host.loaded):
                continue
            try:
                await asyncio.to_thread(self.store.remove, held.name)
            except MeshdError as error:
                log.warning("could not remove the unused replica %s: %s", held.name, error)
                continue
            self.record.drop(held.name)
            gone.append(held.name)
            log.info("removed %s: a replica for the mesh nobody used for a while", held.name)
        if gone:
            await asyncio.to_thread(self.store.collect_garbage)
            await self.engine.refresh()
        return gone

    async def close(self) -> None:
        """Stop every pull (each ends at its next block; partial files stay for a resume)."""
        if self._expiry is not None:
            await self._expiry.close()
        self._expiry = None
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
        self._loop = Periodic("replica-keeper", self._step, every, log)
        self._throttle = Throttle()

    def start(self) -> None:
        """Count copies every few seconds in the background (nothing to do without settings)."""
        if self.wanted:
            self._loop.start()

    async def _step(self) -> None:
        await self.check()

    async def check(self) -> None:
        """Warm (and, where peers lack the file, copy) every model short of its count."""
        for model, count in self.mesh.replicas_due(self.wanted, self.in_use_for):
            try:
                await self.mesh.warm(WarmRequest(model, replicas=count, from_owner=True))
            except MeshdError as error:
                self._throttle.log(
                    log, logging.WARNING, model, "auto_replicas %s: %s", model, error
                )

    async def close(self) -> None:
        """Stop counting."""
        await self._loop.close()


def _observed(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
