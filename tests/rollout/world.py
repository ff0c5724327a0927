"""A small simulated cluster that drives the rollout state machine tick by tick.

Its Deployments converge within one tick; tests that need lag set the ready counts themselves. Status
goes through JSON between ticks, as it does through the API server, so nothing survives in memory that
the real operator would lose on a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tradeplane.api import AnalysisResult, TradingServiceSpec, TradingServiceStatus, Verdict, now_iso
from tradeplane.events import Event
from tradeplane.rollout import Observed, Plan, analysis_due, plan_workloads, request

START = datetime(2025, 6, 7, 12, 0, tzinfo=UTC)  # a Saturday: no exchange session


def make_spec(**changes: Any) -> TradingServiceSpec:
    spec: dict[str, Any] = {
        "component": "order",
        "image": "registry.example/tradeplane-services:1.0.0",
        "replicas": 4,
        "resources": {"cpus": 2, "memory": "1Gi"},
        "slo": {"p99LatencyMicros": 100, "maxErrorRate": 0.001},
        "rollout": {
            "steps": [
                {"weight": 5, "pause": "10s"},
                {"weight": 25, "pause": "10s"},
                {"weight": 50, "pause": "10s"},
            ],
            "analysis": {"interval": "2s", "window": "10s", "minSamples": 200},
        },
    }
    spec.update(changes)
    return TradingServiceSpec.model_validate(spec)


def verdict_result(verdict: Verdict, revision: str, now: datetime) -> AnalysisResult:
    figures = {
        Verdict.PASS: ("p99", 60.0, 100.0, 5000),
        Verdict.FAIL: ("p99", 450.0, 100.0, 5000),
        Verdict.INCONCLUSIVE: ("samples", 12.0, 200.0, 12),
    }[verdict]
    gate, value, threshold, samples = figures
    return AnalysisResult(
        verdict=verdict,
        gate=gate,
        value=value,
        threshold=threshold,
        p99Micros=value if gate == "p99" else None,
        samples=samples,
        window="10s",
        revision=revision,
        message=f"{verdict} on {gate}",
        time=now_iso(now),
    )


@dataclass
class World:
    spec: TradingServiceSpec
    revision: str = "v1"
    now: datetime = START
    tick_seconds: float = 1.0
    status: dict[str, Any] = field(default_factory=dict)
    stable_template: str | None = None
    stable_ready: int = 0
    stable_paused: bool = False
    canary_template: str | None = None
    canary_ready: int = 0
    canary_stalled: bool = False
    traffic_weight: int | None = None
    generation: int = 1
    promote: str | None = None
    abort: str | None = None
    retry: str | None = None
    verdict: Verdict | None = Verdict.PASS
    events: list[Event] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)
    adopted_canary_pods: bool = False
    plans: list[Plan] = field(default_factory=list)

    @property
    def state(self) -> TradingServiceStatus:
        return TradingServiceStatus.model_validate(self.status)

    def observe(self) -> Observed:
        status = self.state
        analysis = None
        if self.verdict is not None and analysis_due(self.spec, status, self.canary_ready, self.now):
            assert status.canaryRevision is not None
            analysis = verdict_result(self.verdict, status.canaryRevision, self.now)
        return Observed(
            revision=self.revision,
            stable_ready=self.stable_ready,
            canary_ready=self.canary_ready,
            canary_stalled=self.canary_stalled,
            canary_exists=self.canary_template is not None,
            stable_template_revision=self.stable_template,
            stable_updated=self.spec.replicas if self.stable_template else 0,
            stable_settled=self.stable_template is not None and self.stable_ready == self.spec.replicas,
            traffic_weight=self.traffic_weight,
            analysis=analysis,
            generation=self.generation,
            promote=self.promote,
            abort=self.abort,
            retry=self.retry,
        )

    def tick(self) -> Plan:
        observed = self.observe()
        plan = plan_workloads(self.spec, self.state, observed, self.now)
        assert plan == plan_workloads(self.spec, self.state, observed, self.now), (
            "plans must be deterministic"
        )
        self.plans.append(plan)
        self.status = plan.status.model_dump(mode="json", exclude_none=True)
        self.events.extend(plan.events)
        if plan.rollback_reason:
            self.rollbacks.append(plan.rollback_reason)
        self._apply(plan)
        self.now += timedelta(seconds=self.tick_seconds)
        return plan

    def _apply(self, plan: Plan) -> None:
        """The Deployment controller and the route, converged: what the operator's applies lead to."""
        if plan.canary_replicas is None:
            if self.canary_template is not None and self.canary_template == plan.stable_revision:
                self.adopted_canary_pods = True
            self.canary_template = None
            self.canary_ready = 0
        else:
            self.canary_template = self.revision
            self.canary_ready = plan.canary_replicas
        self.stable_template = plan.stable_revision
        self.stable_paused = plan.stable_paused
        self.stable_ready = self.spec.replicas
        self.traffic_weight = plan.traffic_weight

    def change_spec(self, spec: TradingServiceSpec) -> None:
        self.spec = spec
        self.generation += 1

    def request(self, revision: str | None = None) -> str:
        """A promote or abort annotation for the canary (or `revision`) in the current generation."""
        target = revision or self.state.canaryRevision
        assert target is not None
        return request(target, self.generation)

    def run_until(self, predicate: Any, limit: int = 600) -> None:
        for _ in range(limit):
            if predicate(self):
                return
            self.tick()
        raise AssertionError(f"not reached in {limit} ticks; status: {self.status}")

    def reasons(self) -> list[str]:
        return [event.reason for event in self.events]
