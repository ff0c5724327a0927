"""One reconcile as a pure decision: children, deletions, pods to replace, status and Events."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tradeplane import podspec, reconcile
from tradeplane.api import TradingServiceSpec
from tradeplane.capacity import Amounts, NodeView, PodView, PoolSnapshot
from tradeplane.labels import REVISION_LABEL
from tradeplane.reconcile import Decision, View, decide, is_subset
from tradeplane.revision import template_revision
from tradeplane.traffic.order_flow import CallerReport
from tradeplane_services.orderflow import RoutingAnswer

NOW = datetime(2025, 6, 7, 12, 0, tzinfo=UTC)  # a Saturday: no exchange session
SPEC: dict[str, Any] = {
    "component": "order",
    "image": "svc:1",
    "replicas": 2,
    "resources": {"cpus": 4, "memory": "8Gi", "hugepages": {"pageSize": "1Gi", "amount": "2Gi"}},
}


def trading_pool(hugepages: str = "16Gi", count: int = 3) -> PoolSnapshot:
    nodes = [
        NodeView.from_manifest(
            {
                "metadata": {"name": f"trading-{index}", "labels": {"tradeplane.io/pool": "trading"}},
                "status": {
                    "allocatable": {
                        "cpu": "32",
                        "memory": "128Gi",
                        "hugepages-1Gi": hugepages,
                        "pods": "110",
                    },
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
        for index in range(count)
    ]
    return PoolSnapshot("trading", nodes, {node.name: Amounts() for node in nodes})


def served(manifest: dict[str, Any], number: int) -> dict[str, Any]:
    """What the API server stores: the applied fields plus identity and server defaults."""
    live = copy.deepcopy(manifest)
    live["metadata"].update(uid=f"uid-{number}", resourceVersion=str(number), generation=1)
    if live["kind"] == "Service":
        live["spec"].update(clusterIP="10.96.0.10", type="ClusterIP", sessionAffinity="None")
    if live["kind"] == "Deployment":
        live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    return live


@dataclass
class Cluster:
    """The API server and the controllers, converged: applied Deployments' pods become ready on nodes."""

    spec: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    generation: int = 1
    annotations: dict[str, str] = field(default_factory=dict)
    children: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[PodView] = field(default_factory=list)
    writes: int = 0

    def body(self) -> dict[str, Any]:
        return {
            "metadata": {
                "name": "order",
                "namespace": "trading",
                "uid": "ts-uid",
                "generation": self.generation,
                "annotations": self.annotations,
            },
            "spec": self.spec,
            "status": self.status,
        }

    def view(self) -> View:
        return View.observe(self.body(), self.children, self.pods)

    def reconcile(self, pool: PoolSnapshot | None = None) -> Decision:
        view = self.view()
        decision = decide(view, now=NOW, pool=pool if pool is not None else trading_pool())
        if decision.status is not None:
            self.status = decision.status
            self.writes += 1
        for manifest in decision.apply:
            self.children[(manifest["kind"], manifest["metadata"]["name"])] = served(
                manifest, len(self.children)
            )
            self.writes += 1
        for deletion in decision.delete:
            self.children.pop((deletion.kind, deletion.name))
            self.writes += 1
        for pod in decision.delete_pods:
            self.pods.remove(pod)
        return decision

    def run_deployments(self) -> None:
        """Every Deployment's pods run and are ready, one per trading node."""
        self.pods = []
        for (kind, name), live in self.children.items():
            if kind != "Deployment":
                continue
            replicas = live["spec"]["replicas"]
            revision = live["spec"]["template"]["metadata"]["labels"][REVISION_LABEL]
            live["status"] = {
                "observedGeneration": 1,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            }
            self.pods += [
                PodView(
                    f"{name}-{index}",
                    revision,
                    f"trading-{index}",
                    "Running",
                    True,
                    False,
                    qos_class="Guaranteed",
                )
                for index in range(replicas)
            ]

    def converge(self) -> Decision:
        decision = self.reconcile()
        for _ in range(5):
            self.run_deployments()
            decision = self.reconcile()
        return decision


def reasons(decision: Decision) -> list[str]:
    return [event.reason for event in decision.events]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_a_new_service_gets_its_children_and_a_pending_status() -> None:
    cluster = Cluster(dict(SPEC))
    decision = cluster.reconcile()
    revision = template_revision(TradingServiceSpec.model_validate(SPEC))
    assert sorted(cluster.children) == [
        ("ConfigMap", f"order-{revision}"),
        ("ControllerRevision", f"order-{revision}"),
        ("Deployment", "order"),
        ("NetworkPolicy", "order"),
        ("PodDisruptionBudget", "order"),
        ("Service", "order"),
    ]
    assert reasons(decision).count("Created") == 6
    assert cluster.status["phase"] == "Pending"
    assert cluster.status["stableRevision"] == revision
    assert condition(cluster.status, "Placed")["status"] == "True"
    assert condition(cluster.status, "Ready")["status"] == "False"


