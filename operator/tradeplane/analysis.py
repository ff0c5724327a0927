"""The canary analysis edge: measure a revision through its configured provider, then judge the figures.

The reconcile asks `measure` for a verdict when `rollout.analysis_due` says so and hands it to the state
machine. Providers are in `providers/`, the verdict's rules in `judge.py`. A state shadow's canary is
compared with the stable by state: its pods' and the stable pods' digest histories, read from their
metrics ports as the scrape provider reads /metrics (whichever provider judges the trading gates), and
compared in `state_comparison.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime

import httpx

from tradeplane.api import AnalysisResult, TradingServiceSpec, TradingServiceStatus
from tradeplane.judge import gates_for, judge
from tradeplane.measurement import (
    Decisions,
    Measurement,
    MetricsProvider,
    ProviderUnavailable,
    Series,
    Target,
)
from tradeplane.providers import Providers
from tradeplane.state_comparison import BadDigests, History, compare_states, parse_history
from tradeplane_services.catalog import CUSTOM, DIGESTS_ROUTE


class NotACanary(ValueError):
    """Analysis was asked of a service with no canary and stable revision to compare."""


def metric_service(name: str, spec: TradingServiceSpec) -> str:
    """The `service` label the pods export: a bundled component names itself, a custom one by resource."""
    return name if spec.component == CUSTOM else str(spec.component)


async def measure(
    providers: Providers,
    spec: TradingServiceSpec,
    status: TradingServiceStatus,
    namespace: str,
    name: str,
    canary_endpoints: Sequence[str],
    stable_endpoints: Sequence[str],
    now: datetime,
    caller_endpoints: Sequence[str] = (),
) -> AnalysisResult:
    """Judge the canary over the analysis window; the stable too when a gate is relative to it, and the
    callers' comparisons of its decisions when a decision-mismatch gate is set."""
    if status.canaryRevision is None or status.stableRevision is None:
        raise NotACanary(f"{namespace}/{name} has no canary to analyse (phase {status.phase})")
    analysis = spec.rollout.analysis
    service = metric_service(name, spec)
    provider = providers.for_analysis(analysis)
    canary_target = Target(namespace, service, status.canaryRevision, tuple(canary_endpoints))
    state_shadow = spec.rollout.stateShadow
    gates = gates_for(spec.slo, analysis, serves_clients=state_shadow is None)
    needs = tuple(dict.fromkeys(series for gate in gates for series in gate.needs))
    canary: Measurement | ProviderUnavailable = Measurement(None, 0, 0, 0)
    if gates:  # none: a state shadow without trading gates reads only the digests
        canary = await _measure(provider, canary_target, analysis.window, needs)
    baseline = None
    if any(gate.relative for gate in gates):
        stable_target = Target(namespace, service, status.stableRevision, tuple(stable_endpoints))
        baseline = await _measure(provider, stable_target, analysis.window, needs)
    decisions: Decisions | ProviderUnavailable | None = None
    if state_shadow is not None:
        try:
            canary_states, stable_states = await asyncio.gather(
                digest_histories(canary_endpoints, state_shadow.timeoutSeconds),
                digest_histories(stable_endpoints, state_shadow.timeoutSeconds),
            )
            decisions = compare_states(canary_states, stable_states)
        except ProviderUnavailable as unavailable:
            decisions = unavailable
    elif spec.slo.maxDecisionMismatch is not None:
        callers = Target(namespace, service, status.canaryRevision, tuple(caller_endpoints))
        try:
            decisions = await provider.decisions(callers, analysis.window)
        except ProviderUnavailable as unavailable:
            decisions = unavailable
    return judge(
        canary,
        baseline,
        spec.slo,
        analysis,
        status.canaryRevision,
        now,
        decisions,
        state_shadow=state_shadow is not None,
    )


async def digest_histories(endpoints: Sequence[str], timeout: float) -> dict[str, History]:
    """Each pod's digests by log sequence, from DIGESTS_ROUTE on its metrics port."""
    if not endpoints:
        raise ProviderUnavailable("no ready pods to read state digests from")
    async with httpx.AsyncClient(timeout=timeout) as client:
        documents = await asyncio.gather(*(_digests(client, endpoint) for endpoint in endpoints))
    try:
        return {
            endpoint: parse_history(endpoint, document)
            for endpoint, document in zip(endpoints, documents, strict=True)
        }
    except BadDigests as error:
        raise ProviderUnavailable(str(error)) from error


async def _digests(client: httpx.AsyncClient, endpoint: str) -> object:
    url = f"http://{endpoint}{DIGESTS_ROUTE}"
    try:
        response = await client.get(url)
        response.raise_for_status()
        return json.loads(response.text)
    except (httpx.HTTPError, ValueError) as error:
        raise ProviderUnavailable(f"{url}: {error or type(error).__name__}") from error


async def _measure(
    provider: MetricsProvider, target: Target, window: str, needs: Sequence[Series]
) -> Measurement | ProviderUnavailable:
    """The revision's figures and the series its gates read, or why the provider could not give them."""
    try:
        measured = await provider.measure(target, window)
        series = {wanted: await provider.series(target, window, wanted) for wanted in needs}
    except ProviderUnavailable as unavailable:
        return unavailable
    return dataclasses.replace(measured, series=series)
