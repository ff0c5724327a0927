"""The scrape provider: figures straight from the pods' /metrics, so a cluster without Prometheus still gets
analysed. p99 comes from histogram bucket deltas over the window, interpolated as `histogram_quantile`."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tradeplane.api import Analysis, parse_duration
from tradeplane.measurement import (
    DECISIONS_METRIC,
    ERROR_OUTCOME,
    LATENCY_METRIC,
    QUANTILE,
    REQUESTS_METRIC,
    Decisions,
    Measurement,
    ProviderUnavailable,
    Target,
)

PROCESS_START_METRIC = "process_start_time_seconds"
STALE_HISTORY_SECONDS = 600.0


def bucket_quantile(quantile: float, buckets: Mapping[float, float]) -> float | None:
    """The quantile of a cumulative histogram {upper bound: count}, as Prometheus' histogram_quantile.

    None when the histogram is empty. A rank that falls into the +Inf bucket answers the highest finite
    bound, as Prometheus does: the histogram cannot say more.
    """
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        raise ValueError("a histogram needs a +Inf bucket and at least one finite bucket")
    counts = _monotonic([buckets[bound] for bound in bounds])
    total = counts[-1]
    if total <= 0:
        return None
    rank = quantile * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    upper = bounds[index]
    if index == 0:
        lower, below = (0.0 if upper > 0 else upper), 0.0
    else:
        lower, below = bounds[index - 1], counts[index - 1]
    in_bucket = counts[index] - below
    return lower + (upper - lower) * ((rank - below) / in_bucket)


def _monotonic(counts: list[float]) -> list[float]:
    """Cumulative counts never decrease; scrapes racing observations can break that by a few counts."""
    fixed: list[float] = []
    for count in counts:
        fixed.append(max(count, fixed[-1]) if fixed else count)
    return fixed


@dataclass(frozen=True)
class Counts:
    """Cumulative counters of one revision in one scrape, and when the process counting them started."""

    buckets: dict[float, float]
    requests: dict[str, float]
    started: float | None = None
    """process_start_time_seconds when the page has it: the counters were zero then."""

    @property
    def samples(self) -> float:
        return self.buckets.get(math.inf, 0.0)

    def minus(self, earlier: Counts) -> Counts:
        """Increase since `earlier`; a counter that went down means the process restarted from zero."""
        if self.samples < earlier.samples or any(
            value < earlier.requests.get(outcome, 0.0) for outcome, value in self.requests.items()
        ):
            return self
        return Counts(
            buckets={le: count - earlier.buckets.get(le, 0.0) for le, count in self.buckets.items()},
            requests={
                outcome: n - earlier.requests.get(outcome, 0.0) for outcome, n in self.requests.items()
            },
        )

    @staticmethod
    def total(parts: Iterable[Counts]) -> Counts:
        buckets: dict[float, float] = {}
        requests: dict[str, float] = {}
        for part in parts:
            for le, count in part.buckets.items():
                buckets[le] = buckets.get(le, 0.0) + count
            for outcome, n in part.requests.items():
                requests[outcome] = requests.get(outcome, 0.0) + n
        return Counts(buckets, requests)


def parse_counts(text: str, service: str, revision: str) -> Counts:
    """The latency histogram and request counters of one service revision in a /metrics page."""
    buckets: dict[float, float] = {}
    requests: dict[str, float] = {}
    started = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == PROCESS_START_METRIC:
                started = sample.value
                continue
            if labels.get("service") != service or labels.get("revision") != revision:
                continue
            if sample.name == f"{LATENCY_METRIC}_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name == REQUESTS_METRIC:
                outcome = labels.get("outcome", "")
                requests[outcome] = requests.get(outcome, 0.0) + sample.value
    return Counts(buckets, requests, started)


def parse_decisions(text: str, service: str, revision: str) -> Counts:
    """A caller's shadow comparisons of one canary revision of `service` in a /metrics page, by outcome
    (as `requests`: the same cumulative counters, no histogram)."""
    outcomes: dict[str, float] = {}
    started = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == PROCESS_START_METRIC:
                started = sample.value
            elif (
                sample.name == DECISIONS_METRIC
                and labels.get("peer") == service
                and labels.get("peer_revision") == revision
            ):
                outcome = labels.get("outcome", "")
                outcomes[outcome] = outcomes.get(outcome, 0.0) + sample.value
    return Counts({}, outcomes, started)


class ScrapeProvider:
    """Figures straight from the pods' /metrics: bucket deltas between now and a scrape a window ago.

    It keeps each pod's scrapes of the last window in memory. A pod seen for the first time has nothing
    to subtract from, unless its page says (process_start_time_seconds) that its process started inside
    the window: then its counters started at zero inside the window, and all of them count. Otherwise
    that interval is Inconclusive, which is safe: it never passes (after an operator restart, say).
    """

    def __init__(
        self,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.timeout = timeout
        self.clock = clock
        self.wall_clock = wall_clock
        self._histories: dict[tuple[str, str, str, str, str], deque[tuple[float, Counts]]] = {}

    async def measure(self, target: Target, window: str) -> Measurement:
        window_counts = await self._window_counts(target, window, parse_counts)
        try:
            p99 = bucket_quantile(QUANTILE, window_counts.buckets) if window_counts.samples > 0 else None
        except ValueError as error:
            raise ProviderUnavailable(f"{LATENCY_METRIC} of revision {target.revision}: {error}") from error
        return Measurement(
            p99_seconds=p99,
            samples=round(window_counts.samples),
            requests=round(sum(window_counts.requests.values())),
            errors=round(window_counts.requests.get(ERROR_OUTCOME, 0.0)),
        )

    async def decisions(self, target: Target, window: str) -> Decisions:
        window_counts = await self._window_counts(target, window, parse_decisions)
        return Decisions.from_outcomes(window_counts.requests)

    async def _window_counts(
        self, target: Target, window: str, parse: Callable[[str, str, str], Counts]
    ) -> Counts:
        """The increase of the counters `parse` reads over the window, summed over the target's pods."""
        if not target.endpoints:
            raise ProviderUnavailable(f"revision {target.revision} has no ready pods to scrape")
        span = parse_duration(window)
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            pages = await asyncio.gather(
                *(self._scrape(client, endpoint) for endpoint in target.endpoints), return_exceptions=True
            )
        texts: list[str] = []
        for page in pages:
            if isinstance(page, BaseException):
                raise page
            texts.append(page)
        now = self.clock()
        self._expire(now)
        deltas = []
        for endpoint, page in zip(target.endpoints, texts, strict=True):
            try:
                counts = parse(page, target.service, target.revision)
            except ValueError as error:
                raise ProviderUnavailable(f"{endpoint}/metrics is not Prometheus text: {error}") from error
            deltas.append(self._increase(endpoint, target, parse.__name__, counts, now, span))
        return Counts.total(deltas)

    async def _scrape(self, client: httpx.AsyncClient, endpoint: str) -> str:
        try:
            response = await client.get(f"http://{endpoint}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ProviderUnavailable(f"{endpoint}/metrics: {error or type(error).__name__}") from error
        return response.text

    def _increase(
        self, endpoint: str, target: Target, kind: str, counts: Counts, now: float, span: float
    ) -> Counts:
        """Store this scrape (of the counters `kind` names); answer the increase since the newest scrape at
        least `span` old."""
        key = (target.namespace, target.service, target.revision, endpoint, kind)
        scrapes = self._histories.setdefault(key, deque())
        while len(scrapes) > 1 and scrapes[1][0] <= now - span:
            scrapes.popleft()
        if scrapes:
            baseline = scrapes[0][1]
        elif counts.started is not None and counts.started >= self.wall_clock() - span:
            baseline = Counts({}, {})
        else:
            baseline = counts
        scrapes.append((now, counts))
        return counts.minus(baseline)

    def _expire(self, now: float) -> None:
        """Forget pods not scraped for a while (gone, or their revision no longer analysed)."""
        for key in [
            key for key, scrapes in self._histories.items() if scrapes[-1][0] < now - STALE_HISTORY_SECONDS
        ]:
            del self._histories[key]


def from_analysis(analysis: Analysis) -> ScrapeProvider:
    return ScrapeProvider(timeout=analysis.scrape.timeoutSeconds)
