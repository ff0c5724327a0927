"""Canary rollouts end to end: the local control plane, the operator as a process, real risk services
behind the kwok pods, a real Prometheus discovering and scraping them, and steady traffic.

A good canary walks every step and its pods become the stable ones; a canary with injected latency is
rolled back on its own; a canary that gets no traffic stays Inconclusive and is never promoted; a killed
operator resumes the same step; `tradeplane abort` and `tradeplane promote` act at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e.conftest import OperatorProcess
from e2e.prometheus import Prometheus
from e2e.scenario import NAME, SLO_MICROS, SLOW_MICROS, Rollout, start_stable, traffic

from support import Kubectl, get_json, wait_for
from tradeplane.api import now_iso
from tradeplane.cli import main as tradeplane
from tradeplane.cluster.podrunner import PodRunner

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]


@pytest.fixture
def stable(
    kubectl: Kubectl,
    namespace: str,
    operator_process: OperatorProcess,
    prometheus: Prometheus,
    pod_runner: Callable[..., PodRunner],
) -> Rollout:
    """Revision one of the risk service, analysed through Prometheus, Ready on two running pods."""
    analysis = {"provider": "prometheus", "prometheus": {"url": prometheus.url}}
    return start_stable(kubectl, namespace, pod_runner, analysis)


def test_a_good_canary_walks_every_step_and_its_pods_become_stable(kube_env: Path, stable: Rollout) -> None:
    first = stable.status()["stableRevision"]
    with traffic(kube_env, stable.namespace):
        stable.apply({"maxOrderQuantity": 60_000})
        at_last_step = stable.wait(lambda s: s.get("step") == 2, 60, "the canary at its last step")
        canary = at_last_step["canaryRevision"]
        canary_pods = {
            pod["metadata"]["uid"]
            for pod in stable.pods()
            if pod["metadata"]["labels"]["tradeplane.io/revision"] == canary
        }
        done = stable.wait(
            lambda s: s.get("phase") == "Ready" and s.get("stableRevision") == canary,
            60,
            "the canary promoted",
        )
    assert canary != first
    steps = [(s.get("step"), s.get("weight")) for s in stable.seen if s.get("canaryRevision") == canary]
    assert (1, 25) in steps and (2, 50) in steps
    # Promoting can pass between two polls of the status; the Events it posts stay.
    assert {"Promoting", "Promoted"} <= set(stable.event_reasons("Normal"))
    passes = [
        s["lastAnalysis"] for s in stable.seen if (s.get("lastAnalysis") or {}).get("verdict") == "Pass"
    ]
    assert passes and all(result["samples"] >= 50 for result in passes)
    assert done.get("canaryRevision") is None and done["lastAnalysis"]["verdict"] == "Pass"
    # The canary's pods were handed to the stable Deployment, not replaced by a second rollout.
    assert len(canary_pods) == 2
    after = stable.pods()
    assert {pod["metadata"]["uid"] for pod in after} == canary_pods
    gone = ("get", "deployment", f"{NAME}-canary", "-n", stable.namespace)
    wait_for(lambda: stable.kubectl(*gone, check=False).returncode, 10, what="the canary Deployment gone")
    assert stable.event_reasons() == []


def test_a_slow_canary_is_rolled_back_on_its_own(
    kube_env: Path, stable: Rollout, operator_process: OperatorProcess
) -> None:
    first = stable.status()["stableRevision"]
    with traffic(kube_env, stable.namespace):
        stable.apply({"maxOrderQuantity": 50_000, "latencyInjectionMicros": SLOW_MICROS})
        rolled_back = stable.wait(lambda s: s.get("phase") == "RolledBack", 60, "the canary rolled back")
    verdict = rolled_back["lastAnalysis"]
    assert verdict["verdict"] == "Fail" and verdict["gate"] == "p99"
    assert verdict["value"] > SLO_MICROS and verdict["threshold"] == SLO_MICROS
    assert verdict["samples"] >= 50 and verdict["window"] == "5s"
    assert rolled_back["stableRevision"] == first and rolled_back["weight"] == 0
    failed = rolled_back["failedRevision"]
    assert failed == verdict["revision"]
    canary = get_json(stable.kubectl, "deployment", f"{NAME}-canary", "-n", stable.namespace)
    assert canary["spec"]["replicas"] == 0  # type: ignore[index]
    assert "RolledBack" in stable.event_reasons()
    rollbacks = operator_process.metric(
        "tradeplane_rollbacks_total", namespace=stable.namespace, reason="p99"
    )
    assert rollbacks == 1.0
    # Not retried while the spec stays as it is.
    time.sleep(3)
    again = stable.status()
    assert (again["phase"], again["failedRevision"], again.get("canaryRevision")) == (
        "RolledBack",
        failed,
        None,
    )
    assert all(pod["metadata"]["labels"]["tradeplane.io/revision"] == first for pod in stable.pods())


def test_a_canary_without_traffic_stays_inconclusive_and_is_not_promoted(stable: Rollout) -> None:
    first = stable.status()["stableRevision"]
    stable.apply({"maxOrderQuantity": 70_000}, inconclusiveLimit=1000)
    stable.wait(lambda s: (s.get("lastAnalysis") or {}).get("verdict") == "Inconclusive", 30, "a verdict")
    time.sleep(8)  # twice the time all the steps' pauses take
    status = stable.status()
    assert (status["phase"], status["step"], status["stableRevision"]) == ("Progressing", 1, first)
    assert status["lastAnalysis"]["verdict"] == "Inconclusive" and status["lastAnalysis"]["gate"] == "samples"
    assert status["inconclusiveIntervals"] >= 5
    assert not any(s.get("phase") == "Promoting" for s in stable.seen)


def test_a_killed_operator_resumes_the_same_step(
    kube_env: Path, kubectl: Kubectl, stable: Rollout, operator_process: OperatorProcess
) -> None:
    # Step 2 outlasts a restart on a loaded machine, so the new process is seen analysing it.
    stable.rollout = {
        **stable.rollout,
        "steps": [{"weight": 25, "pause": "2s"}, {"weight": 50, "pause": "20s"}],
    }
    with traffic(kube_env, stable.namespace):
        stable.apply({"maxOrderQuantity": 60_000})
        before = stable.wait(
            lambda s: s.get("step") == 2 and bool(s.get("stepStartedAt")), 60, "step 2 analysed"
        )
        canary = before["canaryRevision"]
        deployment = get_json(kubectl, "deployment", f"{NAME}-canary", "-n", stable.namespace)
        operator_process.stop(kill=True)
        killed = now_iso(datetime.now(UTC))
        killed_at = len(stable.seen)
        operator_process.start()
        resumed = stable.wait(
            lambda s: s.get("lastAnalysisAt", "") > killed, 30, "an analysis by the restarted operator"
        )
        same = get_json(kubectl, "deployment", f"{NAME}-canary", "-n", stable.namespace)
        done = stable.wait(
            lambda s: s.get("phase") == "Ready" and s.get("stableRevision") == canary,
            60,
            "the canary promoted",
        )
    # The same rollout went on: same canary, same step and step clock, same Deployment, no step 1 again.
    assert (resumed["canaryRevision"], resumed["step"]) == (canary, 2)
    assert resumed["stepStartedAt"] == before["stepStartedAt"]
    assert same["metadata"]["uid"] == deployment["metadata"]["uid"]  # type: ignore[index]
    assert all(s.get("step") in (2, None) for s in stable.seen[killed_at:])
    assert done["lastAnalysis"]["verdict"] == "Pass"


LONG_STEPS = [{"weight": 25, "pause": "1m"}, {"weight": 50, "pause": "1m"}]


def test_abort_rolls_back_at_once_mid_analysis(kube_env: Path, stable: Rollout) -> None:
    stable.rollout = {**stable.rollout, "steps": LONG_STEPS}
    with traffic(kube_env, stable.namespace):
        stable.apply({"maxOrderQuantity": 60_000})
        analysed = stable.wait(lambda s: bool(s.get("lastAnalysis")), 30, "the canary analysed")
        requested = time.monotonic()
        assert tradeplane(["abort", NAME, "-n", stable.namespace]) == 0
        rolled_back = stable.wait(lambda s: s.get("phase") == "RolledBack", 10, "the abort")
        took = time.monotonic() - requested
    assert took < 5, f"abort took {took:.1f} s"
    assert rolled_back["failedRevision"] == analysed["canaryRevision"] and rolled_back["weight"] == 0
    assert "aborted on request" in rolled_back["message"]
    assert "Aborted" in stable.event_reasons()


def test_promote_skips_the_remaining_steps(kube_env: Path, stable: Rollout) -> None:
    stable.rollout = {**stable.rollout, "steps": LONG_STEPS}
    with traffic(kube_env, stable.namespace):
        stable.apply({"maxOrderQuantity": 60_000})
        canary = stable.wait(lambda s: s.get("step") == 1, 30, "the canary at step 1")["canaryRevision"]
        assert tradeplane(["promote", NAME, "-n", stable.namespace]) == 0
        done = stable.wait(
            lambda s: s.get("phase") == "Ready" and s.get("stableRevision") == canary, 30, "the promotion"
        )
    assert not any(s.get("step") == 2 for s in stable.seen)
    assert done.get("canaryRevision") is None
