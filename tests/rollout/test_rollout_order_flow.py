"""Order flow: the router's arithmetic in basis points, the callers' counters turned into a share, the
routing the callers are pushed, and the state machine walking basis-point steps."""

from __future__ import annotations

import pytest
from rollout.world import World, make_spec

from tradeplane.api import Phase, TradingServiceSpec, Verdict
from tradeplane.naming import Owner
from tradeplane.traffic import Serving, router_for
from tradeplane.traffic.order_flow import CallerReport, OrderFlowRouter, RoutedCounts, routing_table
from tradeplane_services.orderflow import RoutingAnswer

ROUTER = OrderFlowRouter()
STEPS = [
    {"weightBasisPoints": 10, "pause": "10s"},
    {"weight": 1, "pause": "10s"},
    {"weight": 10, "pause": "10s"},
]


def order_flow_spec(**changes: object) -> TradingServiceSpec:
    rollout = {"orderFlow": {}, "steps": STEPS, "analysis": {"interval": "2s", "window": "10s"}}
    return make_spec(component="risk", rollout=rollout, **changes)


def test_the_spec_selects_order_flow() -> None:
    assert isinstance(router_for(order_flow_spec()), OrderFlowRouter)


@pytest.mark.parametrize(
    ("stable", "weight", "expected"),
    [(2, 1, 1), (2, 10, 1), (4, 100, 1), (10, 2500, 3), (4, 10_000, 4), (0, 10, 0)],
)
def test_the_canary_gets_pods_for_its_share_of_the_orders(stable: int, weight: int, expected: int) -> None:
    assert ROUTER.canary_replicas(stable, weight) == expected


def test_a_step_is_reached_once_every_caller_holds_its_weight() -> None:
    assert not ROUTER.reached(Serving(2, 1, held_weight=None), 1, 10), "no caller answered"
    assert not ROUTER.reached(Serving(2, 1, held_weight=0), 1, 10), "a caller still holds the last weight"
    assert not ROUTER.reached(Serving(2, 0, held_weight=10), 1, 10), "the canary pod is not ready"
    assert ROUTER.reached(Serving(2, 1, held_weight=10), 1, 10)


def test_the_served_weight_is_what_the_callers_counted_not_the_pods() -> None:
    assert ROUTER.served_weight(Serving(2, 1, held_weight=10, counted_weight=11)) == 11
    assert ROUTER.served_weight(Serving(2, 1, held_weight=10)) == 0, "no order counted: no share served"


def test_held_weight_is_the_lowest_any_caller_holds_for_the_canary_asked() -> None:
    answers = (RoutingAnswer("risk", 100, {}, "r2"), RoutingAnswer("risk", 10, {}, "r2"))
    assert CallerReport(answers, None).held_weight("r2") == 10
    assert CallerReport((), None).held_weight("r2") is None
    assert CallerReport(None, None).held_weight("r2") is None, "a caller did not answer"
    # A new canary replacing r2 mid-step: the callers still holding r2's share hold none of r3's.
    assert CallerReport(answers, None).held_weight("r3") == 0
    # A caller from before answers named their revision is taken at its word.
    assert CallerReport((RoutingAnswer("risk", 10, {}, None),), None).held_weight("r3") == 10


def test_a_routing_answer_names_the_revision_its_weight_is_for() -> None:
    answer = RoutingAnswer("risk", 100, {"r1": 5}, "r2")
    assert RoutingAnswer.from_document(answer.document()) == answer
    older = {"peer": "risk", "weightBasisPoints": 100, "routed": {}}
    assert RoutingAnswer.from_document(older).canary_revision is None


def test_counted_share_covers_the_window_across_callers_and_restarts() -> None:
    counts = RoutedCounts(window=5)
    counts.observe(0, "a", {"v1": 1000})
    counts.observe(0, "b", {"v1": 500, "v2": 1})
    assert counts.canary_share(["v1"]) is None, "a first scrape is only a baseline"
    counts.observe(1, "a", {"v1": 1990, "v2": 10})
    counts.observe(1, "b", {"v1": 1490, "v2": 11})
    assert counts.canary_share(["v1"]) == 100  # 20 of 2000 orders: 1%
    counts.observe(2, "a", {"v1": 10, "v2": 0})  # restarted: its counters start again from zero
    assert counts.canary_share(["v1"]) == round(10_000 * 20 / 2010)
    counts.observe(9, "a", {"v1": 1010, "v2": 0})
    assert counts.canary_share(["v1"]) == 0, "only the last five seconds count"
    counts.forget(["a"])
    counts.observe(10, "b", {"v1": 1490, "v2": 11})
    assert counts.canary_share(["v1"]) == 0


def test_the_routing_names_the_canary_pods_only_while_there_is_a_canary() -> None:
    spec = order_flow_spec()
    owner = Owner("risk", "trading", "uid")
    live = routing_table(owner, spec, "v1", "v2", ["127.1.0.9:7002", "127.1.0.8:7002"], 10)
    assert live.canary == ("127.1.0.8:7002", "127.1.0.9:7002")
    assert (live.weight_basis_points, live.salt, live.lease_seconds) == (10, "trading/risk/v2", 3)
    gone = routing_table(owner, spec, "v1", None, [], 10)
    assert (gone.weight_basis_points, gone.canary, gone.canary_revision) == (0, (), "v1")


def test_the_machine_walks_basis_point_steps_and_rolls_back_to_zero() -> None:
    world = World(order_flow_spec())
    world.tick()
    world.revision = "v2"
    world.tick()
    world.tick()
    assert (world.state.weight, world.plans[-1].traffic_weight) == (0.1, 10)
    assert "step 1/3 (0.1%)" in world.state.message
    assert world.plans[-1].canary_replicas == 1
    world.run_until(lambda world: world.state.step == 2)
    world.tick()
    assert (world.state.weight, world.plans[-1].traffic_weight) == (1, 100)
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.rollbacks)
    assert world.plans[-1].traffic_weight == 0 and world.state.phase in (
        Phase.ROLLING_BACK,
        Phase.ROLLED_BACK,
    )


def test_a_held_share_stays_with_the_canary_while_its_pods_are_briefly_unready() -> None:
    """Its accounts wait for the canary rather than move to a stable that knows nothing of their orders;
    before any caller held the share, a canary with no ready pod is given none."""
    world = World(order_flow_spec())
    world.tick()
    world.revision = "v2"
    world.tick()
    assert world.plans[-1].traffic_weight == 0, "no ready canary pod yet, no share"
    world.run_until(lambda world: world.state.stepStartedAt is not None)
    assert world.plans[-1].traffic_weight == 10
    world.canary_ready = 0  # a slow readiness probe on a busy machine
    plan = world.tick()
    assert (plan.traffic_weight, world.state.step, world.state.phase) == (10, 1, Phase.PROGRESSING)
