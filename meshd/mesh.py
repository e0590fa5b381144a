"""Any peer takes any request: route it to the best peer, forward it, and say who served it and why.

A request that arrives with hops >= MAX_HOPS is served here or refused, so nothing loops.
A forwarded request is retried on another peer only before its first token; after that a
failure is reported as UNAVAILABLE with the text so far marked partial, never repeated.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Mapping

import psutil

from meshd import __version__
from meshd.engine import Engine
from meshd.engine.validate import validate_warm
from meshd.errors import (
    InvalidRequest,
    MeshdError,
    ModelNotFound,
    Overloaded,
    PeerUnavailable,
    quoted,
)
from meshd.links import PeerLink, ReplicaFetcher
from meshd.peers import PeerTable
from meshd.prefixes import canonical_of, fingerprints
from meshd.routing import (
    Decision,
    PeerView,
    PromptShape,
    choose,
    replica_source,
    replica_targets,
    warm_copies,
    warm_targets,
)
from meshd.store import parse_name
from meshd.types import (
    MAX_HOPS,
    Chunk,
    GenerateRequest,
    MeshPeer,
    MeshStatus,
    ModelInfo,
    ModelState,
    PeerInfo,
    PeerStatus,
    ReplicaUse,
    RoutingRecord,
    WarmRequest,
    WarmResult,
)

log = logging.getLogger("meshd.mesh")
RECENT_DECISIONS = 50
FORWARDED_HERE = "forwarded here: served where it landed"
RETRYABLE = (PeerUnavailable, Overloaded)
ASSUMED_PULL_BYTES_S = 100e6  # a replica's expected wait, before its pull has begun


class Mesh:
    """Routing and forwarding for one peer."""

    def __init__(
        self,
        engine: Engine,
        table: PeerTable,
        link: PeerLink,
        peer_id: str,
        mesh_id: str,
        address: str,
        *,
        paused: Callable[[], str] = lambda: "",
        ca_holder: Callable[[], bool] = lambda: False,
        fetcher: ReplicaFetcher | None = None,
        route_by_prefix: bool = True,
        remote_lease_cap: float = 3600.0,
    ) -> None:
        self.engine, self.table, self.link = engine, table, link
        self.peer_id, self.mesh_id, self.address = peer_id, mesh_id, address
        self.started = time.monotonic()
        self.recent: collections.deque[RoutingRecord] = collections.deque(maxlen=RECENT_DECISIONS)
        # Requests this peer has forwarded and not yet seen finish, by peer id and model.
        self.outstanding: collections.defaultdict[str, collections.Counter[str]] = (
            collections.defaultdict(collections.Counter)
        )
        self.rng = random.Random()
        self.certificate_expires = 0.0  # Unix time, set by the node when it has a certificate
        self.paused = paused  # why the owner paused this peer, or ""
        self.remote_lease_cap = remote_lease_cap  # the longest lease an app or peer gets here
        self.yielding = ""  # why this peer's host is busy, or "" (set by the node's watch)
        self.ca_holder = ca_holder  # it may invite, revoke, renew
        self.fetcher = fetcher  # copies model files for replicas
        self.routed_at: dict[str, float] = {}  # model → when a request for it last came in here
        self.route_by_prefix = route_by_prefix  # count the prefill a peer would still do

    # -- what this peer tells others -------------------------------------------------------

    def local_info(self) -> PeerInfo:
        """This peer's heartbeat: identity, models with load, free memory, known peers."""
        models = tuple(
            m
            for m in self.engine.loads()
            if m.state is not ModelState.FAILED or self.engine.hosts[m.name].retryable
        )
        free = max(self.engine.memory_budget - self.engine.memory_in_models(), 0)
        known = tuple(e.address for e in self.table.live(time.monotonic()))
        return PeerInfo(
            self.peer_id,
            self.mesh_id,
            __version__,
            self.address,
            models,
            free,
            known,
            self.certificate_expires,
            self.paused(),
            self.yielding,
            self.ca_holder(),
            self.fetcher.pulling() if self.fetcher else (),
        )

    def views(self) -> list[PeerView]:
        """This peer and every live peer, as the router sees them."""
        now = time.monotonic()
        local = _view(self.local_info(), self.address, local=True, rtt=0.0, sent={})
        return [
            local,
            *(
                _view(
                    e.info, e.address, local=False, rtt=e.rtt, sent=self.outstanding[e.info.peer_id]
                )
                for e in self.table.live(now)
                if e.info is not None
            ),
        ]

    async def models(self) -> list[ModelInfo]:
        """This peer's models, the store looked at again first."""
        await self.engine.refresh()
        return self.engine.models()

    def peer_status(self) -> PeerStatus:
        """This peer's identity, load and memory, now."""
        memory = psutil.virtual_memory()
        return PeerStatus(
            peer_id=self.peer_id,
            version=__version__,
            uptime=time.monotonic() - self.started,
            load=tuple(self.engine.loads()),
            memory_total=memory.total,
            memory_available=memory.available,
            memory_budget=self.engine.memory_budget,
            memory_models=self.engine.memory_in_models(),
            clock=time.time(),
        )

    def heard_from(self, address: str, teller: str, teller_local: bool, vouched: bool) -> None:
        """A peer heartbeat this one from address: heartbeat it back (see PeerTable.add)."""
        self.table.add(address, teller=teller, teller_local=teller_local, vouched=vouched)

    def status(self) -> MeshStatus:
        """Every known peer (this one first) and recent routing decisions."""
        me = MeshPeer(self.local_info(), True, 0.0, time.time(), local=True)
        now = time.monotonic()
        peers = (me, *self.table.known(now))
        addresses = tuple(self.table.addresses(now))
        held, size, most, most_bytes = self.fetcher.use() if self.fetcher else (0, 0, 0, 0)
        replicas = ReplicaUse(held, size, most, most_bytes, self.remote_lease_cap)
        return MeshStatus(
            self.peer_id,
            self.mesh_id,
            peers,
            tuple(self.recent),
            addresses,
            self.table.dials,
            replicas,
        )

    def _refuse_if_paused(self, hops: int, from_owner: bool) -> None:
        """While paused, only the owner's own requests run here: one another peer sent (hops
        > 0), or an app or peer asked directly, is refused; a sender tries elsewhere before
        any token."""
        why = self.paused() if _for_others(hops, from_owner) else ""
        if why:
            raise PeerUnavailable(f"{self.peer_id} takes no mesh requests: {why}")

    # -- generate --------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk, None]:
        """Serve here or on the best peer; retry elsewhere only before the first token."""
        parse_name(request.model, field="model")
        self._refuse_if_paused(request.hops, request.from_owner)
        await self.engine.refresh()
        if request.hops >= MAX_HOPS:  # forwarded here: served where it landed
            started = False
            async for chunk in self.engine.generate(request):
                first, started = not started, True
                yield _reasoned(chunk, self.peer_id, FORWARDED_HERE, first)
            return
        tried: list[str] = []
        failure: Exception | None = None
        prompt = None
        if self.route_by_prefix:
            text = canonical_of(request)
            prompt = PromptShape(len(text), tuple(fingerprints(text)))
        while True:
            decision = self._decide(request.model, tried, failure, prompt)
            self.routed_at[request.model] = time.monotonic()
            started = False
            try:
                async with contextlib.aclosing(self._serve(decision, request)) as chunks:
                    async for chunk in chunks:
                        first, started = not started, True
                        yield _reasoned(chunk, decision.peer.peer_id, decision.reason, first)
                return
            except RETRYABLE as error:
                if started:  # text already went out: never start it again elsewhere
                    raise
                tried.append(decision.peer.peer_id)
                failure = error

    def _decide(
        self, model: str, tried: list[str], failure: Exception | None, prompt: PromptShape | None
    ) -> Decision:
        views = self.views()
        decision = choose(views, model, exclude=tried, rng=self.rng, prompt=prompt)
        if decision is None and not tried and model in self.engine.hosts:
            # Known here but unusable (a bad file): the engine says exactly why.
            decision = Decision(views[0], "only this peer knows it", False)
        if decision is None:
            if failure is not None:
                kind = type(failure) if isinstance(failure, RETRYABLE) else Overloaded
                raise kind(f"{failure} (tried: {', '.join(tried)})")
            holders = [v for v in views if model in v.models]
            if holders:  # it is there, but nowhere it may run now: say where and why
                why = "; ".join(f"{v.peer_id}: {v.paused or 'unavailable'}" for v in holders)
                raise PeerUnavailable(
                    f"model {model!r} is only on peers that take no requests now ({why})"
                )
            have = sorted({name for v in views for name in v.models})
            raise ModelNotFound(
                f"no model named {model!r} in the mesh (it has: {', '.join(have) or 'none'})"
            )
        self.recent.append(
            RoutingRecord(time.time(), model, decision.peer.peer_id, decision.reason)
        )
        log.debug("%s → %s: %s", model, decision.peer.peer_id, decision.reason)
        return decision

    async def _serve(
        self, decision: Decision, request: GenerateRequest
    ) -> AsyncGenerator[Chunk, None]:
        if decision.peer.local:
            async with contextlib.aclosing(self.engine.generate(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        forwarded = dataclasses.replace(request, hops=request.hops + 1)
        tokens = 0
        sent = self.outstanding[decision.peer.peer_id]
        sent[request.model] += 1
        try:
            relayed = self.link.generate(decision.peer.address, decision.peer.peer_id, forwarded)
            async with contextlib.aclosing(relayed):
                async for chunk in relayed:
                    tokens = chunk.tokens
                    yield chunk
        except PeerUnavailable as error:
            if tokens:
                raise PeerUnavailable(
                    f"peer {decision.peer.peer_id} failed after {tokens} tokens; "
                    "the text so far is partial"
                ) from None
            raise error from None
        finally:
            sent[request.model] -= 1

    # -- warm ------------------------------------------------------------------------------

    async def warm(self, request: WarmRequest) -> WarmResult:
        """Warm the model on the best peer(s) of the mesh and hold it there for the lease; when
        fewer than replicas peers hold its file, peers with room pull a copy first. pull_from
        (from another peer's router) asks this peer to pull the file from that peer, then warm
        it. A prefix is evaluated into a slot's cache on each of them and held for the lease."""
        model = request.model
        parse_name(model, field="model")
        validate_warm(request.lease, request.replicas)
        self._refuse_if_paused(request.hops, request.from_owner)
        if _for_others(request.hops, request.from_owner):  # held an hour at most
            request = dataclasses.replace(request, lease=min(request.lease, self.remote_lease_cap))
        await self.engine.refresh()
        if request.pull_from and model not in self.engine.hosts:
            return self._served_here(await self._pull_replica(request, request.pull_from))
        views = self.views()
        targets = warm_targets(views, model, request.replicas)
        if request.hops >= MAX_HOPS or (not targets and model in self.engine.hosts):
            return self._served_here(await self.engine.warm(request))
        if not targets:
            raise ModelNotFound(f"no model named {model!r} in the mesh")
        onward = dataclasses.replace(request, hops=request.hops + 1, replicas=1, pull_from="")
        copying = self._copies_to_make(views, model, request.replicas)
        results = await asyncio.gather(*(self._warm_on(target, onward) for target in targets))
        copied = await asyncio.gather(
            *(self._copy_to(target, source, onward) for target, source in copying),
            return_exceptions=True,
        )
        made = [c for c in copied if isinstance(c, WarmResult)]
        for (target, _), error in zip(copying, copied, strict=True):
            if isinstance(error, MeshdError):
                if request.wait:  # the caller waits for the copies: it hears why one failed
                    raise error
                log.warning("replica of %s on %s: %s", model, target.peer_id, error)
            elif isinstance(error, BaseException):
                raise error
        warmed = sum(r.state in (ModelState.WARM, ModelState.LOADING) for r in results)
        return self._served_here(dataclasses.replace(results[0], copies=warmed + len(made)))

    def _copies_to_make(
        self, views: list[PeerView], model: str, replicas: int
    ) -> list[tuple[PeerView, PeerView]]:
        """(target, source) of each copy to pull; refused at once when copies are wanted and no
        holder can give its file (it serves the model from a path, not from its store)."""
        targets = replica_targets(views, model, replicas)
        pairs = [(t, s) for t in targets if (s := replica_source(views, model, t)) is not None]
        if targets and not pairs:
            raise InvalidRequest(
                f"model {model!r} is served from a file path, not from a store, so no peer can "
                "copy it: `meshd pull` it into the store (or copy the file to the other peers "
                "and serve it there too) to have more than one copy",
                field="replicas",
            )
        return pairs

    def _served_here(self, result: WarmResult) -> WarmResult:
        """A warm result names the peer that holds the model (this one unless another said)."""
        return dataclasses.replace(result, served_by=result.served_by or self.peer_id)

    async def _warm_on(self, target: PeerView, onward: WarmRequest) -> WarmResult:
        """Warm on one target: here, or through the link (onward counts this hop)."""
        if target.local:
            return await self.engine.warm(onward)
        return await self.link.warm(target.address, target.peer_id, onward)

    async def _copy_to(self, target: PeerView, source: PeerView, onward: WarmRequest) -> WarmResult:
        """Have target pull the model from source, then warm it."""
        log.info("%s: a replica on %s, pulled from %s", onward.model, _who(target), _who(source))
        if target.local:
            return await self._pull_replica(onward, source.peer_id)
        pull = dataclasses.replace(onward, pull_from=source.peer_id)
        return await self.link.warm(target.address, target.peer_id, pull)

    async def _pull_replica(self, request: WarmRequest, source: str) -> WarmResult:
        """Pull the model from the live peer whose id is source, then warm it here (a peer is
        named by its id: each peer may know another at an address of its own)."""
        model, lease, wait, prefix = request.model, request.lease, request.wait, request.prefix
        now = time.monotonic()
        entry = next((e for e in self.table.live(now) if e.info and e.info.peer_id == source), None)
        if entry is None or entry.info is None:
            raise InvalidRequest(
                f"pull_from names no live peer of this mesh: {quoted(source)}", "pull_from"
            )
        address = entry.address
        if self.fetcher is None:
            raise ModelNotFound(f"no model named {model!r} on {self.peer_id}, which pulls none")
        task = self.fetcher.start(model, address, entry.info.peer_id, lease, prefix)
        if wait:
            await asyncio.shield(task)
            return await self.engine.warm(dataclasses.replace(request, wait=True))
        size = next((m.size_bytes for m in entry.info.models if m.name == model), 0)
        ready_in = size / ASSUMED_PULL_BYTES_S
        return WarmResult(model, ModelState.LOADING, ready_in, time.time() + lease, self.peer_id)

    def replicas_due(self, wanted: Mapping[str, int], in_use_for: float) -> list[tuple[str, int]]:
        """Models to top up to their auto_replicas count: asked of this peer within in_use_for
        seconds, with fewer warm copies (routing.warm_copies: the one replica rule)."""
        now = time.monotonic()
        views = self.views()
        return [
            (model, count)
            for model, count in wanted.items()
            if now - self.routed_at.get(model, -in_use_for - 1) <= in_use_for
            and warm_copies(views, model) < count
        ]


def _view(
    info: PeerInfo, address: str, *, local: bool, rtt: float, sent: dict[str, int]
) -> PeerView:
    """The router's view of a peer: its last heartbeat, corrected by what this peer has sent
    it since (a heartbeat is up to a second old; the requests forwarded meanwhile are not).
    The address is the one its heartbeats answered at, which works whatever it advertises."""
    models = {
        m.name: dataclasses.replace(m, active=max(m.active, sent.get(m.name, 0) - m.queued))
        for m in info.models
    }
    pulling = frozenset(p.model for p in info.pulls)
    return PeerView(
        info.peer_id,
        address,
        local,
        rtt,
        info.memory_free,
        models,
        info.paused,
        info.yielding,
        pulling,
    )


def _who(peer: PeerView) -> str:
    return "this peer" if peer.local else peer.peer_id


def _reasoned(chunk: Chunk, chosen: str, reason: str, first: bool) -> Chunk:
    """The one place that says who served a chunk and why: a chunk names the chosen peer unless
    it already names its server (the serving peer's router named itself); the first chunk (for
    a door that answers with headers) and the last one carry the reason, and so are encoded
    again. A relayed chunk in between passes through as it came."""
    served_by = chunk.served_by or chosen
    if chunk.finish_reason is None and not first:
        return chunk if chunk.served_by else dataclasses.replace(chunk, served_by=served_by)
    return dataclasses.replace(chunk, served_by=served_by, routing_reason=reason, wire=None)


def _for_others(hops: int, from_owner: bool) -> bool:
    """A request another peer forwarded, or an app or peer asked directly: not the owner's."""
    return hops > 0 or not from_owner
