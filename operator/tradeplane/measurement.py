"""What a metrics provider measures of a revision, and the interface every provider implements.

A provider measures one revision of one service over a window: p99 latency, the number of latency
samples, requests and errors, from the histogram and counters every bundled service exports (and custom
services are asked to export, see DESIGN.md). Providers compute p99 the way Prometheus'
`histogram_quantile` does, so they agree on the same data. The trading gates read more `Series` of the
same revision through the same providers: decisions by reason, orders, fills, and any series a desk names.

In a shadow rollout a provider also counts the canary's decisions as its callers compared them with the
stable's (SHADOW_DECISIONS_METRIC, exported by the callers: the target's endpoints are then the callers'
pods). A state shadow's comparisons (state_comparison.py) are `Decisions` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

LATENCY_METRIC = "tradeplane_request_duration_seconds"
REQUESTS_METRIC = "tradeplane_requests_total"
ERROR_OUTCOME = "error"
QUANTILE = 0.99
DECISIONS_METRIC = "tradeplane_decisions_total"
"""Risk decisions by `reason`: the reason code's name, OK for an accepted order."""
ACCEPTED_REASON = "OK"
ORDERS_METRIC = "tradeplane_orders_total"
"""Orders routed to the venue (execution)."""
FILLS_METRIC = "tradeplane_fills_total"
"""Fills reported by the venue (execution), partial fills each counted."""
SHADOW_DECISIONS_METRIC = "tradeplane_shadow_decisions_total"
"""Labels: peer (the canaried service), peer_revision (the canary), outcome (below)."""
MATCH, MISMATCH, UNANSWERED = "match", "mismatch", "unanswered"


class ProviderUnavailable(Exception):
    """The provider could not produce figures (unreachable, refused, or answered nonsense)."""


@dataclass(frozen=True)
class Target:
    """One revision of one service. `endpoints` are host:port of its ready pods' metrics servers."""

    namespace: str
    service: str
    revision: str
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Series:
    """A series of one revision that a gate reads: a counter's increase over the window or a gauge's
    value, summed over the revision's pods and labels, per value of the label `by` when it is set
    (the key is "" otherwise). `query`, a PromQL template, replaces `metric` for the prometheus provider."""

    metric: str | None = None
    counter: bool = True
    by: str | None = None
    query: str | None = None


@dataclass(frozen=True)
class Measurement:
    """Figures of one revision over one window. p99 is None when the window saw no requests."""

    p99_seconds: float | None
    samples: int
    requests: int
    errors: int
    series: Mapping[Series, Mapping[str, float]] = field(default_factory=dict)
    """The series the gates asked for; a series the revision does not export maps to {}."""

    @property
    def p99_micros(self) -> float | None:
        return None if self.p99_seconds is None else round(self.p99_seconds * 1e6, 1)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Decisions:
    """A shadow canary's decisions over one window, as its callers compared them with the stable's.

    `unanswered`: copies the canary did not answer in time (a decision the stable made and it did not).
    """

    match: int
    mismatch: int
    unanswered: int
    what: str = "shadow decisions"
    """What was compared, for the gate's message."""
    detail: str = ""
    """Where they differed first, when the comparison can say."""
    span: str = ""
    """What the comparison covered, when not the analysis window."""

    @classmethod
    def from_outcomes(cls, outcomes: dict[str, float]) -> Decisions:
        match, mismatch, unanswered = (
            round(outcomes.get(outcome, 0.0)) for outcome in (MATCH, MISMATCH, UNANSWERED)
        )
        return cls(match, mismatch, unanswered)


class MetricsProvider(Protocol):
    async def measure(self, target: Target, window: str) -> Measurement: ...

    async def series(self, target: Target, window: str, series: Series) -> dict[str, float]: ...

    async def decisions(self, target: Target, window: str) -> Decisions:
        """The callers' comparisons of `target.revision` of `target.service` (endpoints: the callers')."""
        ...
