"""The rollout's edge: measuring a canary through the configured provider, and the operator's metrics.

The reconcile asks `measure` for a verdict when `rollout.analysis_due` says so, hands it to the state
machine, applies the plan, then calls `record` with the status it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from prometheus_client import Counter, Gauge

from tradeplane.analysis import (
    Measurement,
    MetricsProvider,
    PrometheusProvider,
    ProviderUnavailable,
    ScrapeProvider,
    Target,
    judge,
)
from tradeplane.api import AnalysisResult, Phase, TradingServiceSpec, TradingServiceStatus
from tradeplane_services.catalog import CUSTOM

# One for the operator's life: it keeps each pod's recent scrapes, the start of every window.
SCRAPE = ScrapeProvider()

ROLLOUT_PHASE = Gauge(
    "tradeplane_rollout_phase", "1 for the phase a TradingService is in", ["namespace", "name", "phase"]
)
ROLLOUT_WEIGHT = Gauge("tradeplane_rollout_weight", "Intended canary weight, percent", ["namespace", "name"])
ROLLOUT_ACTUAL_WEIGHT = Gauge(
    "tradeplane_rollout_actual_weight",
    "Canary weight as served (ready replica ratio or route weight)",
    ["namespace", "name"],
)
ROLLOUT_STEP = Gauge(
    "tradeplane_rollout_step", "Current rollout step, 0 when no canary", ["namespace", "name"]
)
ANALYSIS_VALUE = Gauge(
    "tradeplane_rollout_analysis_value",
    "The deciding gate's value in the last analysis",
    ["namespace", "name", "gate"],
)
ANALYSIS_THRESHOLD = Gauge(
    "tradeplane_rollout_analysis_threshold",
    "The deciding gate's threshold in the last analysis",
    ["namespace", "name", "gate"],
)
ROLLBACKS = Counter("tradeplane_rollbacks", "Canary rollbacks by reason", ["namespace", "name", "reason"])
ROLLOUT_METRICS: tuple[Gauge | Counter, ...] = (
    ROLLOUT_PHASE,
    ROLLOUT_WEIGHT,
    ROLLOUT_ACTUAL_WEIGHT,
    ROLLOUT_STEP,
    ANALYSIS_VALUE,
    ANALYSIS_THRESHOLD,
    ROLLBACKS,
)


def metric_service(name: str, spec: TradingServiceSpec) -> str:
    """The `service` label the pods export: a bundled component names itself, a custom one by resource."""
    return name if spec.component == CUSTOM else str(spec.component)


def provider_for(spec: TradingServiceSpec) -> MetricsProvider:
    analysis = spec.rollout.analysis
    if analysis.provider == "scrape":
        return SCRAPE
    assert analysis.prometheusUrl is not None  # the models refuse the prometheus provider without one
    return PrometheusProvider(analysis.prometheusUrl, analysis.query)


async def measure(
    spec: TradingServiceSpec,
    status: TradingServiceStatus,
    namespace: str,
    name: str,
    canary_endpoints: Sequence[str],
    stable_endpoints: Sequence[str],
    now: datetime,
) -> AnalysisResult:
    """Judge the canary over the analysis window; the stable too when a regression gate is set."""
    assert status.canaryRevision is not None and status.stableRevision is not None
    analysis = spec.rollout.analysis
    service = metric_service(name, spec)
    provider = provider_for(spec)
    canary_target = Target(namespace, service, status.canaryRevision, tuple(canary_endpoints))
    canary = await _measure(provider, canary_target, analysis.window)
    baseline = None
    if analysis.maxRegressionVsBaseline is not None:
        stable_target = Target(namespace, service, status.stableRevision, tuple(stable_endpoints))
        baseline = await _measure(provider, stable_target, analysis.window)
    return judge(canary, baseline, spec.slo, analysis, status.canaryRevision, now)


async def _measure(
    provider: MetricsProvider, target: Target, window: str
) -> Measurement | ProviderUnavailable:
    try:
        return await provider.measure(target, window)
    except ProviderUnavailable as unavailable:
        return unavailable


def record(namespace: str, name: str, status: TradingServiceStatus, rollback_reason: str | None) -> None:
    """Export the rollout's state as the operator's metrics."""
    for phase in Phase:
        ROLLOUT_PHASE.labels(namespace, name, phase.value).set(1 if status.phase == phase else 0)
    ROLLOUT_WEIGHT.labels(namespace, name).set(status.weight)
    ROLLOUT_ACTUAL_WEIGHT.labels(namespace, name).set(status.actualWeight)
    ROLLOUT_STEP.labels(namespace, name).set(status.step or 0)
    # One series per service: the gate that decided the last analysis, not every gate ever seen.
    ANALYSIS_VALUE.remove_by_labels({"namespace": namespace, "name": name})
    ANALYSIS_THRESHOLD.remove_by_labels({"namespace": namespace, "name": name})
    last = status.lastAnalysis
    if last is not None and last.gate is not None:
        if last.value is not None:
            ANALYSIS_VALUE.labels(namespace, name, last.gate).set(last.value)
        if last.threshold is not None:
            ANALYSIS_THRESHOLD.labels(namespace, name, last.gate).set(last.threshold)
    if rollback_reason is not None:
        ROLLBACKS.labels(namespace, name, rollback_reason).inc()


def forget(namespace: str, name: str) -> None:
    """Drop a deleted TradingService's series."""
    for metric in ROLLOUT_METRICS:
        metric.remove_by_labels({"namespace": namespace, "name": name})
