"""One reconcile of one TradingService, as a pure function: what was observed -> what to do.

`View.observe` parses what the handlers read (the resource, its children, its pods); `decide` answers
the children to apply and delete, pods to replace, the status and the Events. No I/O: the handlers do
exactly what the Decision says, so every reconcile decision has a unit test.

The rollout seam is `rollout.plan_workloads(spec, status, observed, now)`, called on every reconcile:
it decides which revision the stable Deployment runs, whether it is paused, and how many canary pods
run; it owns the rollout fields of the status and the Progressing condition. This module renders what
it decided and owns the rest of the status (Ready, Placed, Degraded, replicas, nodes, and the phase when
no rollout is in flight).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tradeplane import capacity, naming, rendering, rollout
from tradeplane.api import (
    AnalysisResult,
    Phase,
    TradingServiceSpec,
    TradingServiceStatus,
    field_path,
)
from tradeplane.capacity import Fit, PodView, PoolSnapshot
from tradeplane.events import Event
from tradeplane.labels import (
    ABORT_ANNOTATION,
    APPLIED_ANNOTATION,
    PROMOTE_ANNOTATION,
    RETRY_ANNOTATION,
    REVISION_LABEL,
    ROLE_LABEL,
)
from tradeplane.naming import Owner
from tradeplane.podspec import RenderError
from tradeplane.revision import template_revision
from tradeplane.traffic import Backends, router_for
from tradeplane.traffic.order_flow import CallerReport, routing_table
from tradeplane_services.orderflow import RoutingTable

ChildKey = tuple[str, str]
"""(kind, name) of a child."""
Problem = tuple[str, str]
"""(reason, message) of what degrades a service."""
# While a rollout is live its clock (steps, analysis) needs a tick even when nothing else changes.
ROLLOUT_TICK_SECONDS = 1.0
# Unplaced pods: look at the pool again, capacity may have been freed.
PLACEMENT_RETRY_SECONDS = 10.0
# The phases the rollout state machine sets and this module leaves alone.
ROLLOUT_HELD_PHASES = frozenset({Phase.PAUSED, Phase.PROMOTING, Phase.ROLLING_BACK, Phase.ROLLED_BACK})


@dataclass(frozen=True)
class Deletion:
    api_version: str
    kind: str
    name: str
    uid: str | None = None
    propagation: str = "Background"


@dataclass(frozen=True)
class DeploymentState:
    """What the operator reads of one of its Deployments."""

    exists: bool = False
    revision: str | None = None
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    settled: bool = False
    stalled: bool = False
    failure: str | None = None
    """Why its ReplicaSet cannot create pods (admission refused them: quota, RuntimeClass, policy)."""

    @classmethod
    def read(cls, manifest: Mapping[str, Any] | None) -> DeploymentState:
        if manifest is None:
            return cls()
        metadata, spec, status = manifest["metadata"], manifest.get("spec", {}), manifest.get("status", {})
        current = status.get("observedGeneration", 0) >= metadata.get("generation", 0)
        replicas = spec.get("replicas", 1)
        updated = status.get("updatedReplicas", 0) if current else 0
        conditions = {condition.get("type"): condition for condition in status.get("conditions", [])}
        progressing: Mapping[str, Any] = conditions.get("Progressing", {})
        replica_failure: Mapping[str, Any] = conditions.get("ReplicaFailure", {})
        return cls(
            exists=True,
            revision=spec.get("template", {}).get("metadata", {}).get("labels", {}).get(REVISION_LABEL),
            replicas=replicas,
            ready=status.get("readyReplicas", 0),
            updated=updated,
            settled=current
            and updated == replicas
            and status.get("replicas", 0) == replicas
            and status.get("availableReplicas", 0) == replicas,
            stalled=progressing.get("reason") == "ProgressDeadlineExceeded",
            failure=replica_failure.get("message") if replica_failure.get("status") == "True" else None,
        )


@dataclass(frozen=True)
class View:
    """A TradingService and what it owns, parsed. `spec` is None when the stored spec is unusable."""

    owner: Owner
    generation: int
    annotations: Mapping[str, str]
    raw_status: Mapping[str, Any]
    status: TradingServiceStatus
    spec: TradingServiceSpec | None
    spec_error: str | None
    children: Mapping[ChildKey, Mapping[str, Any]]
    pods: Sequence[PodView]

    @classmethod
    def observe(
        cls,
        body: Mapping[str, Any],
        children: Mapping[ChildKey, Mapping[str, Any]],
        pods: Sequence[PodView],
    ) -> View:
        metadata = body["metadata"]
        raw_status = body.get("status") or {}
        spec, error = None, None
        try:
            spec = TradingServiceSpec.model_validate(body.get("spec", {}))
        except ValidationError as invalid:
            error = "; ".join(
                f"{field_path(issue['loc'], 'spec')}: {issue['msg']}" for issue in invalid.errors()
            )
        return cls(
            owner=Owner(metadata["name"], metadata["namespace"], metadata.get("uid")),
            generation=metadata.get("generation", 0),
            annotations=metadata.get("annotations") or {},
            raw_status=raw_status,
            status=TradingServiceStatus.model_validate(raw_status),
            spec=spec,
            spec_error=error,
            children=children,
            pods=pods,
        )

    def deployment(self, role: naming.Role) -> DeploymentState:
        return DeploymentState.read(
            self.children.get(("Deployment", naming.deployment_name(self.owner, role)))
        )

    def ready_pods(self, revision: str) -> list[PodView]:
        return [pod for pod in self.pods if pod.revision == revision and pod.ready and pod.active and pod.ip]

    def analysis_due(self, now: datetime) -> bool:
        if self.spec is None:
            return False
        canary = self.deployment("canary")
        return rollout.analysis_due(self.spec, self.status, canary.ready, now)

    def needs_preflight(self) -> bool:
        """Are pods of this service still to be placed? Only then is the pool worth reading."""
        if self.spec is None:
            return False
        return capacity.pods_to_place(self.spec.replicas, self.pods) > 0


@dataclass
class Decision:
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[Deletion] = field(default_factory=list)
    delete_pods: list[PodView] = field(default_factory=list)
    status: dict[str, Any] | None = None
    """The whole new status (nulls clear fields), or None when it is unchanged."""
    events: list[Event] = field(default_factory=list)
    traffic_patch: dict[str, Any] | None = None
    """A merge patch for the spec's traffic object (its weights changed), or None to leave it."""
    routing: RoutingTable | None = None
    """What the callers of an orderFlow service are to hold now (pushed every reconcile)."""
    requeue_after: float | None = None
    rollback_reason: str | None = None


