"""What a daemon counts, for `GET /metrics` (Prometheus text format): one registry per daemon.

Names follow vLLM's and llama-server's where they mean the same (time to first token, end-to-end
latency, queue time, prompt and generation tokens); the rest are meshd's own: warm hits against
cold loads (the number meshd exists to move), requests by status and routing reason, models by
state, live peers and runner restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshd.types import Chunk

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Telemetry:
    """Counters and histograms of one daemon, and the gauges read when scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "meshd:time_to_first_token_seconds",
            "Time to the first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "meshd:e2e_request_latency_seconds",
            "Whole request, first byte in to last out.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "meshd:request_queue_time_seconds",
            "Time a request waited for a free slot.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "meshd:prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "meshd:generation_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.requests = Counter(
            "meshd:requests",
            "Requests by door and outcome.",
            ["model", "door", "status"],
            registry=r,
        )
        self.routed = Counter(
            "meshd:routing_decisions", "Where requests went, and why.", ["reason"], registry=r
        )
        self.starts = Counter(
            "meshd:model_starts",
            "Requests served on this peer: on a warm model (warm), on a loaded model the OS had "
            "paged out (paged_out) or after a load (cold).",
            ["model", "start"],
            registry=r,
        )

    def track(self, model: str, door: str) -> Tracked:
        """Follow one request through a door (grpc or http)."""
        return Tracked(self, model, door)

    def watch(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Add gauges computed when scraped (models by state, live peers, restarts)."""
        self.registry.register(_Gauges(collect))

    def exposition(self) -> bytes:
        """Everything, in the Prometheus text format."""
        return generate_latest(self.registry)


COLD_REASONS = ("no peer had it warm", "only this peer knows it")  # meshd.mesh's cold choices


def routing_kind(reason: str, local: bool) -> str:
    """A routing reason as a metric label: warm or cold, here or on a peer."""
    start = "cold" if reason.startswith(COLD_REASONS) else "warm"
    return f"{start}_{'local' if local else 'peer'}"


def gauge(
    name: str, documentation: str, labels: list[str], values: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    """A gauge family for a scrape-time collector."""
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


class _Gauges(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class Tracked:
    """One request's timings; `done` or `failed` ends it (once)."""

    def __init__(self, telemetry: Telemetry, model: str, door: str) -> None:
        self.t, self.model, self.door = telemetry, model, door
        self.started = time.monotonic()
        self.first: float | None = None
        self.ended = False

    def token(self) -> None:
        """A chunk went out."""
        if self.first is None:
            self.first = time.monotonic()
            self.t.ttft.labels(self.model).observe(self.first - self.started)

    def finished(self, last: Chunk, here: str) -> None:
        """The answer ended with last: served by `here` (this peer) or another, and why."""
        local = last.served_by == here
        self.done(last.prompt_tokens, last.tokens, routing_kind(last.routing_reason, local))

    def done(self, prompt_tokens: int, tokens: int, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.t.e2e.labels(self.model).observe(time.monotonic() - self.started)
        self.t.prompt_tokens.labels(self.model).inc(prompt_tokens)
        self.t.generation_tokens.labels(self.model).inc(tokens)
        self.t.requests.labels(self.model, self.door, "ok").inc()
        if reason:
            self.t.routed.labels(reason).inc()

    def failed(self, status: str) -> None:
        """A request that ended in an error. Before its first token the model name is the
        caller's word (it may name nothing), so it is not made a label: label values must
        stay few, whatever callers send."""
        if self.ended:
            return
        self.ended = True
        model = self.model if self.first is not None else ""
        self.t.requests.labels(model, self.door, status).inc()

    def abandoned(self) -> None:
        """The caller went away before the end (a closed connection, a cancelled call):
        counted as such, unless the request had already ended."""
        self.failed("abandoned")
