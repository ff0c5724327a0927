"""The operator's own metrics: reconciles, writes, managed objects, and each rollout's state.

The chart's ServiceMonitor scrapes them from the operator's metrics port (see runner.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tradeplane.api import Phase, TradingServiceStatus

RECONCILE_SECONDS = Histogram(
    "tradeplane_reconcile_duration_seconds",
    "Time to reconcile one TradingService",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("tradeplane_reconcile_errors", "Failed reconciles by reason", ["reason"])
MANAGED_OBJECTS = Gauge("tradeplane_managed_objects", "Objects the operator manages, by kind", ["kind"])
WRITES = Counter("tradeplane_writes", "Writes to the API server by verb and kind", ["verb", "kind"])
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
