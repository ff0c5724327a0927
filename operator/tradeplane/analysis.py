"""Canary analysis: metric providers behind one small interface, and the gates that judge their figures.

A provider measures one revision of one service over a window: p99 latency, the number of latency
samples, requests and errors. Two providers exist:

- `PrometheusProvider` asks a Prometheus server through its HTTP API with PromQL templates;
- `ScrapeProvider` reads the pods' `/metrics` itself and computes p99 from histogram bucket deltas over
  the window, so a cluster without Prometheus still gets analysed.

Both compute p99 the way Prometheus' `histogram_quantile` does (linear interpolation inside the bucket), so
the two agree on the same data. `judge` turns the figures into a verdict; it is pure.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tradeplane.api import SLO, Analysis, AnalysisResult, Verdict, now_iso, parse_duration

LATENCY_METRIC = "tradeplane_request_duration_seconds"
REQUESTS_METRIC = "tradeplane_requests_total"
PROCESS_START_METRIC = "process_start_time_seconds"
ERROR_OUTCOME = "error"
QUANTILE = 0.99
PLACEHOLDERS = ("service", "namespace", "revision", "window")

# Templates: {service}, {namespace}, {revision} and {window} are filled in, other braces are PromQL's.
_SELECTED = '{service="{service}",revision="{revision}"}[{window}]'
DEFAULT_P99_QUERY = f"histogram_quantile({QUANTILE}, sum by (le) (rate({LATENCY_METRIC}_bucket{_SELECTED})))"
SAMPLES_QUERY = f"sum(increase({LATENCY_METRIC}_count{_SELECTED}))"
REQUESTS_QUERY = f"sum by (outcome) (increase({REQUESTS_METRIC}{_SELECTED}))"
STALE_HISTORY_SECONDS = 600.0


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
class Measurement:
    """Figures of one revision over one window. p99 is None when the window saw no requests."""

    p99_seconds: float | None
    samples: int
    requests: int
    errors: int

    @property
    def p99_micros(self) -> float | None:
        return None if self.p99_seconds is None else round(self.p99_seconds * 1e6, 1)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


class MetricsProvider(Protocol):
    async def measure(self, target: Target, window: str) -> Measurement: ...


def render_query(template: str, target: Target, window: str) -> str:
    """Fill `{service}`, `{namespace}`, `{revision}` and `{window}`; every other brace is PromQL's."""
    values = {
        "service": _label_value(target.service),
        "namespace": _label_value(target.namespace),
        "revision": _label_value(target.revision),
        "window": window,
    }
    return re.sub(r"\{(" + "|".join(PLACEHOLDERS) + r")\}", lambda match: values[match.group(1)], template)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


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


class PrometheusProvider:
    """Figures from a Prometheus server's HTTP API (`/api/v1/query`)."""

    def __init__(self, url: str, p99_query: str | None = None, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.p99_query = p99_query or DEFAULT_P99_QUERY
        self.timeout = timeout

    async def measure(self, target: Target, window: str) -> Measurement:
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout) as client:
            p99, samples, by_outcome = await asyncio.gather(
                self._query(client, render_query(self.p99_query, target, window)),
                self._query(client, render_query(SAMPLES_QUERY, target, window)),
                self._query(client, render_query(REQUESTS_QUERY, target, window)),
            )
        outcomes = {labels.get("outcome", ""): value for labels, value in by_outcome if not math.isnan(value)}
        p99_values = [value for _, value in p99 if not math.isnan(value)]
        return Measurement(
            p99_seconds=p99_values[0] if p99_values else None,
            samples=round(sum(value for _, value in samples if not math.isnan(value))),
            requests=round(sum(outcomes.values())),
            errors=round(outcomes.get(ERROR_OUTCOME, 0.0)),
        )

    async def _query(self, client: httpx.AsyncClient, query: str) -> list[tuple[dict[str, str], float]]:
        try:
            response = await client.get("/api/v1/query", params={"query": query})
            body = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise ProviderUnavailable(f"prometheus at {self.url}: {error or type(error).__name__}") from error
        if body.get("status") != "success":
            raise ProviderUnavailable(
                f"prometheus at {self.url} refused {query!r}: {body.get('errorType')}: {body.get('error')}"
            )
        data = body["data"]
        if data.get("resultType") != "vector":
            raise ProviderUnavailable(
                f"{query!r} gave a {data.get('resultType')}, expected an instant vector"
            )
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]


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
        self._histories: dict[tuple[str, str, str, str], deque[tuple[float, Counts]]] = {}

    async def measure(self, target: Target, window: str) -> Measurement:
        if not target.endpoints:
            raise ProviderUnavailable(f"revision {target.revision} has no ready pods to scrape")
        span = parse_duration(window)
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            pages = await asyncio.gather(
                *(self._scrape(client, endpoint) for endpoint in target.endpoints), return_exceptions=True
            )
        for page in pages:
            if isinstance(page, BaseException):
                raise page
        now = self.clock()
        self._expire(now)
        deltas = []
        for endpoint, page in zip(target.endpoints, pages, strict=True):
            assert isinstance(page, str)
            try:
                counts = parse_counts(page, target.service, target.revision)
            except ValueError as error:
                raise ProviderUnavailable(f"{endpoint}/metrics is not Prometheus text: {error}") from error
            deltas.append(self._increase(endpoint, target, counts, now, span))
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

    async def _scrape(self, client: httpx.AsyncClient, endpoint: str) -> str:
        try:
            response = await client.get(f"http://{endpoint}/metrics")
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ProviderUnavailable(f"{endpoint}/metrics: {error or type(error).__name__}") from error
        return response.text

    def _increase(self, endpoint: str, target: Target, counts: Counts, now: float, span: float) -> Counts:
        """Store this scrape; answer the increase since the newest scrape at least `span` old."""
        key = (target.namespace, target.service, target.revision, endpoint)
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