def decide(
    view: View,
    *,
    now: datetime,
    pool: PoolSnapshot | None = None,
    monitoring: bool = False,
    analysis: AnalysisResult | None = None,
    traffic_object: Mapping[str, Any] | None = None,
    callers: CallerReport | None = None,
) -> Decision:
    """Everything this reconcile must do. `pool` is needed only when `view.needs_preflight()`,
    `traffic_object` (None when the mechanism has none or it is missing) when the traffic router names one,
    `callers` (what they answered the last routing pushes) with orderFlow.

    A spec that cannot be used (refused by the models, or rendering a pod that breaks a rule the operator
    guarantees) is reported in the status and an Event, and nothing is applied."""
    if view.spec is None:
        return _unusable(view, now, "InvalidSpec", view.spec_error or "invalid spec")
    try:
        return _decide(view, view.spec, now, pool, monitoring, analysis, traffic_object, callers)
    except RenderError as error:
        return _unusable(view, now, "RenderError", str(error))


def _decide(
    view: View,
    spec: TradingServiceSpec,
    now: datetime,
    pool: PoolSnapshot | None,
    monitoring: bool,
    analysis: AnalysisResult | None,
    traffic_object: Mapping[str, Any] | None,
    callers: CallerReport | None,
) -> Decision:
    decision = Decision()
    revision = template_revision(spec)
    stable_state, canary_state = view.deployment("stable"), view.deployment("canary")
    router = router_for(spec)
    backends = Backends(
        naming.deployment_name(view.owner, "stable"), naming.deployment_name(view.owner, "canary")
    )
    observed = rollout.Observed(
        revision=revision,
        stable_ready=stable_state.ready,
        canary_ready=canary_state.ready,
        canary_stalled=canary_state.stalled,
        canary_exists=canary_state.exists,
        stable_template_revision=stable_state.revision,
        stable_updated=stable_state.updated,
        stable_settled=stable_state.settled,
        traffic_weight=(
            router.object_weight(traffic_object, backends)
            if traffic_object is not None
            else callers.held_weight(revision)
            if callers is not None
            else None
        ),
        counted_weight=callers.counted_weight if callers is not None else None,
        analysis=analysis,
        generation=view.generation,
        promote=view.annotations.get(PROMOTE_ANNOTATION),
        abort=view.annotations.get(ABORT_ANNOTATION),
        retry=view.annotations.get(RETRY_ANNOTATION),
    )
    plan = rollout.plan_workloads(spec, view.status, observed, now)
    decision.rollback_reason = plan.rollback_reason
    decision.events += plan.events

    desired, problem = _workloads(view, spec, revision, plan, decision)
    desired += _services(view, spec, revision, plan, decision)
    desired.append(rendering.disruption_budget(view.owner, spec))
    policy = rendering.network_policy(view.owner, spec)
    if policy is not None:
        desired.append(policy)
    elif (live := view.children.get(("NetworkPolicy", view.owner.name))) is not None:
        # Opted out after the fact: the policy goes, or it would keep restricting traffic.
        decision.delete.append(
            Deletion("networking.k8s.io/v1", "NetworkPolicy", view.owner.name, live["metadata"].get("uid"))
        )
    if monitoring:
        desired.append(rendering.service_monitor(view.owner, spec))
    for manifest in desired:
        _apply_if_changed(view, manifest, decision)

    if traffic_object is not None and plan.traffic_weight is not None:
        decision.traffic_patch = router.object_patch(traffic_object, backends, plan.traffic_weight)
    if spec.rollout.orderFlow is not None:
        canary = plan.status.canaryRevision
        decision.routing = routing_table(
            view.owner,
            spec,
            plan.stable_revision,
            canary,
            [f"{pod.ip}:{spec.wire_port}" for pod in view.ready_pods(canary)] if canary else [],
            plan.traffic_weight or 0,
        )

    for pod in capacity.admission_failures(view.pods):
        decision.delete_pods.append(pod)
        decision.events.append(
            Event(
                "Warning",
                "AdmissionFailed",
                f"kubelet on {pod.node} refused pod {pod.name} ({pod.reason}: {pod.message}); "
                "deleted so that its Deployment replaces it",
            )
        )

    named = router.traffic_object(spec)
    if problem is None and named is not None and traffic_object is None:
        problem = (
            f"{named.kind}NotFound",
            f"{named.kind} {named.name} named by {named.field} does not exist",
        )
    status = _status(view, spec, plan, pool, now, decision, problem)
    if _status_changed(view.raw_status, status):
        decision.status = status.model_dump(mode="json")
    live_rollout = plan.status.canaryRevision is not None or plan.status.phase in ROLLOUT_HELD_PHASES
    if live_rollout and plan.status.phase != Phase.ROLLED_BACK:
        decision.requeue_after = ROLLOUT_TICK_SECONDS
    elif status.condition("Placed").status != "True" or capacity.pods_to_place(spec.replicas, view.pods):
        decision.requeue_after = PLACEMENT_RETRY_SECONDS
    return decision


