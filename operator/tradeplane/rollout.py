"""The canary state machine, a pure function: (spec, status, observed, now) -> (workloads, new status).

No I/O happens here: the handlers observe the cluster and the metrics, call `plan_workloads`, then apply
what it answers. Every bit of rollout state lives in the resource's status, so an operator killed at any
moment resumes the same rollout at the same step.

The life of a revision that differs from the stable one:

1. **Canary.** A Deployment `<name>-canary` runs the new revision beside the stable `<name>`, which keeps
   its full size and stays warm. The canary walks `spec.rollout.steps`. A step's weight is a replica ratio
   or a route weight, as the spec's traffic router (traffic/) sets it. A step's pause starts once its
   weight is reached; it ends with a passing analysis taken after that moment. Inside a freeze window it
   holds.
2. **Analysis** every `analysis.interval` while the canary has ready pods. `failureLimit` failed
   intervals, or `inconclusiveLimit` inconclusive ones in a row, roll back. Never promote without data.
3. **Promotion**, after the last step or on request, outside freeze windows: the canary grows to the
   stable's size; once all its pods are ready the stable Deployment takes the new template while paused,
   and the canary Deployment is deleted with orphan propagation. Its ReplicaSet, whose template is the
   stable's new template, is adopted by the stable Deployment as its *new* ReplicaSet and, being
   saturated, the old ReplicaSet is scaled to zero. The canary's pods become the stable's pods: the new
   revision becomes stable with no second rollout and no pod restarted. Then the stable is resumed.
4. **Rollback** on failure or abort: traffic weight to zero, the canary to zero replicas, phase
   RollingBack then RolledBack once its pods are gone. The outcome says why (`rollbackOutcome`): a
   failed gate, Inconclusive (never judged: no traffic, no metrics; a safe default, not a verdict on the
   release), Aborted, or Stalled. The revision is not retried until the pod template changes (an
   operational edit such as a freeze window or the SLO does not retry it) or a retry request asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from tradeplane.api import (
    BASIS_POINTS,
    AnalysisResult,
    Phase,
    RollbackOutcome,
    TradingServiceSpec,
    TradingServiceStatus,
    Verdict,
    now_iso,
    parse_duration,
    percent,
)
from tradeplane.events import Event
from tradeplane.freeze import Freeze, active_freeze
from tradeplane.traffic import Serving, router_for

# The rollback reasons that are not a failed gate; any other reason names the gate that failed.
ROLLBACK_OUTCOMES: dict[str, RollbackOutcome] = {
    "abort": "Aborted",
    "inconclusive": "Inconclusive",
    "progressDeadline": "Stalled",
}
LIVE_CANARY_PHASES = frozenset({Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING})
ROLLOUT_PHASES = LIVE_CANARY_PHASES | {Phase.ROLLING_BACK, Phase.ROLLED_BACK}

# The rule for risk's account partitions while a canary of it runs (with an event log, limits firm-wide).
PARTITIONS_DURING_A_RISK_CANARY = (
    "canary pods join risk's partition members like any replica: each takes a share of the account "
    "partitions over by a fenced takeover (their orders refused with PARTITION_TAKEOVER during the replay), "
    "one owner per partition whatever its revision, so limits stay firm-wide; an abort or a promotion "
    "deletes pods, which hand their partitions to the remaining members the same way"
)


class RolloutError(RuntimeError):
    """A rollout state the machine never produces: a bug, reported instead of acted upon."""


@dataclass(frozen=True)
class Observed:
    """What the handlers saw of the cluster and the metrics just now."""

    revision: str
    """The revision of the spec's pod template."""
    stable_ready: int = 0
    canary_ready: int = 0
    canary_stalled: bool = False
    """The canary Deployment exceeded its progress deadline (pods that never become ready)."""
    canary_exists: bool = False
    stable_template_revision: str | None = None
    """The revision label of the live stable Deployment's pod template."""
    stable_updated: int = 0
    """Pods of the stable Deployment's current template (0 until its controller saw that template)."""
    stable_settled: bool = False
    """The stable Deployment runs its template on all its replicas, all available, nothing else left."""
    traffic_weight: int | None = None
    """The canary's weight, basis points, where the mechanism holds it (an HTTPRoute's backends, the
    weight every caller acknowledged); None when the mechanism has none or nothing holds one."""
    counted_weight: int | None = None
    """The canary's share of the requests its callers counted lately, basis points (orderFlow)."""
    analysis: AnalysisResult | None = None
    """A verdict measured just now, when `analysis_due` said so."""
    generation: int | None = None
    """The resource's metadata.generation: a manual request holds for the spec it was made against."""
    promote: str | None = None
    """The promote annotation's value, a `request(revision, generation)`."""
    abort: str | None = None
    """The abort annotation's value, a `request(revision, generation)`."""
    retry: str | None = None
    """The retry annotation's value, a `retry_request(revision, generation, nonce)`."""


