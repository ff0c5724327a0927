"""The prometheus provider: figures from a Prometheus server's HTTP API, with PromQL templates."""

from __future__ import annotations

import asyncio
import math
import re

import httpx

from tradeplane.api import Analysis
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

PLACEHOLDERS = ("service", "namespace", "revision", "window")
# Templates: {service}, {namespace}, {revision} and {window} are filled in, other braces are PromQL's.
_LABELS = '{service="{service}",revision="{revision}"}'
_SELECTED = _LABELS + "[{window}]"
DEFAULT_P99_QUERY = f"histogram_quantile({QUANTILE}, sum by (le) (rate({LATENCY_METRIC}_bucket{_SELECTED})))"
SAMPLES_QUERY = f"sum(increase({LATENCY_METRIC}_count{_SELECTED}))"
REQUESTS_QUERY = f"sum by (outcome) (increase({REQUESTS_METRIC}{_SELECTED}))"
# Counted by the callers (labelled with their own service and revision): the canary is the peer.
_CANARY_AS_PEER = '{peer="{service}",peer_revision="{revision}"}[{window}]'
DECISIONS_QUERY = f"sum by (outcome) (increase({SHADOW_DECISIONS_METRIC}{_CANARY_AS_PEER}))"


def render_query(template: str, target: Target, window: str) -> str:
    """Fill `{service}`, `{namespace}`, `{revision}` and `{window}`; every other brace is PromQL's."""
    values = {
        "service": _label_value(target.service),
        "namespace": _label_value(target.namespace),
        "revision": _label_value(target.revision),
        "window": window,
    }
    return re.sub(r"\{(" + "|".join(PLACEHOLDERS) + r")\}", lambda match: values[match.group(1)], template)


def series_query(series: Series) -> str:
    """The PromQL template of a series: its own query, or the metric's increase (counter) or value
    (gauge) for the revision, summed by the `by` label."""
    if series.query is not None:
        return series.query
    if series.metric is None:
        raise ValueError("a series needs a metric or a query")
    selected = f"increase({series.metric}{_SELECTED})" if series.counter else series.metric + _LABELS
    return f"sum by ({series.by}) ({selected})" if series.by else f"sum({selected})"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


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
        outcomes = _by_outcome(by_outcome)
        p99_values = [value for _, value in p99 if not math.isnan(value)]
        return Measurement(
            p99_seconds=p99_values[0] if p99_values else None,
            samples=round(sum(value for _, value in samples if not math.isnan(value))),
            requests=round(sum(outcomes.values())),
            errors=round(outcomes.get(ERROR_OUTCOME, 0.0)),
        )

    async def series(self, target: Target, window: str, series: Series) -> dict[str, float]:
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout) as client:
            results = await self._query(client, render_query(series_query(series), target, window))
        values: dict[str, float] = {}
        for labels, value in results:
            if not math.isnan(value):
                key = labels.get(series.by, "") if series.by else ""
                values[key] = values.get(key, 0.0) + value
        return values

    async def decisions(self, target: Target, window: str) -> Decisions:
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout) as client:
            by_outcome = await self._query(client, render_query(DECISIONS_QUERY, target, window))
        return Decisions.from_outcomes(_by_outcome(by_outcome))

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


def from_analysis(analysis: Analysis) -> PrometheusProvider:
    settings = analysis.prometheus
    if settings is None:
        # The models refuse this spec; a caller that skipped them gets an error, not a default.
        raise ValueError("spec.rollout.analysis.prometheus: the prometheus provider needs prometheus.url")
    return PrometheusProvider(settings.url, settings.p99Query)


def _by_outcome(vector: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    return {labels.get("outcome", ""): value for labels, value in vector if not math.isnan(value)}
