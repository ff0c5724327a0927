"""A real HTTP server exporting the bundled services' metrics, for provider tests that need no cluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tradeplane.measurement import DECISIONS_METRIC, LATENCY_METRIC, REQUESTS_METRIC, SHADOW_DECISIONS_METRIC

# Microsecond resolution around the SLOs trading services care about, as the bundled services export.
BUCKETS = (
    0.00001,
    0.00002,
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
)


@dataclass
class LatencyServer:
    endpoint: str
    latency: Histogram
    requests: Counter
    service: str
    revision: str
    decisions: Counter
    pnl: Gauge
    shadow_decisions: Counter

    def observe(self, seconds: float, count: int = 1, outcome: str = "ok") -> None:
        for _ in range(count):
            self.latency.labels(self.service, self.revision).observe(seconds)
            self.requests.labels(self.service, self.revision, outcome).inc()

    def compare(self, peer: str, peer_revision: str, outcome: str, count: int) -> None:
        """As a caller in a shadow rollout: `count` decisions of the peer's canary compared."""
        self.shadow_decisions.labels(self.service, self.revision, peer, peer_revision, outcome).inc(count)


@contextmanager
def latency_server(
    service: str, revision: str, address: str = "127.0.0.1", started: float | None = None
) -> Iterator[LatencyServer]:
    """`started`: the process start time the page reports (process_start_time_seconds), if any."""
    registry = CollectorRegistry()
    if started is not None:
        Gauge("process_start_time_seconds", "Process start", registry=registry).set(started)
    latency = Histogram(
        LATENCY_METRIC,
        "Request latency",
        ["service", "revision"],
        buckets=BUCKETS,
        registry=registry,
    )
    requests = Counter(
        REQUESTS_METRIC.removesuffix("_total"),
        "Requests by outcome",
        ["service", "revision", "outcome"],
        registry=registry,
    )
    decisions = Counter(
        DECISIONS_METRIC.removesuffix("_total"),
        "Risk decisions by reason",
        ["service", "revision", "reason"],
        registry=registry,
    )
    pnl = Gauge("desk_pnl", "A desk's own figure", ["service", "revision"], registry=registry)
    shadow_decisions = Counter(
        SHADOW_DECISIONS_METRIC.removesuffix("_total"),
        "Shadow decisions by outcome",
        ["service", "revision", "peer", "peer_revision", "outcome"],
        registry=registry,
    )
    # Series exist from the start, at zero, as in the services: Prometheus sees every increase.
    latency.labels(service, revision)
    for outcome in ("ok", "error"):
        requests.labels(service, revision, outcome)
    for reason in ("OK", "MAX_QUANTITY"):
        decisions.labels(service, revision, reason)
    server, thread = start_http_server(0, addr=address, registry=registry)
    try:
        endpoint = f"{address}:{server.server_port}"
        yield LatencyServer(endpoint, latency, requests, service, revision, decisions, pnl, shadow_decisions)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
