"""The canary analysis edge: measure a revision through its configured provider, then judge the figures.

The reconcile asks `measure` for a verdict when `rollout.analysis_due` says so and hands it to the state
machine. Providers are in `providers/`, the verdict's rules in `judge.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

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
from tradeplane_services.catalog import CUSTOM


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
    gates = gates_for(spec.slo, analysis)
    needs = tuple(dict.fromkeys(series for gate in gates for series in gate.needs))
    canary = await _measure(provider, canary_target, analysis.window, needs)
    baseline = None
    if any(gate.relative for gate in gates):
        stable_target = Target(namespace, service, status.stableRevision, tuple(stable_endpoints))
        baseline = await _measure(provider, stable_target, analysis.window, needs)
    decisions: Decisions | ProviderUnavailable | None = None
    if spec.slo.maxDecisionMismatch is not None:
        callers = Target(namespace, service, status.canaryRevision, tuple(caller_endpoints))
        try:
            decisions = await provider.decisions(callers, analysis.window)
        except ProviderUnavailable as unavailable:
            decisions = unavailable
    return judge(canary, baseline, spec.slo, analysis, status.canaryRevision, now, decisions)


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