def test_once_converged_a_reconcile_writes_nothing() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    assert cluster.status["phase"] == "Ready"
    assert cluster.status["readyReplicas"] == 2
    assert cluster.status["nodes"] == ["trading-0", "trading-1"]
    assert condition(cluster.status, "Placed")["reason"] == "Scheduled"
    writes = cluster.writes
    decision = cluster.reconcile()
    assert (decision.apply, decision.delete, decision.status, decision.events) == ([], [], None, [])
    assert cluster.writes == writes


def test_a_child_edited_by_hand_is_restored() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    cluster.children[("Deployment", "order")]["spec"]["replicas"] = 7
    decision = cluster.reconcile()
    assert [manifest["kind"] for manifest in decision.apply] == ["Deployment"]
    assert decision.apply[0]["spec"]["replicas"] == 2
    assert reasons(decision) == ["Restored"]
    assert "changed outside tradeplane" in decision.events[0].message


def test_a_child_deleted_by_hand_is_recreated() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    del cluster.children[("Service", "order")]
    decision = cluster.reconcile()
    assert [(m["kind"], m["metadata"]["name"]) for m in decision.apply] == [("Service", "order")]
    assert decision.events[0].message == "Service order was missing; recreated"


def test_hugepages_beyond_any_node_is_not_placed_with_a_warning() -> None:
    big = copy.deepcopy(SPEC)
    big["resources"]["hugepages"]["amount"] = "32Gi"
    cluster = Cluster(big)
    decision = cluster.reconcile()
    placed = condition(cluster.status, "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "InsufficientHugepages")
    assert "32Gi hugepages-1Gi each" in placed["message"]
    assert cluster.status["phase"] == "Degraded"
    warnings = [event for event in decision.events if event.type == "Warning"]
    assert [event.reason for event in warnings] == ["InsufficientHugepages"]
    assert decision.requeue_after == reconcile.PLACEMENT_RETRY_SECONDS
    again = cluster.reconcile()
    assert "InsufficientHugepages" not in reasons(again), "a standing verdict is not repeated"


def test_capacity_freed_later_places_the_service() -> None:
    big = copy.deepcopy(SPEC)
    big["resources"]["hugepages"]["amount"] = "20Gi"
    cluster = Cluster(big)
    cluster.reconcile(trading_pool(hugepages="16Gi"))
    decision = cluster.reconcile(trading_pool(hugepages="32Gi"))
    assert condition(cluster.status, "Placed")["status"] == "True"
    assert "Placed" in reasons(decision)


def test_a_pool_without_nodes_is_unknown() -> None:
    cluster = Cluster({**SPEC, "placement": {"pool": "gpu"}})
    cluster.reconcile(PoolSnapshot("gpu", [], {}))
    assert condition(cluster.status, "Placed")["reason"] == "UnknownPool"


def test_an_admission_failure_is_reported_and_the_pod_replaced() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    revision = cluster.status["stableRevision"]
    failed = PodView(
        "order-x", revision, "trading-2", "Failed", False, False, "OutOfhugepages-1Gi", "no pages"
    )
    cluster.pods.append(failed)
    decision = cluster.reconcile()
    assert decision.delete_pods == [failed]
    assert "AdmissionFailed" in reasons(decision)
    assert condition(cluster.status, "Degraded")["reason"] == "AdmissionFailed"
    recovered = cluster.reconcile()
    assert condition(cluster.status, "Degraded")["status"] == "False"
    assert "Recovered" in reasons(recovered)


def test_a_pod_made_burstable_outside_the_operator_is_degraded() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    pod = cluster.pods[0]
    cluster.pods[0] = PodView(pod.name, pod.revision, pod.node, "Running", True, False, qos_class="Burstable")
    cluster.reconcile()
    assert condition(cluster.status, "Degraded")["reason"] == "NotGuaranteed"


def test_pods_the_api_server_refuses_to_create_are_degraded() -> None:
    cluster = Cluster({**SPEC, "placement": {"runtimeClassName": "performance"}})
    cluster.reconcile()
    refused = 'pods "order-5d8f" is forbidden: pod rejected: RuntimeClass "performance" not found'
    cluster.children[("Deployment", "order")]["status"] = {
        "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refused}
        ]
    }
    decision = cluster.reconcile()
    degraded = condition(cluster.status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ReplicaFailure")
    assert refused in degraded["message"]
    assert "ReplicaFailure" in reasons(decision)


def test_a_new_revision_starts_a_canary_beside_the_stable_rendered_from_its_snapshot() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    old = cluster.status["stableRevision"]
    stable_template = copy.deepcopy(cluster.children[("Deployment", "order")]["spec"]["template"])
    cluster.spec = {**SPEC, "image": "svc:2"}
    cluster.generation = 2
    decision = cluster.reconcile()
    new = template_revision(TradingServiceSpec.model_validate(cluster.spec))
    assert cluster.status["canaryRevision"] == new
    assert {event.reason for event in decision.events if event.message.startswith("created")} == {"Created"}
    assert "Restored" not in reasons(decision)
    applied = {(m["kind"], m["metadata"]["name"]) for m in decision.apply}
    assert applied == {
        ("Deployment", "order-canary"),
        ("ConfigMap", f"order-{new}"),
        ("ControllerRevision", f"order-{new}"),
    }
    assert cluster.children[("Deployment", "order")]["spec"]["template"] == stable_template
    assert ("ConfigMap", f"order-{old}") in cluster.children
    # The stable Deployment drifts while the canary runs: it is restored from the stored revision.
    cluster.children[("Deployment", "order")]["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    restored = cluster.reconcile()
    assert [m["metadata"]["name"] for m in restored.apply] == ["order"]
    assert restored.apply[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "svc:1"


def test_a_lost_stable_revision_leaves_the_stable_deployment_alone_and_says_so() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    old = cluster.status["stableRevision"]
    cluster.spec = {**SPEC, "image": "svc:2"}
    cluster.reconcile()
    del cluster.children[("ControllerRevision", f"order-{old}")]
    cluster.children[("Deployment", "order")]["spec"]["replicas"] = 9
    decision = cluster.reconcile()
    assert "order" not in [m["metadata"]["name"] for m in decision.apply]
    degraded = condition(cluster.status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RevisionMissing")
    assert cluster.reconcile().events == [], "reported once, not on every tick"


def test_abandoning_a_canary_removes_it_and_its_revision_objects() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    cluster.spec = {**SPEC, "image": "svc:2"}
    cluster.reconcile()
    new = cluster.status["canaryRevision"]
    cluster.spec = dict(SPEC)
    decision = cluster.reconcile()
    deleted = {(d.kind, d.name, d.propagation) for d in decision.delete}
    assert deleted == {
        ("Deployment", "order-canary", "Orphan"),
        ("ConfigMap", f"order-{new}", "Background"),
        ("ControllerRevision", f"order-{new}", "Background"),
    }
    assert "CanaryAbandoned" in reasons(decision)


def test_a_routed_split_patches_the_route_weights_and_adds_a_canary_service() -> None:
    routed = {**SPEC, "rollout": {"httpRoute": {"name": "orders"}}}
    cluster = Cluster(routed)
    cluster.converge()
    cluster.spec = {**routed, "image": "svc:2"}
    route = {"spec": {"rules": [{"backendRefs": [{"name": "order", "port": 7001}]}]}}
    view = cluster.view()
    decision = decide(view, now=NOW, pool=trading_pool(), traffic_object=route)
    services = {m["metadata"]["name"]: m for m in decision.apply if m["kind"] == "Service"}
    assert services["order-canary"]["spec"]["selector"][REVISION_LABEL] == template_revision(
        TradingServiceSpec.model_validate(cluster.spec)
    )
    # No canary pod is ready yet: the route sends all traffic to the stable Service.
    rules = [{"backendRefs": [{"port": 7001, "name": "order", "weight": 100}]}]
    assert decision.traffic_patch == {"spec": {"rules": rules}}


def test_a_named_route_that_does_not_exist_is_degraded() -> None:
    cluster = Cluster({**SPEC, "rollout": {"httpRoute": {"name": "orders"}}})
    cluster.converge()
    assert condition(cluster.status, "Degraded")["reason"] == "HTTPRouteNotFound"


def test_a_stored_spec_the_models_refuse_is_reported_and_nothing_applied() -> None:
    cluster = Cluster({**SPEC, "resources": {"cpus": 0, "memory": "1Gi"}})
    decision = cluster.reconcile()
    assert decision.apply == []
    assert cluster.status["phase"] == "Degraded"
    assert "spec.resources.cpus" in condition(cluster.status, "Degraded")["message"]


def test_a_pod_that_would_not_be_guaranteed_is_reported_and_nothing_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = Cluster(SPEC)
    cluster.converge()
    applied = dict(cluster.children)

    def burstable(spec: TradingServiceSpec) -> dict[str, Any]:
        return {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}

    monkeypatch.setattr(podspec, "resources", burstable)
    decision = cluster.reconcile()
    assert decision.apply == [] and decision.delete == [] and cluster.children == applied
    degraded = condition(cluster.status, "Degraded")
    assert (cluster.status["phase"], degraded["reason"]) == ("Degraded", "RenderError")
    assert "pod would not be Guaranteed: containers[order]: cpu request 1 != limit 2" in degraded["message"]
    assert reasons(decision) == ["RenderError"]


def test_subset_compares_what_was_applied_with_what_is_stored() -> None:
    assert is_subset({"a": 1, "b": [{"c": 2}]}, {"a": 1, "b": [{"c": 2, "d": 3}], "e": 4})
    assert not is_subset({"a": 1}, {"a": 2})
    assert not is_subset({"b": [{"c": 2}]}, {"b": [{"c": 2}, {"c": 3}]})
    assert not is_subset({"a": {"x": 1}}, {})


def test_opting_out_of_the_network_policy_deletes_it_and_nothing_else() -> None:
    cluster = Cluster(dict(SPEC))
    cluster.converge()
    assert ("NetworkPolicy", "order") in cluster.children
    kept = set(cluster.children) - {("NetworkPolicy", "order")}
    cluster.spec = {**SPEC, "networkPolicy": {"enabled": False}}
    cluster.generation += 1
    decision = cluster.reconcile()
    assert [(d.kind, d.name) for d in decision.delete] == [("NetworkPolicy", "order")]
    assert set(cluster.children) == kept


ORDER_FLOW = {
    **SPEC,
    "component": "risk",
    "rollout": {
        "orderFlow": {"leaseSeconds": 2},
        "steps": [{"weightBasisPoints": 10, "pause": "5s"}, {"weight": 5, "pause": "5s"}],
    },
}


def test_an_order_flow_canary_is_routed_by_the_callers_at_basis_points() -> None:
    cluster = Cluster(ORDER_FLOW)
    stable = cluster.converge()
    assert stable.routing is not None and stable.routing.weight_basis_points == 0
    assert stable.routing.canary == ()
    cluster.spec = {**ORDER_FLOW, "image": "svc:2"}
    canary = template_revision(TradingServiceSpec.model_validate(cluster.spec))
    started = cluster.reconcile()
    canary_deployment = next(m for m in started.apply if m["metadata"]["name"] == "order-canary")
    assert canary_deployment["spec"]["replicas"] == 1, "a tenth of a percent needs one pod"
    services = {m["metadata"]["name"]: m for m in started.apply if m["kind"] == "Service"}
    assert services["order-canary"]["spec"]["selector"][REVISION_LABEL] == canary
    assert started.routing is not None and started.routing.weight_basis_points == 0, "no ready canary pod"
    assert cluster.status["weight"] == 0.1 and "(0.1%)" in cluster.status["message"]

    cluster.run_deployments()
    cluster.pods = [replace(pod, ip=f"127.1.0.{index}") for index, pod in enumerate(cluster.pods, 1)]
    canary_ips = [f"{pod.ip}:7002" for pod in cluster.pods if pod.revision == canary]
    pushed = decide(cluster.view(), now=NOW, pool=trading_pool(), callers=CallerReport(None, None))
    assert pushed.routing is not None
    assert (pushed.routing.weight_basis_points, pushed.routing.canary) == (10, tuple(canary_ips))
    assert pushed.routing.salt == f"trading/order/{canary}" and pushed.routing.lease_seconds == 2
    assert pushed.status is not None and pushed.status["stepStartedAt"] is None, "no caller holds it yet"

    previous = (RoutingAnswer("order", 10, {}, "a-canary-this-one-replaced"),)
    stale = decide(cluster.view(), now=NOW, pool=trading_pool(), callers=CallerReport(previous, 12))
    assert stale.status is not None and stale.status["stepStartedAt"] is None, "held for another canary"
    answers = (RoutingAnswer("order", 10, {}, canary),)
    held = decide(cluster.view(), now=NOW, pool=trading_pool(), callers=CallerReport(answers, 12))
    assert held.status is not None and held.status["stepStartedAt"] is not None
    assert held.status["actualWeight"] == 0.12, "the share the callers counted, not a pod ratio"
