"""A real HTTP server exporting the bundled services' metrics, for provider tests that need no cluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tradeplane.measurement import DECISIONS_METRIC, LATENCY_METRIC, REQUESTS_METRIC

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
    decisions: Counter
    service: str
    revision: str

    def observe(self, seconds: float, count: int = 1, outcome: str = "ok") -> None:
        for _ in range(count):
            self.latency.labels(self.service, self.revision).observe(seconds)
            self.requests.labels(self.service, self.revision, outcome).inc()

    def compare(self, peer: str, peer_revision: str, outcome: str, count: int) -> None:
        """As a caller in a shadow rollout: `count` decisions of the peer's canary compared."""
        self.decisions.labels(self.service, self.revision, peer, peer_revision, outcome).inc(count)


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
        "Shadow decisions by outcome",
        ["service", "revision", "peer", "peer_revision", "outcome"],
        registry=registry,
    )
    # Series exist from the start, at zero, as in the services: Prometheus sees every increase.
    latency.labels(service, revision)
    for outcome in ("ok", "error"):
        requests.labels(service, revision, outcome)
    server, thread = start_http_server(0, addr=address, registry=registry)
    try:
        yield LatencyServer(
            f"{address}:{server.server_port}", latency, requests, decisions, service, revision
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
