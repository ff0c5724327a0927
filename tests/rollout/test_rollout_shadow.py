"""Shadow rollouts: the decision-mismatch gate, its place in the verdict, the callers' counters read by the
scrape provider, the routing's mode, and the state machine holding a passed shadow run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from rollout.world import World, make_spec

from tradeplane.api import SLO, Analysis, Phase, TradingServiceSpec, Verdict
from tradeplane.decision_gate import decision_mismatch
from tradeplane.judge import judge
from tradeplane.measurement import Decisions, Measurement, ProviderUnavailable
from tradeplane.naming import Owner
from tradeplane.providers.scrape import PEER_LABELS, SHADOW_DECISIONS, parse_series
from tradeplane.traffic.order_flow import routing_table

NOW = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)
ANALYSIS = Analysis(minSamples=100, window="30s")
SLO_SHADOW = SLO(p99LatencyMicros=100, maxErrorRate=0.01, maxDecisionMismatch=0.01)
HEALTHY = Measurement(p99_seconds=50e-6, samples=1000, requests=1000, errors=0)


def test_a_mismatch_above_the_threshold_fails_with_its_figures() -> None:
    outcome = decision_mismatch(Decisions(980, 15, 5), 0.01, 100, "30s", "v2")
    assert (outcome.verdict, outcome.gate, outcome.value, outcome.threshold, outcome.samples) == (
        Verdict.FAIL,
        "decisionMismatch",
        0.02,
        0.01,
        1000,
    )
    assert "20/1000" in outcome.message and "15 mismatched, 5 unanswered" in outcome.message


def test_agreement_within_the_threshold_passes() -> None:
    outcome = decision_mismatch(Decisions(995, 5, 0), 0.01, 100, "30s", "v2")
    assert (outcome.verdict, outcome.value) == (Verdict.PASS, 0.005)


def test_a_canary_that_never_answers_fails() -> None:
    assert decision_mismatch(Decisions(0, 0, 500), 0.5, 100, "30s", "v2").verdict == Verdict.FAIL


@pytest.mark.parametrize(
    "decisions", [Decisions(99, 0, 0), Decisions(0, 0, 0), ProviderUnavailable("order pods: refused")]
)
def test_too_few_compared_decisions_or_no_figures_is_inconclusive(
    decisions: Decisions | ProviderUnavailable,
) -> None:
    outcome = decision_mismatch(decisions, 0.01, 100, "30s", "v2")
    assert (outcome.verdict, outcome.gate) == (Verdict.INCONCLUSIVE, "decisionMismatch")


def test_the_judge_fails_a_shadow_canary_on_its_decisions_after_the_latency_gates() -> None:
    result = judge(HEALTHY, None, SLO_SHADOW, ANALYSIS, "v2", NOW, Decisions(500, 500, 0))
    assert (result.verdict, result.gate, result.value, result.threshold, result.samples, result.window) == (
        Verdict.FAIL,
        "decisionMismatch",
        0.5,
        0.01,
        1000,
        "30s",
    )
    assert result.p99Micros == 50.0, "the latency figures stay in the verdict"
    passing = judge(HEALTHY, None, SLO_SHADOW, ANALYSIS, "v2", NOW, Decisions(1000, 0, 0))
    assert (passing.verdict, passing.gate) == (Verdict.PASS, "p99")
    few = judge(HEALTHY, None, SLO_SHADOW, ANALYSIS, "v2", NOW, Decisions(10, 0, 0))
    assert few.verdict == Verdict.INCONCLUSIVE and few.gate == "decisionMismatch"
    assert next(gate for gate in few.gates if gate.gate == "decisionMismatch").samples == 10
    slow = Measurement(p99_seconds=500e-6, samples=1000, requests=1000, errors=0)
    assert judge(slow, None, SLO_SHADOW, ANALYSIS, "v2", NOW, Decisions(1000, 0, 0)).gate == "p99"


def test_the_scrape_provider_reads_a_callers_comparisons_of_one_canary() -> None:
    page = "\n".join(
        [
            "# TYPE tradeplane_shadow_decisions counter",
            'tradeplane_shadow_decisions_total{service="order",revision="o1",peer="risk",peer_revision="v2",'
            'outcome="match"} 90.0',
            'tradeplane_shadow_decisions_total{service="order",revision="o1",peer="risk",peer_revision="v2",'
            'outcome="mismatch"} 7.0',
            'tradeplane_shadow_decisions_total{service="order",revision="o1",peer="risk",peer_revision="v2",'
            'outcome="unanswered"} 3.0',
            'tradeplane_shadow_decisions_total{service="order",revision="o1",peer="risk",peer_revision="v3",'
            'outcome="mismatch"} 50.0',
            "# TYPE process_start_time_seconds gauge",
            "process_start_time_seconds 1700000000.0",
            "",
        ]
    )
    values = parse_series(page, SHADOW_DECISIONS, "risk", "v2", PEER_LABELS)
    assert values.started == 1700000000.0
    assert Decisions.from_outcomes(values.values) == Decisions(90, 7, 3)


def shadow_spec(mode: str = "shadow") -> TradingServiceSpec:
    rollout = {
        "orderFlow": {"mode": mode},
        "steps": [{"weight": 10, "pause": "10s"}, {"weight": 50, "pause": "10s"}],
        "analysis": {"interval": "2s", "window": "10s"},
    }
    slo = {"maxDecisionMismatch": 0.01} if mode == "shadow" else {}
    return make_spec(component="risk", rollout=rollout, slo=slo)


def test_the_routing_tells_the_callers_to_shadow() -> None:
    table = routing_table(
        Owner("risk", "trading", "uid"), shadow_spec(), "v1", "v2", ["127.1.0.9:7002"], 1000
    )
    assert (table.mode, table.weight_basis_points) == ("shadow", 1000)


def test_the_mismatch_gate_needs_a_shadow_rollout() -> None:
    with pytest.raises(ValidationError, match=r"maxDecisionMismatch needs rollout\.orderFlow\.mode: shadow"):
        make_spec(component="risk", rollout={"orderFlow": {}}, slo={"maxDecisionMismatch": 0.01})
    assert shadow_spec().rollout.orderFlow is not None


def test_a_passed_shadow_run_holds_until_promotion_is_requested() -> None:
    world = World(shadow_spec())
    world.tick()
    world.revision = "v2"
    world.run_until(lambda world: world.state.phase == Phase.PAUSED)
    state = world.state
    assert (state.step, state.shadow, world.plans[-1].traffic_weight) == (2, True, 5000)
    assert "shadow passed step 2/2" in state.message
    for _ in range(30):
        world.tick()
    assert world.state.phase == Phase.PAUSED and world.state.canaryRevision == "v2", "never promoted alone"
    assert world.reasons().count("ShadowPassed") == 1
    world.promote = world.request()
    world.run_until(lambda world: world.state.stableRevision == "v2")


def test_going_live_after_a_shadow_run_walks_the_steps_again_live() -> None:
    world = World(shadow_spec())
    world.tick()
    world.revision = "v2"
    world.run_until(lambda world: world.state.phase == Phase.PAUSED)
    world.change_spec(shadow_spec(mode="live"))
    world.tick()
    state = world.state
    assert (state.step, state.shadow, state.phase) == (1, False, Phase.PROGRESSING)
    assert "ModeChanged" in world.reasons()
    world.run_until(lambda world: world.state.stableRevision == "v2")