@dataclass(frozen=True)
class Plan:
    """The workloads to apply and the status to record (record first: the plan is idempotent from it)."""

    status: TradingServiceStatus
    stable_revision: str
    """The stable Deployment's revision: the spec's renders from the spec, another keeps its live template."""
    stable_paused: bool = False
    """Hold the stable Deployment's controller during a promotion handover."""
    canary_replicas: int | None = None
    """None: no canary Deployment (delete it with orphan propagation, so the stable adopts its pods)."""
    traffic_weight: int | None = None
    """The canary's weight to set (a route, the callers), basis points; None when the mechanism has none."""
    events: tuple[Event, ...] = ()
    rollback_reason: str | None = None
    """Set when this plan starts a rollback: the failing gate, inconclusive, abort or progressDeadline."""


def request(revision: str, generation: int) -> str:
    """The value of a promote or abort annotation: which canary, seen in which spec generation.

    Bound to the generation, a request left on the resource never applies to a later attempt of the same
    revision (a retry after a rollback needs a spec change, which bumps the generation).
    """
    return f"{revision}@{generation}"


def retry_request(revision: str, generation: int, nonce: str) -> str:
    """The value of a retry annotation: a `request` made unique, so that each one is honoured once."""
    return f"{request(revision, generation)}#{nonce}"


def canary_replicas_for(spec: TradingServiceSpec, weight: int) -> int:
    """Canary pods for a weight, as the spec's traffic router needs them."""
    return router_for(spec).canary_replicas(spec.replicas, weight)


def serving(observed: Observed) -> Serving:
    return Serving(
        observed.stable_ready, observed.canary_ready, observed.traffic_weight, observed.counted_weight
    )


def actual_weight(spec: TradingServiceSpec, observed: Observed) -> float:
    """The canary's share as served, percent."""
    return percent(router_for(spec).served_weight(serving(observed)))


def weight_text(basis_points: int) -> str:
    """A weight as people write it: 5%, 0.1%, 0.01%."""
    return f"{percent(basis_points):g}%"


def analysis_due(
    spec: TradingServiceSpec, status: TradingServiceStatus, canary_ready: int, now: datetime
) -> bool:
    """Measure now? Only a live canary with ready pods, once per `analysis.interval`."""
    if status.canaryRevision is None or status.phase not in LIVE_CANARY_PHASES or canary_ready == 0:
        return False
    if status.lastAnalysisAt is None:
        return True
    elapsed = now - _parse_time(status.lastAnalysisAt)
    return elapsed >= timedelta(seconds=parse_duration(spec.rollout.analysis.interval))


def plan_workloads(
    spec: TradingServiceSpec, status: TradingServiceStatus, observed: Observed, now: datetime
) -> Plan:
    """One step of the state machine. Idempotent: the same inputs give the same plan."""
    machine = _Machine(spec, status.model_copy(deep=True), observed, now)
    return machine.run()