def _workloads(
    view: View, spec: TradingServiceSpec, revision: str, plan: rollout.Plan, decision: Decision
) -> tuple[list[dict[str, Any]], Problem | None]:
    """Deployments, their ConfigMaps and revision snapshots, as the rollout plan decided; and why the
    stable Deployment cannot be rendered, if it cannot."""
    owner = view.owner
    desired: list[dict[str, Any]] = []
    problem = None
    live_revisions = {plan.stable_revision}
    stable_spec = spec if plan.stable_revision == revision else _stored_spec(view, plan.stable_revision, spec)
    if stable_spec is None:
        problem = (
            "RevisionMissing",
            f"ControllerRevision {naming.revision_object_name(owner, plan.stable_revision)} is gone: "
            f"the stable Deployment keeps its live template until revision {plan.stable_revision} is "
            "replaced",
        )
    else:
        # A revision's ConfigMap goes first, so its pods never wait for their config volume.
        desired += _revision_objects(view, stable_spec, plan.stable_revision)
        desired.append(
            rendering.deployment(
                owner, stable_spec, plan.stable_revision, "stable", spec.replicas, paused=plan.stable_paused
            )
        )
    canary_name = naming.deployment_name(owner, "canary")
    if plan.canary_replicas is None:
        live = view.children.get(("Deployment", canary_name))
        if live is not None:
            # Orphaned, its ReplicaSet is adopted by the stable Deployment when their templates match.
            decision.delete.append(
                Deletion(
                    "apps/v1", "Deployment", canary_name, live["metadata"].get("uid"), propagation="Orphan"
                )
            )
    else:
        live_revisions.add(revision)
        if revision != plan.stable_revision:
            desired += _revision_objects(view, spec, revision)
        desired.append(rendering.deployment(owner, spec, revision, "canary", plan.canary_replicas))
    for (kind, name), live in view.children.items():
        if kind in ("ConfigMap", "ControllerRevision"):
            stale = live["metadata"].get("labels", {}).get(REVISION_LABEL) not in live_revisions
            if stale:
                api_version = "v1" if kind == "ConfigMap" else "apps/v1"
                decision.delete.append(Deletion(api_version, kind, name, live["metadata"].get("uid")))
    return desired, problem


