"""The scrape provider: figures straight from the pods' /metrics, so a cluster without Prometheus still gets
analysed. p99 comes from histogram bucket deltas over the window, interpolated as `histogram_quantile`."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol, Self, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tradeplane.api import Analysis, parse_duration
from tradeplane.measurement import (
    ERROR_OUTCOME,
    LATENCY_METRIC,
    QUANTILE,
    REQUESTS_METRIC,
    SHADOW_DECISIONS_METRIC,
    Decisions,
    Measurement,
    ProviderUnavailable,
    Series,
    Target,
)

PROCESS_START_METRIC = "process_start_time_seconds"
STALE_HISTORY_SECONDS = 600.0
BASELINE_SECONDS = 1.0
"""A pod first seen takes a baseline scrape this long before its figures (capped at the window)."""


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


@dataclass(frozen=True)
class Values:
    """One series of one revision in one scrape, per value of its `by` label."""

    values: dict[str, float]
    started: float | None = None

    def minus(self, earlier: Values) -> Values:
        """Increase since `earlier`; a counter that went down means the process restarted from zero."""
        if any(value < earlier.values.get(key, 0.0) for key, value in self.values.items()):
            return self
        return Values({key: value - earlier.values.get(key, 0.0) for key, value in self.values.items()})


OWN_LABELS = ("service", "revision")
"""The labels naming the service and revision a series belongs to."""
PEER_LABELS = ("peer", "peer_revision")
"""The labels naming the peer a caller's series is about (its shadow comparisons of a canary)."""


def _page(text: str) -> tuple[list[Sample], float | None]:
    """The samples of a /metrics page, and when its process started (process_start_time_seconds)."""
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    started = next((sample.value for sample in samples if sample.name == PROCESS_START_METRIC), None)
    return samples, started


def parse_series(
    text: str, series: Series, service: str, revision: str, labels: tuple[str, str] = OWN_LABELS
) -> Values:
    """The samples named `series.metric` of one service revision (named by `labels`) in a /metrics page,
    summed by `by`."""
    samples, started = _page(text)
    service_label, revision_label = labels
    values: dict[str, float] = {}
    for sample in samples:
        if (
            sample.name == series.metric
            and sample.labels.get(service_label) == service
            and sample.labels.get(revision_label) == revision
        ):
            key = sample.labels.get(series.by, "") if series.by else ""
            values[key] = values.get(key, 0.0) + sample.value
    return Values(values, started)


class Cumulative(Protocol):
    """Counters of one scrape: they know when their process started and what they grew by."""

    @property
    def started(self) -> float | None: ...

    def minus(self, earlier: Self) -> Self: ...


Scraped = TypeVar("Scraped", bound=Cumulative)


def parse_counts(text: str, service: str, revision: str) -> Counts:
    """The latency histogram and request counters of one service revision in a /metrics page."""
    samples, started = _page(text)
    buckets: dict[float, float] = {}
    requests: dict[str, float] = {}
    for sample in samples:
        labels = sample.labels
        if labels.get("service") != service or labels.get("revision") != revision:
            continue
        if sample.name == f"{LATENCY_METRIC}_bucket":
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + sample.value
        elif sample.name == REQUESTS_METRIC:
            outcome = labels.get("outcome", "")
            requests[outcome] = requests.get(outcome, 0.0) + sample.value
    return Counts(buckets, requests, started)


SHADOW_DECISIONS = Series(SHADOW_DECISIONS_METRIC, by="outcome")
"""The callers' comparisons of a canary, by outcome (its service and revision in PEER_LABELS)."""

HistoryKey = tuple[str, str, str, str, Series | None]
"""namespace, service, revision, endpoint, and the series (None: the latency histogram and requests)."""