@dataclass
class _Machine:
    spec: TradingServiceSpec
    status: TradingServiceStatus
    observed: Observed
    now: datetime
    events: list[Event] = field(default_factory=list)

    @property
    def revision(self) -> str:
        return self.observed.revision

    def run(self) -> Plan:
        status = self.status
        if status.stableRevision is None or (self.spec.replicas == 0 and status.canaryRevision is None):
            # Nothing serves the old revision: there is nothing to protect, the new one is stable at once.
            status.stableRevision = self.revision
        if self.revision == status.stableRevision:
            return self._stable_only()
        if status.failedRevision == self.revision:
            if not self._retry_requested():
                return self._hold_rolled_back()
            status.retriedRequest = self.observed.retry
            self._note(
                "Normal",
                "Retrying",
                f"revision {self.revision} retried on request ({status.rollbackOutcome})",
            )
        if status.canaryRevision != self.revision:
            self._start_canary()
        return self._live_canary()

    # -- no canary -----------------------------------------------------------------------------------

    def _stable_only(self) -> Plan:
        status = self.status
        stable = self.revision
        observed = self.observed
        if status.phase == Phase.PROMOTING and status.canaryRevision is None:
            if not (observed.stable_settled and observed.stable_template_revision == stable):
                # Paused until the stable owns the canary's ReplicaSet, so it adopts it rather than
                # starting a ReplicaSet of its own.
                adopting = observed.canary_exists and observed.stable_updated == 0
                return self._plan(stable, stable_paused=adopting)
            self._note(
                "Normal", "Promoted", f"revision {stable} is stable on all {self.spec.replicas} replicas"
            )
            status.message = f"revision {stable} promoted"
        elif status.canaryRevision is not None:
            self._note(
                "Normal",
                "CanaryAbandoned",
                f"the spec returned to the stable revision {stable}: canary {status.canaryRevision} removed",
            )
            status.message = (
                f"canary {status.canaryRevision} abandoned: the spec returned to revision {stable}"
            )
        if status.phase in ROLLOUT_PHASES:
            status.phase = Phase.READY
        self._clear_canary()
        status.failedRevision = status.rollbackOutcome = None
        self._condition(False, "Stable", f"revision {stable} is stable")
        return self._plan(stable)

    def _hold_rolled_back(self) -> Plan:
        status = self.status
        gone = self.observed.canary_ready == 0 and not self.observed.traffic_weight
        status.phase = Phase.ROLLED_BACK if gone else Phase.ROLLING_BACK
        status.actualWeight = actual_weight(self.spec, self.observed)
        retry = "change the pod template or run `tradeplane retry` to try it again"
        if status.rollbackOutcome == "Inconclusive":
            # Not a proven-bad release: no analysis could judge it (no traffic, metrics unreachable).
            self._condition(
                False, "Inconclusive", f"revision {self.revision} was never judged, not failed; {retry}"
            )
        else:
            outcome = (status.rollbackOutcome or "Failed").lower()
            self._condition(False, "RolledBack", f"revision {self.revision} {outcome}; {retry}")
        return self._plan(self._stable(), canary_replicas=0)

    # -- live canary -----------------------------------------------------------------------------------

    def _start_canary(self) -> None:
        status = self.status
        previous = status.canaryRevision
        self._clear_canary()
        status.canaryRevision = self.revision
        status.failedRevision = status.rollbackOutcome = None
        status.phase = Phase.PROGRESSING
        status.step = 1
        status.shadow = self._shadow()
        first = self.spec.rollout.steps[0].basis_points
        status.weight = percent(first)
        status.lastAnalysis = None
        replaced = f", replacing canary {previous}" if previous and previous != self.revision else ""
        status.message = f"canary {self.revision} started at step 1 ({weight_text(first)}){replaced}"
        self._note("Normal", "CanaryStarted", status.message)
        if self.spec.component == "risk" and self.spec.eventLog is not None:
            self._note("Normal", "PartitionsShared", PARTITIONS_DURING_A_RISK_CANARY)

    def _live_canary(self) -> Plan:
        status, observed = self.status, self.observed
        steps = self.spec.rollout.steps
        status.step = min(max(status.step or 1, 1), len(steps))
        if self._requested(observed.abort):
            return self._roll_back("abort", f"canary {self.revision} aborted on request")
        if observed.canary_stalled:
            return self._roll_back(
                "progressDeadline",
                f"canary {self.revision} pods did not become ready within the progress deadline",
            )
        if status.phase == Phase.PROMOTING and observed.stable_template_revision == self.revision:
            return self._hand_over()
        failure = self._record_analysis()
        if failure is not None:
            return failure
        freeze = self._freeze()
        if status.phase == Phase.PROMOTING or (self._requested(observed.promote) and freeze is None):
            return self._promote(freeze)
        return self._walk_steps(freeze)

    def _record_analysis(self) -> Plan | None:
        status, result = self.status, self.observed.analysis
        if result is None or result.revision != self.revision:
            return None
        analysis = self.spec.rollout.analysis
        status.lastAnalysis = result
        status.lastAnalysisAt = now_iso(self.now)
        if result.verdict == Verdict.FAIL:
            status.failedIntervals += 1
            if status.failedIntervals >= analysis.failureLimit:
                return self._roll_back(result.gate or "analysis", f"canary {self.revision}: {result.message}")
        elif result.verdict == Verdict.INCONCLUSIVE:
            status.inconclusiveIntervals += 1
            if status.inconclusiveIntervals >= analysis.inconclusiveLimit:
                return self._roll_back(
                    "inconclusive",
                    f"canary {self.revision}: {status.inconclusiveIntervals} inconclusive analyses in a row, "
                    f"the last: {result.message}",
                )
        else:
            status.inconclusiveIntervals = 0
        return None

    def _walk_steps(self, freeze: Freeze | None) -> Plan:
        status, observed = self.status, self.observed
        steps = self.spec.rollout.steps
        if status.step is None:
            raise RolloutError(f"canary {self.revision} walks its steps without a step recorded")
        if status.shadow != self._shadow():
            # What the steps proved in one mode says nothing of the other: walk them again.
            status.shadow = self._shadow()
            status.step, status.stepStartedAt = 1, None
            mode = "shadow" if status.shadow else "live"
            self._note("Normal", "ModeChanged", f"canary {self.revision}: steps restart at 1 in {mode} mode")
        index = status.step - 1
        weight = steps[index].basis_points
        status.weight = percent(weight)
        replicas = canary_replicas_for(self.spec, weight)
        reached = router_for(self.spec).reached(serving(observed), replicas, weight)
        if reached and status.stepStartedAt is None:
            status.stepStartedAt = now_iso(self.now)
        status.actualWeight = actual_weight(self.spec, observed)
        traffic_weight = self._share(weight)
        where = f"step {status.step}/{len(steps)} ({weight_text(weight)})"
        if self._requested(observed.promote) and freeze is not None:
            where += f", promotion requested but held by {freeze.description} until {now_iso(freeze.until)}"
        if self.spec.paused:
            status.phase = Phase.PAUSED
            status.message = f"paused at {where}"
            self._condition(True, "Paused", status.message)
            return self._plan(self._stable(), canary_replicas=replicas, traffic_weight=traffic_weight)
        status.phase = Phase.PROGRESSING
        if not self._step_done(steps[index].pause):
            status.message = self._waiting(where, reached, replicas)
            self._condition(True, "Analysing" if reached else "Scaling", status.message)
            return self._plan(self._stable(), canary_replicas=replicas, traffic_weight=traffic_weight)
        if freeze is not None:
            status.message = f"holding {where}: {freeze.description} until {now_iso(freeze.until)}"
            self._condition(True, "Frozen", status.message)
            return self._plan(self._stable(), canary_replicas=replicas, traffic_weight=traffic_weight)
        if status.step == len(steps):
            if status.shadow:
                return self._hold_shadow_passed(where, replicas, traffic_weight)
            return self._promote(None)
        status.step += 1
        following = steps[status.step - 1].basis_points
        status.weight = percent(following)
        status.stepStartedAt = None
        status.message = (
            f"step {status.step}/{len(steps)} ({weight_text(following)}) after a passing analysis"
        )
        self._note("Normal", "StepAdvanced", f"canary {self.revision}: {status.message}")
        self._condition(True, "Scaling", status.message)
        return self._plan(
            self._stable(),
            canary_replicas=canary_replicas_for(self.spec, following),
            traffic_weight=traffic_weight,
        )

    def _share(self, weight: int) -> int:
        """The canary's share to route: none while no canary pod is ready, but an order-flow share its
        callers already held stays while its pods are briefly unready (a slow probe on a busy machine):
        those accounts wait for the canary, refused meanwhile, rather than move to a stable revision that
        knows nothing of what the canary booked for them. A canary that stays down fails its analysis."""
        if self.observed.canary_ready > 0:
            return weight
        held = self.spec.rollout.orderFlow is not None and self.status.stepStartedAt is not None
        return weight if held else 0

    def _hold_shadow_passed(self, where: str, replicas: int, traffic_weight: int) -> Plan:
        """A shadow run proves agreement, not live behaviour: the user decides what comes next."""
        status = self.status
        status.phase = Phase.PAUSED
        then = (
            "request promotion"
            if self.spec.rollout.stateShadow is not None
            else "request promotion, or set rollout.orderFlow.mode: live to walk the steps live"
        )
        status.message = f"shadow passed {where}, the canary answered no client: {then}"
        if self.status.condition("Progressing").reason != "ShadowPassed":
            self._note("Normal", "ShadowPassed", f"canary {self.revision}: {status.message}")
        self._condition(True, "ShadowPassed", status.message)
        return self._plan(self._stable(), canary_replicas=replicas, traffic_weight=traffic_weight)

    def _shadow(self) -> bool:
        return self.spec.rollout.shadow

    def _step_done(self, pause: str) -> bool:
        status = self.status
        if status.stepStartedAt is None:
            return False
        started = _parse_time(status.stepStartedAt)
        if self.now - started < timedelta(seconds=parse_duration(pause)):
            return False
        last = status.lastAnalysis
        return (
            last is not None
            and last.verdict == Verdict.PASS
            and last.time is not None
            and _parse_time(last.time) >= started
        )

    def _waiting(self, where: str, reached: bool, replicas: int) -> str:
        observed = self.observed
        if not reached and observed.canary_ready < replicas:
            return f"{where}: waiting for {replicas} ready canary pods ({observed.canary_ready} ready)"
        if not reached:
            held = "none" if observed.traffic_weight is None else weight_text(observed.traffic_weight)
            return f"{where}: waiting for the traffic to take the weight (held: {held})"
        last = self.status.lastAnalysis
        verdict = f"last analysis {last.verdict}: {last.message}" if last else "no analysis yet"
        return f"{where}: analysing, {verdict}"

    # -- promotion --------------------------------------------------------------------------------------

    def _promote(self, freeze: Freeze | None) -> Plan:
        """Grow the canary to the stable's size, then hand its pods over (see the module docstring)."""
        status, observed = self.status, self.observed
        full = self.spec.replicas
        if status.phase != Phase.PROMOTING:
            status.phase = Phase.PROMOTING
            how = "on request" if self._requested(observed.promote) else "after the last step"
            self._note("Normal", "Promoting", f"canary {self.revision} promoted {how}")
        status.weight = percent(BASIS_POINTS)
        status.actualWeight = actual_weight(self.spec, observed)
        traffic_weight = self._share(self.spec.rollout.steps[-1].basis_points)
        if observed.canary_ready < full:
            status.message = f"promoting: growing canary to {full} pods ({observed.canary_ready} ready)"
        elif freeze is not None:
            status.message = f"promoting: holding before the handover, {freeze.description} until " + now_iso(
                freeze.until
            )
        else:
            return self._hand_over()
        self._condition(True, "Promoting", status.message)
        return self._plan(self._stable(), canary_replicas=full, traffic_weight=traffic_weight)

    def _hand_over(self) -> Plan:
        status = self.status
        status.stableRevision = self.revision
        self._clear_canary()
        status.phase = Phase.PROMOTING
        status.message = (
            f"promoting: the stable Deployment adopts the canary pods of revision {self.revision}"
        )
        self._condition(True, "Promoting", status.message)
        return self._plan(self.revision, stable_paused=True)

    # -- rollback ---------------------------------------------------------------------------------------

    def _roll_back(self, reason: str, message: str) -> Plan:
        status = self.status
        outcome = ROLLBACK_OUTCOMES.get(reason, "Failed")
        status.failedRevision = self.revision
        status.rollbackOutcome = outcome
        self._clear_canary()
        status.phase = Phase.ROLLING_BACK
        status.message = f"rolled back: {message}"
        event = {"Aborted": "Aborted", "Inconclusive": "RolledBackInconclusive"}.get(outcome, "RolledBack")
        self._note("Warning", event, message)
        self._condition(False, "Inconclusive" if outcome == "Inconclusive" else "RolledBack", status.message)
        return replace(self._plan(self._stable(), canary_replicas=0), rollback_reason=reason)

    # -- helpers -----------------------------------------------------------------------------------------

    def _requested(self, annotation: str | None) -> bool:
        generation = self.observed.generation
        return generation is not None and annotation == request(self.revision, generation)

    def _retry_requested(self) -> bool:
        generation, retry = self.observed.generation, self.observed.retry
        return (
            generation is not None
            and retry is not None
            and retry.startswith(request(self.revision, generation) + "#")
            and retry != self.status.retriedRequest
        )

    def _stable(self) -> str:
        if self.status.stableRevision is None:
            raise RolloutError("no stable revision recorded")  # run() records one before anything else
        return self.status.stableRevision

    def _freeze(self) -> Freeze | None:
        try:
            return active_freeze(self.spec.rollout.freezeWindows, self.now)
        except ValueError as error:
            # A window that cannot be evaluated may cover market hours: hold rather than promote.
            return Freeze(f"invalid freeze window ({error})", self.now)

    def _clear_canary(self) -> None:
        status = self.status
        status.canaryRevision = None
        status.step = None
        status.shadow = False
        status.weight = 0
        status.stepStartedAt = None
        status.failedIntervals = 0
        status.inconclusiveIntervals = 0

    def _note(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(kind, reason, message))

    def _condition(self, progressing: bool, reason: str, message: str) -> None:
        self.status.set_condition(
            "Progressing", progressing, reason, message, self.now, self.observed.generation
        )

    def _plan(
        self,
        stable: str,
        canary_replicas: int | None = None,
        traffic_weight: int = 0,
        stable_paused: bool = False,
    ) -> Plan:
        return Plan(
            status=self.status,
            stable_revision=stable,
            stable_paused=stable_paused,
            canary_replicas=canary_replicas,
            traffic_weight=traffic_weight if router_for(self.spec).sets_weight else None,
            events=tuple(self.events),
        )


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
