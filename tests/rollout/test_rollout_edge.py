"""The analysis edge (measuring through the configured provider) and the operator's rollout metrics."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY
from rollout.latency_server import latency_server
from rollout.world import make_spec

from tradeplane.analysis import measure
from tradeplane.api import AnalysisResult, TradingServiceStatus, Verdict
from tradeplane.metrics import forget, record
from tradeplane.providers import Providers

NOW = datetime(2025, 6, 7, 12, 0, tzinfo=UTC)


def canary_status() -> TradingServiceStatus:
    return TradingServiceStatus(
        phase="Progressing", stableRevision="v1", canaryRevision="v2", step=1, weight=5
    )


def with_analysis(**analysis: Any) -> Any:
    rollout = make_spec().rollout.model_dump(mode="json", exclude_none=True)
    rollout["analysis"].update(analysis)
    return make_spec(rollout=rollout)


def test_measure_judges_the_canary_pods_by_their_component_label() -> None:
    spec = with_analysis(provider="scrape", minSamples=100)
    with latency_server("order", "v2", started=time.time()) as canary:
        canary.observe(3e-3, count=150)
        result = asyncio.run(
            measure(Providers(), spec, canary_status(), "trading", "order-a", [canary.endpoint], [], NOW)
        )
    assert (result.verdict, result.gate, result.samples, result.revision) == (Verdict.FAIL, "p99", 150, "v2")


def test_measure_compares_with_the_stable_when_a_regression_gate_is_set() -> None:
    spec = with_analysis(provider="scrape", minSamples=100, maxRegressionVsBaseline=1.5)
    with (
        latency_server("order", "v2", started=time.time()) as canary,
        latency_server("order", "v1", started=time.time()) as stable,
    ):
        canary.observe(90e-6, count=150)
        stable.observe(30e-6, count=150)
        result = asyncio.run(
            measure(
                Providers(),
                spec,
                canary_status(),
                "trading",
                "order",
                [canary.endpoint],
                [stable.endpoint],
                NOW,
            )
        )
    assert (result.verdict, result.gate) == (Verdict.FAIL, "baseline")
    assert result.baselineP99Micros is not None and result.value is not None
    assert result.value > result.baselineP99Micros * 1.5


def sample(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def test_record_exports_phase_weight_step_and_the_deciding_gate() -> None:
    status = canary_status()
    status.actualWeight = 20
    status.lastAnalysis = AnalysisResult(
        verdict=Verdict.INCONCLUSIVE, gate="samples", value=12, threshold=200
    )
    record("metrics", "order", status, None)
    labels = {"namespace": "metrics", "name": "order"}
    assert sample("tradeplane_rollout_phase", **labels, phase="Progressing") == 1
    assert sample("tradeplane_rollout_phase", **labels, phase="Ready") == 0
    assert (
        sample("tradeplane_rollout_weight", **labels),
        sample("tradeplane_rollout_actual_weight", **labels),
    ) == (
        5,
        20,
    )
    assert sample("tradeplane_rollout_step", **labels) == 1
    assert sample("tradeplane_rollout_analysis_value", **labels, gate="samples") == 12

    status.phase = "RollingBack"
    status.lastAnalysis = AnalysisResult(verdict=Verdict.FAIL, gate="p99", value=450, threshold=100)
    record("metrics", "order", status, "p99")
    assert sample("tradeplane_rollout_analysis_value", **labels, gate="samples") is None
    assert sample("tradeplane_rollout_analysis_threshold", **labels, gate="p99") == 100
    assert sample("tradeplane_rollbacks_total", **labels, reason="p99") == 1

    forget("metrics", "order")
    assert sample("tradeplane_rollout_weight", **labels) is None
    assert sample("tradeplane_rollbacks_total", **labels, reason="p99") is None