def _services(
    view: View, spec: TradingServiceSpec, revision: str, plan: rollout.Plan, decision: Decision
) -> list[dict[str, Any]]:
    """One Service for every pod; or, when a route splits the traffic, one per revision."""
    routed = router_for(spec).per_revision_services
    desired = [rendering.service(view.owner, spec, "stable", plan.stable_revision if routed else None)]
    canary_name = naming.deployment_name(view.owner, "canary")
    if routed and plan.canary_replicas is not None:
        desired.append(rendering.service(view.owner, spec, "canary", revision))
    elif (live := view.children.get(("Service", canary_name))) is not None:
        decision.delete.append(Deletion("v1", "Service", canary_name, live["metadata"].get("uid")))
    return desired


def _stored_spec(view: View, revision: str, current: TradingServiceSpec) -> TradingServiceSpec | None:
    stored = view.children.get(("ControllerRevision", naming.revision_object_name(view.owner, revision)))
    if stored is None:
        return None
    return rendering.spec_from_revision(stored["data"], current)


def _revision_objects(view: View, spec: TradingServiceSpec, revision: str) -> list[dict[str, Any]]:
    name = naming.revision_object_name(view.owner, revision)
    stored = view.children.get(("ControllerRevision", name))
    # The number a revision got when it was first recorded stays; only its absence takes a new one.
    number = stored.get("revision", view.generation) if stored else max(view.generation, 1)
    return [
        rendering.controller_revision(view.owner, spec, revision, number),
        rendering.config_map(view.owner, spec, revision),
    ]


def _apply_if_changed(view: View, manifest: dict[str, Any], decision: Decision) -> None:
    key = (manifest["kind"], manifest["metadata"]["name"])
    live = view.children.get(key)
    what = f"{manifest['kind']} {manifest['metadata']['name']}"
    if live is None:
        reason, message = (
            ("Restored", f"{what} was missing; recreated")
            if _existed(view, manifest)
            else ("Created", f"created {what}")
        )
    elif _annotation(live) != _annotation(manifest):
        reason, message = "Updated", f"updated {what}"
    elif not is_subset(manifest, live):
        reason, message = "Restored", f"{what} was changed outside tradeplane; restored"
    else:
        return
    decision.apply.append(manifest)
    decision.events.append(Event("Normal", reason, message))


def _existed(view: View, manifest: Mapping[str, Any]) -> bool:
    """Was this object made by an earlier reconcile? A revision's objects, once their revision was
    recorded in the status; the others, once any reconcile recorded a status."""
    labels: Mapping[str, str] = manifest["metadata"]["labels"]
    revision = labels.get(REVISION_LABEL)
    if revision is None:
        return view.status.observedGeneration is not None
    if labels.get(ROLE_LABEL) == "canary":
        return revision == view.status.canaryRevision
    return revision in (view.status.stableRevision, view.status.canaryRevision)


def _annotation(manifest: Mapping[str, Any]) -> str | None:
    annotations = manifest["metadata"].get("annotations") or {}
    value = annotations.get(APPLIED_ANNOTATION)
    return str(value) if value is not None else None


