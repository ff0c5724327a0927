"""The risk service as a TradingService under test: its manifest, its status as it moves, its pods."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support import Kubectl, get_json, wait_for
from tradeplane.api import BUNDLED_PORTS
from tradeplane.cluster.podrunner import PodRunner
from tradeplane.demo.traffic import RiskTraffic

NAME = "risk"
SLO_MICROS = 10_000  # loose: the whole control plane shares two cores with these services
SLOW_MICROS = 20_000
STEPS = [{"weight": 25, "pause": "2s"}, {"weight": 50, "pause": "2s"}]
ANALYSIS = {"interval": "1s", "window": "5s", "minSamples": 50}


def risk_spec(config: dict[str, Any], slo_micros: int) -> dict[str, Any]:
    """The risk service's spec; no rollout settings, so the defaults apply unless a caller adds them."""
    return {
        "component": "risk",
        "image": "registry.example/tradeplane-services:0.1.0",
        "replicas": 2,
        "resources": {"cpus": 1, "memory": "256Mi"},
        "config": config,
        "slo": {"p99LatencyMicros": slo_micros, "maxErrorRate": 0.01},
    }


def manifest(
    namespace: str, config: dict[str, Any], rollout: dict[str, Any], slo_micros: int = SLO_MICROS
) -> dict[str, Any]:
    return {
        "apiVersion": "tradeplane.io/v1alpha1",
        "kind": "TradingService",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {**risk_spec(config, slo_micros), "rollout": {"steps": STEPS, **rollout}},
    }


@dataclass
class Rollout:
    """One TradingService; every status read is kept, so a test can check what it went through."""

    kubectl: Kubectl
    namespace: str
    rollout: dict[str, Any]
    slo_micros: int = SLO_MICROS
    seen: list[dict[str, Any]] = field(default_factory=list)
    start_up_events: set[str] = field(default_factory=set)
    """Events of the stack's start-up, not of the rollouts under test (run_with_market_data)."""

    def apply(self, config: dict[str, Any], **analysis: Any) -> None:
        rollout = {**self.rollout, "analysis": {**ANALYSIS, **self.rollout.get("analysis", {}), **analysis}}
        document = yaml.safe_dump(manifest(self.namespace, config, rollout, self.slo_micros))
        self.kubectl("apply", "-f", "-", input=document)

    def status(self) -> dict[str, Any]:
        found = get_json(self.kubectl, "tradingservice", NAME, "-n", self.namespace)
        status: dict[str, Any] = found.get("status") or {}  # type: ignore[assignment]
        if not self.seen or self.seen[-1] != status:
            self.seen.append(status)
        return status

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        try:
            wait_for(lambda: predicate(self.status()), timeout=timeout, interval=0.2, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; last status: {json.dumps(self.seen[-1:], indent=1)}") from None
        return self.seen[-1]

    def wait_ready(self, revision: str | None = None, timeout: float = 60) -> dict[str, Any]:
        def ready(status: dict[str, Any]) -> bool:
            stable = status.get("stableRevision")
            return status.get("phase") == "Ready" and bool(stable) and revision in (None, stable)

        return self.wait(ready, timeout, f"revision {revision or 'one'} Ready")

    def pods(self) -> list[dict[str, Any]]:
        found = get_json(self.kubectl, "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/name={NAME}")
        items: list[dict[str, Any]] = found["items"]  # type: ignore[assignment]
        return [pod for pod in items if not pod["metadata"].get("deletionTimestamp")]

    def event_reasons(self, kind: str = "Warning") -> list[str]:
        """Reasons of the Events of this type the operator posted about the TradingService."""
        return [
            event["reason"]
            for event in self.events(kind)
            if event["metadata"]["uid"] not in self.start_up_events
        ]

    def events(self, kind: str) -> list[dict[str, Any]]:
        found = get_json(self.kubectl, "events", "-n", self.namespace, "--field-selector", f"type={kind}")
        items: list[dict[str, Any]] = found["items"]  # type: ignore[assignment]
        return [event for event in items if event["involvedObject"]["kind"] == "TradingService"]


def start_stable(
    kubectl: Kubectl,
    namespace: str,
    pod_runner: Callable[..., PodRunner],
    analysis: dict[str, Any],
    slo_micros: int = SLO_MICROS,
) -> Rollout:
    """Revision one of the risk service with these analysis settings, Ready on two running pods beside
    the market data it needs."""
    rollout = Rollout(kubectl, namespace, {"analysis": analysis}, slo_micros)
    run_with_market_data(rollout, pod_runner, {"maxOrderQuantity": 50_000})
    return rollout


def traffic(kubeconfig: Path, namespace: str) -> RiskTraffic:
    return RiskTraffic(kubeconfig, namespace, NAME, BUNDLED_PORTS["risk"], rate=100)


def bundled_manifest(
    namespace: str,
    component: str,
    replicas: int,
    slo_micros: int,
    rollout: dict[str, Any] | None = None,
    slo: dict[str, Any] | None = None,
) -> str:
    """A bundled component named after itself, small, with a loose error-rate gate: the order-flow stack
    (`slo` adds gates)."""
    spec: dict[str, Any] = {
        "component": component,
        "image": "registry.example/tradeplane-services:0.1.0",
        "replicas": replicas,
        "resources": {"cpus": 1, "memory": "256Mi"},
        "slo": {"p99LatencyMicros": slo_micros, "maxErrorRate": 0.5, **(slo or {})},
    }
    if rollout is not None:
        spec["rollout"] = rollout
    document = {
        "apiVersion": "tradeplane.io/v1alpha1",
        "kind": "TradingService",
        "metadata": {"name": component, "namespace": namespace},
        "spec": spec,
    }
    return yaml.safe_dump(document)


def run_with_market_data(
    rollout: Rollout, pod_runner: Callable[..., PodRunner], config: dict[str, Any]
) -> PodRunner:
    """Risk (at `config`) and the market data it needs: risk answers its readiness probe only once its
    market data flows, and the pod runner reports Ready from that probe. Back when every process is ready
    and the TradingService says so."""
    rollout.kubectl("apply", "-f", "-", input=bundled_manifest(rollout.namespace, "market-data", 1, 50_000))
    rollout.apply(config)
    runner = pod_runner(rollout.namespace)
    runner.wait_running(3)
    wait_for(
        lambda: all(pod.ready for pod in runner.running.values()),
        timeout=60,
        what="risk and market data answering their readiness probes",
    )
    rollout.wait_ready()
    # kwok marks pods Ready before any process listens; the runner takes that back until the probe answers,
    # so the start-up may have posted NotReady: the stack's start, not a rollout's doing.
    rollout.start_up_events = {event["metadata"]["uid"] for event in rollout.events("Warning")}
    return runner


ORDER_FLOW_STACK = (("market-data", 1), ("execution", 1), ("risk", 2), ("order", 1))
"""(component, replicas) of the stack an order-flow rollout of risk runs in: order calls risk."""
