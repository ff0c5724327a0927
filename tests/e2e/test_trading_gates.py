"""Trading gates end to end: the operator as a process, real risk services behind the kwok pods counting
their decisions by reason, steady traffic, and both providers: a real Prometheus and the pods' /metrics.

The bad canary is legitimately worse: its spec.config lowers maxOrderQuantity under the traffic's order
size (10), so it rejects every order with MAX_QUANTITY while answering as fast as the stable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import OperatorProcess
from e2e.prometheus import Prometheus
from e2e.scenario import Rollout, start_stable, traffic

from support import Kubectl
from tradeplane.cluster.podrunner import PodRunner

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

REJECTS_ALL = {"maxOrderQuantity": 5}
LOOSE_SLO_MICROS = 100_000
"""p99 is not what these tests are about: the shared machine's load must not decide their canaries."""
MAX_QUANTITY_REJECTS = (
    'sum(increase(tradeplane_decisions_total{service="{service}",revision="{revision}",'
    'reason="MAX_QUANTITY"}[{window}]))'
)


@pytest.fixture
def through_prometheus(
    kubectl: Kubectl,
    namespace: str,
    operator_process: OperatorProcess,
    prometheus: Prometheus,
    pod_runner: Callable[..., PodRunner],
) -> Rollout:
    analysis = {"provider": "prometheus", "prometheus": {"url": prometheus.url}}
    return start_stable(kubectl, namespace, pod_runner, analysis, LOOSE_SLO_MICROS)


@pytest.fixture
def through_scrape(
    kubectl: Kubectl, namespace: str, operator_process: OperatorProcess, pod_runner: Callable[..., PodRunner]
) -> Rollout:
    return start_stable(kubectl, namespace, pod_runner, {"provider": "scrape"}, LOOSE_SLO_MICROS)


def rolled_back_by(
    rollout: Rollout, kube_env: Path, config: dict[str, Any], gates: list[Any]
) -> dict[str, Any]:
    """Apply a canary with these gates under traffic; the verdict that rolled it back."""
    first = rollout.status()["stableRevision"]
    with traffic(kube_env, rollout.namespace):
        rollout.apply(config, gates=gates)
        status = rollout.wait(lambda s: s.get("phase") == "RolledBack", 90, "the canary rolled back")
    assert status["stableRevision"] == first and status["weight"] == 0
    assert status["failedRevision"] == status["lastAnalysis"]["revision"]
    verdict: dict[str, Any] = status["lastAnalysis"]
    return verdict


def by_gate(verdict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {result["gate"]: result for result in verdict["gates"]}


def test_a_canary_rejecting_more_with_fine_latency_is_rolled_back_by_the_reject_rate_gate(
    kube_env: Path, through_prometheus: Rollout, operator_process: OperatorProcess
) -> None:
    verdict = rolled_back_by(through_prometheus, kube_env, REJECTS_ALL, [{"kind": "rejectRate"}])
    assert (verdict["verdict"], verdict["gate"]) == ("Fail", "rejectRate"), verdict
    # Every order the canary saw was refused for quantity; the stable refused none for it.
    assert verdict["value"] > 0.9 and verdict["baselineValue"] == 0 and verdict["threshold"] == 0.01
    assert "MAX_QUANTITY rate" in verdict["message"] and verdict["window"] == "5s"
    gates = by_gate(verdict)
    assert gates["rejectRate"]["samples"] >= 50
    assert gates["p99"]["verdict"] == "Pass" and gates["p99"]["value"] <= LOOSE_SLO_MICROS
    assert gates["errorRate"]["verdict"] == "Pass"
    assert "RolledBack" in through_prometheus.event_reasons()
    rollbacks = operator_process.metric(
        "tradeplane_rollbacks_total", namespace=through_prometheus.namespace, reason="rejectRate"
    )
    assert rollbacks == 1.0


def test_a_prometheus_query_gate_on_an_exported_metric_rolls_a_canary_back(
    kube_env: Path, through_prometheus: Rollout
) -> None:
    gate = {"kind": "metric", "name": "quantity-rejects", "query": MAX_QUANTITY_REJECTS, "threshold": 5}
    verdict = rolled_back_by(through_prometheus, kube_env, REJECTS_ALL, [gate])
    assert (verdict["verdict"], verdict["gate"], verdict["threshold"]) == ("Fail", "quantity-rejects", 5)
    assert verdict["value"] > 5 and verdict.get("baselineValue") is None
    assert by_gate(verdict)["p99"]["verdict"] == "Pass"


def test_scraped_gates_measure_the_pods_and_roll_a_rejecting_canary_back(
    kube_env: Path, through_scrape: Rollout
) -> None:
    # A desk's gate on a series read from the pods: at most 1e9 decisions a window, which holds.
    gate = {"kind": "metric", "name": "decisions", "metric": "tradeplane_decisions_total", "threshold": 1e9}
    verdict = rolled_back_by(through_scrape, kube_env, REJECTS_ALL, [gate, {"kind": "rejectRate"}])
    gates = by_gate(verdict)
    # The metric gate measured the canary's decisions from its pods (far under 1e9: it passed), and
    # the reject-rate gate, reading the same counters by reason from /metrics, decided.
    assert gates["decisions"]["verdict"] == "Pass" and gates["decisions"]["value"] >= 50
    assert (verdict["verdict"], verdict["gate"]) == ("Fail", "rejectRate")
    assert verdict["value"] > 0.9 and verdict["baselineValue"] == 0