def judge(
    canary: Measurement | ProviderUnavailable,
    baseline: Measurement | ProviderUnavailable | None,
    slo: SLO,
    analysis: Analysis,
    revision: str,
    now: datetime,
) -> AnalysisResult:
    """The verdict on one interval. Too few samples is Inconclusive, never Pass.

    Gates in order: provider reachable, samples >= minSamples, p99 <= SLO, error rate <= max, and when
    maxRegressionVsBaseline is set, canary p99 <= stable p99 x factor over the same window (a stable
    without enough samples makes that gate Inconclusive). The first gate that does not pass decides.
    """
    window = analysis.window

    def result(
        verdict: Verdict,
        gate: str,
        message: str,
        value: float | None = None,
        threshold: float | None = None,
        baseline_p99: float | None = None,
    ) -> AnalysisResult:
        measured = canary if isinstance(canary, Measurement) else Measurement(None, 0, 0, 0)
        return AnalysisResult(
            verdict=verdict,
            gate=gate,
            value=value,
            threshold=threshold,
            p99Micros=measured.p99_micros,
            baselineP99Micros=baseline_p99,
            errorRate=measured.error_rate,
            samples=measured.samples,
            window=window,
            revision=revision,
            message=message,
            time=now_iso(now),
        )

    if isinstance(canary, ProviderUnavailable):
        return result(Verdict.INCONCLUSIVE, "provider", str(canary))
    p99, samples = canary.p99_micros, canary.samples
    if samples < analysis.minSamples or p99 is None:
        return result(
            Verdict.INCONCLUSIVE,
            "samples",
            f"{samples} samples in {window}, fewer than minSamples {analysis.minSamples}",
            samples,
            analysis.minSamples,
        )
    if p99 > slo.p99LatencyMicros:
        return result(
            Verdict.FAIL,
            "p99",
            f"p99 {p99}us over {window} exceeds the SLO {slo.p99LatencyMicros}us ({samples} samples)",
            p99,
            slo.p99LatencyMicros,
        )
    error_rate = canary.error_rate
    if error_rate is None:
        return result(
            Verdict.INCONCLUSIVE,
            "errorRate",
            f"no {REQUESTS_METRIC} for revision {revision}: error rate unknown",
        )
    if error_rate > slo.maxErrorRate:
        return result(
            Verdict.FAIL,
            "errorRate",
            f"error rate {error_rate:.4g} ({canary.errors}/{canary.requests}) over {window} exceeds "
            f"{slo.maxErrorRate}",
            error_rate,
            slo.maxErrorRate,
        )
    factor = analysis.maxRegressionVsBaseline
    baseline_p99 = None
    if factor is not None:
        if not isinstance(baseline, Measurement):
            reason = "not measured" if baseline is None else str(baseline)
            return result(Verdict.INCONCLUSIVE, "baseline", f"stable baseline unavailable: {reason}")
        baseline_p99 = baseline.p99_micros
        if baseline.samples < analysis.minSamples or baseline_p99 is None:
            return result(
                Verdict.INCONCLUSIVE,
                "baseline",
                f"stable baseline has {baseline.samples} samples in {window}, fewer than minSamples "
                f"{analysis.minSamples}",
                baseline.samples,
                analysis.minSamples,
            )
        limit = round(baseline_p99 * factor, 1)
        if p99 > limit:
            return result(
                Verdict.FAIL,
                "baseline",
                f"p99 {p99}us exceeds stable p99 {baseline_p99}us x {factor} = {limit}us over {window}",
                p99,
                limit,
                baseline_p99,
            )
    return result(
        Verdict.PASS,
        "p99",
        f"all gates passed on {samples} samples",
        p99,
        slo.p99LatencyMicros,
        baseline_p99,
    )