class ScrapeProvider:
    """Figures straight from the pods' /metrics: bucket deltas between now and a scrape a window ago.

    It keeps each pod's scrapes of the last window in memory. A pod seen for the first time has nothing
    to subtract from, unless its page says (process_start_time_seconds) that its process started inside
    the window: then its counters started at zero inside the window, and all of them count. Otherwise
    (a new leader after a failover, an operator restart) the pod is scraped once as the baseline and
    again `baseline_seconds` later: the first figures cover that short span instead of the whole window,
    as a young history always does (the history covers less than the window until it is a window old),
    and `minSamples` still decides whether they are enough. So a new leader's first analysis is not
    wasted, and never passes on figures older than the baseline.
    """

    def __init__(
        self,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        baseline_seconds: float = BASELINE_SECONDS,
    ) -> None:
        self.timeout = timeout
        self.clock = clock
        self.wall_clock = wall_clock
        self.baseline_seconds = baseline_seconds
        self._histories: dict[HistoryKey, deque[tuple[float, Cumulative]]] = {}

    async def measure(self, target: Target, window: str) -> Measurement:
        span = parse_duration(window)
        now, scraped = await self._scraped(
            target, span, None, lambda page: parse_counts(page, target.service, target.revision)
        )
        deltas = [self._increase(key, counts, Counts({}, {}), now, span) for key, counts in scraped]
        window_counts = Counts.total(deltas)
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
        return Decisions.from_outcomes(await self._totals(target, window, SHADOW_DECISIONS, PEER_LABELS))

    async def series(self, target: Target, window: str, series: Series) -> dict[str, float]:
        """A counter's increase over the window (as for the latency histogram) or a gauge's value now,
        summed over the revision's pods."""
        if series.metric is None:
            raise ProviderUnavailable("the scrape provider reads metrics by name; PromQL needs prometheus")
        return await self._totals(target, window, series, OWN_LABELS)

    async def _totals(
        self, target: Target, window: str, series: Series, labels: tuple[str, str]
    ) -> dict[str, float]:
        span = parse_duration(window)
        parse = partial(
            parse_series, series=series, service=target.service, revision=target.revision, labels=labels
        )
        now, scraped = await self._scraped(target, span, series, parse)
        totals: dict[str, float] = {}
        for key, parsed in scraped:
            values = self._increase(key, parsed, Values({}), now, span) if series.counter else parsed
            for label, value in values.values.items():
                totals[label] = totals.get(label, 0.0) + value
        return totals

    async def _scraped(
        self, target: Target, span: float, series: Series | None, parse: Callable[[str], Scraped]
    ) -> tuple[float, list[tuple[HistoryKey, Scraped]]]:
        """Now, and every pod's parsed page under its history key. A pod first seen whose process did not
        start inside the window gets its baseline now and is scraped again `baseline_seconds` later."""
        now, scraped = await self._parsed_pages(target, series, parse)
        counted = series is None or series.counter
        unknown = [
            (key, parsed)
            for key, parsed in scraped
            if counted and key not in self._histories and not self._started_inside(parsed, span)
        ]
        if not unknown:
            return now, scraped
        for key, parsed in unknown:
            self._histories[key] = deque([(now, parsed)])
        await asyncio.sleep(min(self.baseline_seconds, span))
        return await self._parsed_pages(target, series, parse)

    async def _parsed_pages(
        self, target: Target, series: Series | None, parse: Callable[[str], Scraped]
    ) -> tuple[float, list[tuple[HistoryKey, Scraped]]]:
        if not target.endpoints:
            raise ProviderUnavailable(f"revision {target.revision} has no ready pods to scrape")
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            pages = await asyncio.gather(
                *(self._scrape(client, endpoint) for endpoint in target.endpoints), return_exceptions=True
            )
        parsed: list[tuple[HistoryKey, Scraped]] = []
        for endpoint, page in zip(target.endpoints, pages, strict=True):
            if isinstance(page, BaseException):
                raise page
            try:
                scraped = parse(page)
            except ValueError as error:
                raise ProviderUnavailable(f"{endpoint}/metrics is not Prometheus text: {error}") from error
            parsed.append(((target.namespace, target.service, target.revision, endpoint, series), scraped))
        now = self.clock()
        self._expire(now)
        return now, parsed

    async def _scrape(self, client: httpx.AsyncClient, endpoint: str) -> str:
        try:
            response = await client.get(f"http://{endpoint}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ProviderUnavailable(f"{endpoint}/metrics: {error or type(error).__name__}") from error
        return response.text

    def _started_inside(self, scraped: Cumulative, span: float) -> bool:
        """Did the pod's process start inside the window? Then its counters were zero at the start."""
        return scraped.started is not None and scraped.started >= self.wall_clock() - span

    def _increase(self, key: HistoryKey, counts: Scraped, zero: Scraped, now: float, span: float) -> Scraped:
        """Store this scrape; answer the increase since the newest scrape at least `span` old."""
        scrapes: deque[tuple[float, Scraped]] = self._histories.setdefault(key, deque())  # type: ignore[assignment]
        while len(scrapes) > 1 and scrapes[1][0] <= now - span:
            scrapes.popleft()
        if scrapes:
            baseline = scrapes[0][1]
        elif self._started_inside(counts, span):
            baseline = zero
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
