"""The canary state machine: walking steps, gates, rollback, promotion, manual control, freezes, restarts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rollout.world import START, World, make_spec, verdict_result

from tradeplane.api import Phase, TradingServiceStatus, Verdict, parse_duration
from tradeplane.rollout import Observed, analysis_due, canary_replicas_for, plan_workloads, retry_request

ALWAYS_FROZEN = {"start": "00:00", "end": "00:00", "timezone": "UTC"}


def deployed(**spec_changes: Any) -> World:
    """A world with revision v1 stable on all replicas."""
    world = World(make_spec(**spec_changes))
    world.tick()
    assert world.state.stableRevision == "v1"
    return world


def canary(world: World, revision: str = "v2") -> World:
    world.revision = revision
    world.tick()
    return world


TWO_STEPS = [{"weight": 5, "pause": "5s"}, {"weight": 25, "pause": "5s"}]


def with_rollout(**changes: Any) -> dict[str, Any]:
    rollout = make_spec().rollout.model_dump(mode="json", exclude_none=True)
    rollout.update(changes)
    return rollout


# -- the start -------------------------------------------------------------------------------------


def test_the_first_revision_becomes_stable_at_once() -> None:
    world = World(make_spec())
    plan = world.tick()
    assert (plan.stable_revision, plan.canary_replicas) == ("v1", None)
    assert world.state.stableRevision == "v1" and world.state.canaryRevision is None


def test_a_new_revision_starts_a_canary_beside_the_full_stable() -> None:
    world = canary(deployed())
    plan = world.plans[-1]
    assert plan.stable_revision == "v1"  # the stable keeps its template and its size
    assert plan.canary_replicas == 1
    state = world.state
    assert (state.phase, state.canaryRevision, state.step, state.weight) == (Phase.PROGRESSING, "v2", 1, 5)
    assert world.reasons()[-1] == "CanaryStarted"


@pytest.mark.parametrize(
    ("replicas", "weight", "route", "expected"),
    [
        (4, 5, False, 1),
        (4, 25, False, 1),
        (10, 25, False, 3),
        (4, 50, False, 4),
        (4, 90, False, 4),
        (2, 100, False, 2),
        (4, 5, True, 1),
        (4, 50, True, 2),
        (10, 25, True, 3),
        (0, 50, False, 0),
    ],
)
def test_canary_replicas_for_a_weight(replicas: int, weight: int, route: bool, expected: int) -> None:
    spec = make_spec(replicas=replicas, rollout=with_rollout(httpRoute={"name": "orders"} if route else None))
    assert canary_replicas_for(spec, weight * 100) == expected


def test_no_replicas_means_nothing_to_protect() -> None:
    world = deployed(replicas=0)
    world.revision = "v2"
    world.tick()
    assert world.state.stableRevision == "v2" and world.state.canaryRevision is None


# -- walking the steps -----------------------------------------------------------------------------


def test_a_good_canary_walks_every_step_then_its_pods_become_the_stable() -> None:
    world = canary(deployed())
    seen: list[tuple[int, int]] = []
    started: dict[int, str] = {}

    def promoted(world: World) -> bool:
        state = world.state
        if state.step is not None and (state.step, state.weight) not in seen:
            seen.append((state.step, state.weight))
        if state.step is not None and state.stepStartedAt is not None:
            started.setdefault(state.step, state.stepStartedAt)
        return state.phase == Phase.READY and state.stableRevision == "v2"

    world.run_until(promoted)
    assert seen == [(1, 5), (2, 25), (3, 50)]
    assert world.adopted_canary_pods, "the canary's pods were handed over, not replaced"
    assert world.reasons() == ["CanaryStarted", "StepAdvanced", "StepAdvanced", "Promoting", "Promoted"]
    assert world.canary_template is None and world.stable_template == "v2" and not world.stable_paused
    # Every step was analysed for its whole pause.
    elapsed = world.now - START
    assert elapsed >= timedelta(seconds=30)


def test_the_stable_is_paused_only_until_it_owns_the_canary_pods() -> None:
    world = canary(deployed())
    world.run_until(lambda world: world.state.phase == Phase.PROMOTING)
    world.run_until(lambda world: world.state.canaryRevision is None)
    handover = world.plans[-1]
    assert (handover.stable_revision, handover.stable_paused, handover.canary_replicas) == ("v2", True, None)
    status = TradingServiceStatus.model_validate(world.status)
    # Seen again before the stable Deployment adopted the ReplicaSet: still paused.
    adopting = Observed(revision="v2", canary_exists=True, stable_template_revision="v2", stable_updated=0)
    assert plan_workloads(world.spec, status, adopting, world.now).stable_paused
    adopted = Observed(revision="v2", canary_exists=True, stable_template_revision="v2", stable_updated=4)
    assert not plan_workloads(world.spec, status, adopted, world.now).stable_paused


def test_promotion_grows_the_canary_to_full_size_before_the_handover() -> None:
    world = canary(deployed(rollout=with_rollout(steps=TWO_STEPS)))
    world.run_until(lambda world: world.state.phase == Phase.PROMOTING)
    plan = world.plans[-1]
    assert plan.canary_replicas == world.spec.replicas and plan.stable_revision == "v1"
    world.canary_ready = 2  # still starting
    world._apply = lambda plan: None  # type: ignore[method-assign]  # the cluster does not move
    plan = world.tick()
    assert world.state.phase == Phase.PROMOTING and world.state.stableRevision == "v1"
    assert "growing canary to 4 pods (2 ready)" in world.state.message


def test_a_handover_applied_before_its_status_was_recorded_is_recognised() -> None:
    world = canary(deployed(rollout=with_rollout(steps=TWO_STEPS)))
    world.run_until(lambda world: world.state.phase == Phase.PROMOTING)
    status = world.state
    assert status.canaryRevision == "v2"
    # The operator applied the handover and died before recording it.
    observed = Observed(revision="v2", stable_template_revision="v2", stable_updated=4, stable_ready=4)
    plan = plan_workloads(world.spec, status, observed, world.now)
    assert plan.status.stableRevision == "v2" and plan.canary_replicas is None


def test_a_step_needs_a_pass_taken_after_its_weight_was_reached() -> None:
    world = canary(deployed())
    world.verdict = None
    world.run_until(lambda world: world.state.stepStartedAt is not None)
    state = world.state
    state.lastAnalysis = verdict_result(Verdict.PASS, "v2", world.now - timedelta(seconds=5))
    later = world.now + timedelta(seconds=60)
    observed = Observed(revision="v2", stable_ready=4, canary_ready=1, canary_exists=True)
    plan = plan_workloads(world.spec, state, observed, later)
    assert plan.status.step == 1 and plan.status.phase == Phase.PROGRESSING


def test_the_pause_starts_when_the_weight_is_reached() -> None:
    world = canary(deployed())
    world._apply = lambda plan: None  # type: ignore[method-assign]  # the canary pod is slow to start
    world.canary_ready = 0
    for _ in range(20):
        world.tick()
    assert world.state.stepStartedAt is None and world.state.step == 1
    assert "waiting for 1 ready canary pods (0 ready)" in world.state.message


def test_inconclusive_never_advances_nor_promotes() -> None:
    world = canary(deployed(rollout=with_rollout(analysis={"interval": "2s", "inconclusiveLimit": 1000})))
    world.verdict = Verdict.INCONCLUSIVE
    for _ in range(300):
        world.tick()
    state = world.state
    assert (state.phase, state.step, state.stableRevision) == (Phase.PROGRESSING, 1, "v1")
    assert state.lastAnalysis is not None and state.lastAnalysis.verdict == Verdict.INCONCLUSIVE
    assert state.inconclusiveIntervals == 150


def test_too_many_inconclusive_intervals_in_a_row_roll_back() -> None:
    world = canary(deployed(rollout=with_rollout(analysis={"interval": "2s", "inconclusiveLimit": 3})))
    world.verdict = Verdict.INCONCLUSIVE
    world.run_until(lambda world: world.rollbacks)
    assert world.rollbacks == ["inconclusive"]
    assert "3 inconclusive analyses in a row" in world.state.message


def test_a_pass_resets_the_inconclusive_run() -> None:
    world = canary(deployed(rollout=with_rollout(analysis={"interval": "2s", "inconclusiveLimit": 3})))
    for verdict in [Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE, Verdict.PASS] * 4 + [Verdict.INCONCLUSIVE]:
        world.verdict = verdict
        world.tick()
        world.tick()
    assert world.rollbacks == [] and world.state.inconclusiveIntervals == 1


# -- rollback --------------------------------------------------------------------------------------


def test_a_failed_analysis_rolls_back_at_once_and_explains_why() -> None:
    world = canary(deployed())
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.rollbacks)
    plan = world.plans[-1]
    assert (plan.rollback_reason, plan.canary_replicas, plan.stable_revision) == ("p99", 0, "v1")
    state = world.state
    assert (state.phase, state.failedRevision, state.canaryRevision, state.weight) == (
        Phase.ROLLING_BACK,
        "v2",
        None,
        0,
    )
    last = state.lastAnalysis
    assert last is not None
    assert (last.gate, last.value, last.threshold, last.window, last.samples) == (
        "p99",
        450,
        100,
        "10s",
        5000,
    )
    warning = world.events[-1]
    assert (warning.type, warning.reason) == ("Warning", "RolledBack")
    world.tick()
    assert world.state.phase == Phase.ROLLED_BACK and world.canary_ready == 0


def test_failure_limit_counts_failed_intervals() -> None:
    world = canary(deployed(rollout=with_rollout(analysis={"interval": "2s", "failureLimit": 3})))
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.state.failedIntervals == 2)
    assert world.state.phase == Phase.PROGRESSING
    world.run_until(lambda world: world.rollbacks)
    assert world.state.failedRevision == "v2"


def test_a_failed_revision_is_retried_only_by_a_new_template_or_a_retry_request() -> None:
    world = canary(deployed())
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.state.phase == Phase.ROLLED_BACK)
    assert world.state.rollbackOutcome == "Failed"
    world.verdict = Verdict.PASS
    world.change_spec(world.spec.model_copy(update={"paused": True}))  # not a change of what runs
    for _ in range(30):
        world.tick()
    assert world.state.phase == Phase.ROLLED_BACK and world.state.canaryRevision is None
    assert world.plans[-1].canary_replicas == 0 and world.rollbacks == ["p99"]
    # Operational edits (the SLO, freeze windows) leave the pod template, so the revision stays failed.
    relaxed = world.spec.model_dump(mode="json", exclude_none=True)
    relaxed["slo"]["p99LatencyMicros"] = 500
    relaxed["paused"] = False
    world.change_spec(make_spec(**relaxed))
    world.tick()
    assert (world.state.phase, world.state.canaryRevision) == (Phase.ROLLED_BACK, None)
    world.retry = retry_request("v2", world.generation, "a")
    world.tick()
    assert (world.state.phase, world.state.canaryRevision, world.state.step) == (Phase.PROGRESSING, "v2", 1)
    assert world.events[-2].reason == "Retrying" and world.state.failedRevision is None
    # The same request is honoured once: a second failure holds again.
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.state.phase == Phase.ROLLED_BACK)
    for _ in range(5):
        world.tick()
    assert world.state.canaryRevision is None and world.rollbacks == ["p99", "p99"]


def test_a_canary_never_judged_is_rolled_back_as_inconclusive_not_failed() -> None:
    world = canary(deployed(rollout=with_rollout(analysis={"interval": "1s", "inconclusiveLimit": 3})))
    world.verdict = Verdict.INCONCLUSIVE
    world.run_until(lambda world: world.state.phase == Phase.ROLLED_BACK)
    state = world.state
    assert (state.failedRevision, state.rollbackOutcome, world.rollbacks) == (
        "v2",
        "Inconclusive",
        ["inconclusive"],
    )
    assert [e.reason for e in world.events if e.type == "Warning"] == ["RolledBackInconclusive"]
    progressing = next(c for c in state.conditions if c.type == "Progressing")
    assert progressing.reason == "Inconclusive" and "never judged, not failed" in progressing.message
    assert progressing.observedGeneration == world.generation


def test_a_new_revision_after_a_rollback_starts_a_fresh_canary() -> None:
    world = canary(deployed())
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.state.phase == Phase.ROLLED_BACK)
    world.verdict = Verdict.PASS
    canary(world, "v3")
    state = world.state
    assert (state.canaryRevision, state.failedRevision, state.step, state.lastAnalysis) == (
        "v3",
        None,
        1,
        None,
    )


def test_pods_that_never_become_ready_roll_back() -> None:
    world = canary(deployed())
    world.canary_stalled = True
    world.tick()
    assert world.rollbacks == ["progressDeadline"]


def test_a_rollback_during_promotion_is_still_allowed() -> None:
    world = canary(deployed(rollout=with_rollout(steps=TWO_STEPS)))
    world.run_until(lambda world: world.state.phase == Phase.PROMOTING)
    world.canary_ready = 1
    world._apply = lambda plan: None  # type: ignore[method-assign]  # growing slowly
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.rollbacks)
    assert world.state.stableRevision == "v1" and world.state.failedRevision == "v2"


# -- the spec moves on -----------------------------------------------------------------------------


def test_returning_to_the_stable_revision_abandons_the_canary() -> None:
    world = canary(deployed())
    world.tick()
    world.revision = "v1"
    plan = world.tick()
    assert plan.canary_replicas is None and plan.stable_revision == "v1"
    assert world.state.phase == Phase.READY and world.state.canaryRevision is None
    assert world.reasons()[-1] == "CanaryAbandoned"


def test_a_newer_revision_mid_canary_restarts_at_the_first_step() -> None:
    world = canary(deployed())
    world.run_until(lambda world: world.state.step == 2)
    canary(world, "v3")
    state = world.state
    assert (state.canaryRevision, state.step, state.weight, state.stableRevision) == ("v3", 1, 5, "v1")
    assert "replacing canary v2" in world.events[-1].message


# -- manual control --------------------------------------------------------------------------------


def test_abort_acts_at_once_mid_analysis() -> None:
    world = canary(deployed(rollout=with_rollout(freezeWindows=[ALWAYS_FROZEN])))
    world.tick()
    world.abort = world.request()
    plan = world.tick()
    assert (plan.rollback_reason, plan.canary_replicas) == ("abort", 0)
    assert world.events[-1].reason == "Aborted" and world.state.failedRevision == "v2"


def test_an_abort_naming_another_revision_does_nothing() -> None:
    world = canary(deployed())
    world.abort = world.request("v1")
    world.tick()
    assert world.rollbacks == [] and world.state.canaryRevision == "v2"


def test_a_request_left_from_an_earlier_attempt_does_not_apply_to_a_retry() -> None:
    world = canary(deployed(rollout=with_rollout(freezeWindows=[ALWAYS_FROZEN])))
    world.promote = world.request()  # held by the freeze window, never acted on
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.state.phase == Phase.ROLLED_BACK)
    relaxed = world.spec.model_dump(mode="json", exclude_none=True)
    relaxed["slo"]["p99LatencyMicros"] = 500
    relaxed["rollout"]["freezeWindows"] = []
    world.change_spec(make_spec(**relaxed))
    world.retry = retry_request("v2", world.generation, "once")
    world.verdict = None
    for _ in range(60):
        world.tick()
    assert (world.state.canaryRevision, world.state.stableRevision, world.state.step) == ("v2", "v1", 1)


def test_promote_on_request_skips_the_remaining_steps() -> None:
    world = canary(deployed())
    world.verdict = None  # no data: a person decided
    world.promote = world.request()
    world.run_until(lambda world: world.state.stableRevision == "v2")
    assert world.adopted_canary_pods
    assert "promoted on request" in next(
        event.message for event in world.events if event.reason == "Promoting"
    )


def test_pause_holds_the_step_and_resume_continues() -> None:
    world = canary(deployed(paused=True))
    for _ in range(60):
        world.tick()
    state = world.state
    assert (state.phase, state.step) == (Phase.PAUSED, 1)
    assert state.lastAnalysis is not None, "a paused canary is still analysed, so it can still roll back"
    world.change_spec(world.spec.model_copy(update={"paused": False}))
    world.run_until(lambda world: world.state.stableRevision == "v2")


def test_a_paused_canary_still_rolls_back() -> None:
    world = canary(deployed(paused=True))
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.rollbacks)


# -- freeze windows --------------------------------------------------------------------------------


def test_a_freeze_window_holds_the_weight_and_never_promotes() -> None:
    world = canary(deployed(rollout=with_rollout(freezeWindows=[ALWAYS_FROZEN])))
    for _ in range(300):
        world.tick()
    state = world.state
    assert (state.phase, state.step, state.weight, state.stableRevision) == (Phase.PROGRESSING, 1, 5, "v1")
    assert "holding step 1/3 (5%): daily freeze 00:00-00:00 UTC" in state.message
    assert not any(plan.stable_revision == "v2" for plan in world.plans)


def test_a_freeze_window_still_rolls_back() -> None:
    world = canary(deployed(rollout=with_rollout(freezeWindows=[ALWAYS_FROZEN])))
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.state.phase == Phase.ROLLED_BACK)


def test_a_promote_request_waits_for_the_window_to_close() -> None:
    start = START.strftime("%H:%M")
    end = (START + timedelta(minutes=2)).strftime("%H:%M")
    window = {"start": start, "end": end, "timezone": "UTC"}
    world = canary(deployed(rollout=with_rollout(freezeWindows=[window])))
    world.promote = world.request()
    world.tick()
    assert "promotion requested but held by daily freeze" in world.state.message
    world.run_until(lambda world: world.state.stableRevision == "v2")
    handover = next(plan for plan in world.plans if plan.status.stableRevision == "v2")
    assert handover.status.stepStartedAt is None
    assert world.now >= START + timedelta(minutes=2)


# -- the HTTPRoute split ---------------------------------------------------------------------------


def test_traffic_weights_follow_the_steps_once_canary_pods_are_ready() -> None:
    world = deployed(rollout=with_rollout(httpRoute={"name": "orders"}))
    assert world.plans[-1].traffic_weight == 0
    world.revision = "v2"
    plan = world.tick()
    assert (plan.canary_replicas, plan.traffic_weight) == (1, 0), "no traffic to a canary with no ready pod"
    plan = world.tick()
    assert plan.traffic_weight == 500, "basis points"
    world.run_until(lambda world: world.state.step == 3)
    world.tick()
    assert world.plans[-1].traffic_weight == 5000 and world.plans[-1].canary_replicas == 2
    world.verdict = Verdict.FAIL
    world.run_until(lambda world: world.rollbacks)
    assert world.plans[-1].traffic_weight == 0


def test_actual_weight_is_the_ready_replica_ratio() -> None:
    world = canary(deployed())
    world.tick()
    assert (world.state.weight, world.state.actualWeight) == (5, 20)  # 1 canary pod beside 4 stable


# -- analysis timing -------------------------------------------------------------------------------


def test_analysis_is_due_once_per_interval_on_a_canary_with_ready_pods() -> None:
    world = canary(deployed())
    status = world.state
    assert not analysis_due(world.spec, status, 0, world.now)
    assert analysis_due(world.spec, status, 1, world.now)
    status.lastAnalysisAt = "2025-06-07T12:00:00Z"
    interval = parse_duration(world.spec.rollout.analysis.interval)
    assert not analysis_due(world.spec, status, 1, START + timedelta(seconds=interval - 0.5))
    assert analysis_due(world.spec, status, 1, START + timedelta(seconds=interval))


def test_no_analysis_without_a_canary() -> None:
    world = deployed()
    assert not analysis_due(world.spec, world.state, 3, world.now)


# -- restart safety and invariants -----------------------------------------------------------------

ACTIONS = st.sampled_from(
    ["pass", "fail", "inconclusive", "silent", "promote", "abort", "pause", "resume", "new"]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(ACTIONS, st.integers(min_value=1, max_value=8)), min_size=1, max_size=25))
def test_invariants_hold_and_a_restarted_operator_makes_the_same_plan(script: list[tuple[str, int]]) -> None:
    world = canary(deployed(rollout=with_rollout(analysis={"interval": "2s", "failureLimit": 2})))
    revisions = iter(f"v{n}" for n in range(3, 100))
    for action, ticks in script:
        world.verdict = {
            "pass": Verdict.PASS,
            "fail": Verdict.FAIL,
            "inconclusive": Verdict.INCONCLUSIVE,
        }.get(action)
        # Annotations stay on the resource until overwritten, as they do in a cluster.
        if action == "promote" and world.state.canaryRevision:
            world.promote = world.request()
        if action == "abort" and world.state.canaryRevision:
            world.abort = world.request()
        if action in ("pause", "resume"):
            world.change_spec(world.spec.model_copy(update={"paused": action == "pause"}))
        if action == "new":
            world.revision = next(revisions)
            world.generation += 1
        for _ in range(ticks):
            before = world.state
            observed = world.observe()
            # A restarted operator has only the status it reads back from the API server.
            restarted = TradingServiceStatus.model_validate_json(before.model_dump_json())
            assert plan_workloads(world.spec, restarted, observed, world.now) == plan_workloads(
                world.spec, before, observed, world.now
            )
            requested = before.canaryRevision is not None and world.promote == world.request()
            plan = world.tick()
            after = plan.status
            if plan.canary_replicas is not None:
                assert 0 <= plan.canary_replicas <= world.spec.replicas
            if plan.rollback_reason:
                assert plan.canary_replicas == 0 and after.weight == 0
            if after.stableRevision != before.stableRevision:
                # Promoted: after a pass taken on the last step, or on request.
                last = before.lastAnalysis
                assert (
                    requested
                    or (last is not None and last.verdict == Verdict.PASS and before.step == 3)
                    or before.phase == Phase.PROMOTING
                )
            if after.phase == Phase.PROMOTING and before.phase != Phase.PROMOTING:
                assert requested or (
                    before.lastAnalysis is not None and before.lastAnalysis.verdict == Verdict.PASS
                )


EVENT_LOG = {"servers": ["nats://nats.trading.svc:4222"], "replicas": 3}


@pytest.mark.parametrize(
    ("component", "event_log", "shared"),
    [
        ("risk", EVENT_LOG, True),
        ("risk", None, False),  # limits per replica: no partitions to share
        ("order", EVENT_LOG, False),
    ],
)
def test_a_risk_canary_on_the_event_log_says_what_happens_to_its_partitions(
    component: str, event_log: dict[str, Any] | None, shared: bool
) -> None:
    world = canary(deployed(component=component, eventLog=event_log))
    reasons = world.reasons()
    assert ("PartitionsShared" in reasons) == shared, reasons
    if shared:
        assert reasons[-2:] == ["CanaryStarted", "PartitionsShared"]
        message = next(event.message for event in world.events if event.reason == "PartitionsShared")
        assert "PARTITION_TAKEOVER" in message and "firm-wide" in message