def is_subset(desired: Any, live: Any) -> bool:
    """Does the live object hold every field of the desired one, equal? Server defaults may add more."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and is_subset(value, live[key]) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(item, other) for item, other in zip(desired, live, strict=True))
        )
    return bool(desired == live)


# -- status --------------------------------------------------------------------------------------------


def _status(
    view: View,
    spec: TradingServiceSpec,
    plan: rollout.Plan,
    pool: PoolSnapshot | None,
    now: datetime,
    decision: Decision,
    problem: Problem | None,
) -> TradingServiceStatus:
    status = plan.status.model_copy(deep=True)
    stable, canary = view.deployment("stable"), view.deployment("canary")
    active = [pod for pod in view.pods if pod.active]
    status.observedGeneration = view.generation
    status.replicas = spec.replicas + (plan.canary_replicas or 0)
    status.readyReplicas = stable.ready + (canary.ready if canary.exists else 0)
    status.nodes = sorted({pod.node for pod in active if pod.node})
    notes = decision.events

    serving = stable.exists and stable.ready >= spec.replicas
    where = f" on {', '.join(status.nodes)}" if status.nodes else ""
    message = f"{stable.ready}/{spec.replicas} pods ready{where}"
    was = status.set_condition(
        "Ready", serving, "PodsReady" if serving else "PodsNotReady", message, now, view.generation
    )
    if serving and was.status != "True":
        notes.append(Event("Normal", "Ready", message))
    elif not serving and was.status == "True":
        notes.append(Event("Warning", "NotReady", message))

    verdict = _placement(spec, pool, active, status.replicas)
    was = status.set_condition("Placed", verdict.fits, verdict.reason, verdict.message, now, view.generation)
    if not verdict.fits and (was.status != "False" or was.reason != verdict.reason):
        notes.append(Event("Warning", verdict.reason, verdict.message))
    elif verdict.fits and was.status == "False":
        notes.append(Event("Normal", "Placed", verdict.message))

    degraded = _degradation(view, stable) or problem
    reason, message = degraded or ("AsExpected", "")
    was = status.set_condition("Degraded", degraded is not None, reason, message, now, view.generation)
    if degraded is not None and (was.status != "True" or was.reason != reason):
        notes.append(Event("Warning", reason, message))
    elif degraded is None and was.status == "True":
        notes.append(Event("Normal", "Recovered", f"no longer {was.reason}"))

    if status.canaryRevision is None and status.phase not in ROLLOUT_HELD_PHASES:
        if degraded is not None or not verdict.fits:
            status.phase = Phase.DEGRADED
        elif serving and stable.settled:
            status.phase = Phase.READY
        elif stable.ready > 0:
            status.phase = Phase.PROGRESSING
        else:
            status.phase = Phase.PENDING
    return status


def _placement(
    spec: TradingServiceSpec, pool: PoolSnapshot | None, active: list[PodView], desired: int
) -> Fit:
    """Placed: every pod on a node; else whether (and why not) the rest fit, before the scheduler says."""
    scheduled = [pod for pod in active if pod.node]
    if len(scheduled) >= desired:
        nodes = sorted({pod.node for pod in scheduled if pod.node})
        where = f" on {', '.join(nodes)}" if nodes else ""
        return Fit(True, "Scheduled", f"{len(scheduled)} pod(s) scheduled{where}")
    if pool is not None:
        revision = template_revision(spec)
        occupied = {pod.node for pod in scheduled if pod.node and pod.revision == revision}
        verdict = capacity.preflight(
            spec, pool, desired - len(scheduled), {node for node in occupied if node}
        )
        if not verdict.fits:
            return verdict
    refused = next((pod for pod in active if pod.unschedulable), None)
    if refused is not None:
        return Fit(False, "Unschedulable", f"pod {refused.name}: {refused.unschedulable}")
    return Fit(True, "Scheduling", f"{len(scheduled)}/{desired} pod(s) scheduled, the pool has room")


def _degradation(view: View, stable: DeploymentState) -> Problem | None:
    """Something wrong with the pods (placement has its own condition)."""
    failed = capacity.admission_failures(view.pods)
    if failed:
        pod = failed[0]
        return "AdmissionFailed", f"kubelet on {pod.node} refused pod {pod.name}: {pod.reason}: {pod.message}"
    if stable.failure is not None:
        return "ReplicaFailure", f"Deployment {view.owner.name} cannot create pods: {stable.failure}"
    if stable.stalled:
        return "ProgressDeadlineExceeded", (
            f"Deployment {view.owner.name} made no progress for {rendering.PROGRESS_DEADLINE_SECONDS}s"
        )
    burstable = next(
        (pod for pod in view.pods if pod.active and pod.qos_class not in (None, "Guaranteed")), None
    )
    if burstable is not None:
        return "NotGuaranteed", (
            f"pod {burstable.name} runs with QoS {burstable.qos_class}, so it has no exclusive cores "
            "(a container added outside tradeplane without limits?)"
        )
    return None


def _status_changed(raw: Mapping[str, Any], status: TradingServiceStatus) -> bool:
    current = TradingServiceStatus.model_validate(raw).model_dump(mode="json", exclude_none=True)
    return current != status.model_dump(mode="json", exclude_none=True)


def _unusable(view: View, now: datetime, reason: str, message: str) -> Decision:
    """A spec the operator cannot act on: report it as Degraded, touch nothing."""
    decision = Decision()
    status = view.status.model_copy(deep=True)
    status.observedGeneration = view.generation
    was = status.set_condition("Degraded", True, reason, message, now, view.generation)
    if was.status != "True" or was.reason != reason:
        decision.events.append(Event("Warning", reason, message))
    status.phase = Phase.DEGRADED
    if _status_changed(view.raw_status, status):
        decision.status = status.model_dump(mode="json")
    return decision
