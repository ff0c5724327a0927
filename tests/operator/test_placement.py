"""Placement: Guaranteed pods on the pool, and the preflight verdicts from observed nodes and pods."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from tradeplane import capacity, podspec, quantity
from tradeplane.api import TradingServiceSpec
from tradeplane.capacity import Amounts, NodeView, PodView, PoolSnapshot
from tradeplane.naming import Owner

GiB = 2**30


def spec(**changes: Any) -> TradingServiceSpec:
    document: dict[str, Any] = {
        "component": "order",
        "image": "svc:1",
        "replicas": 2,
        "resources": {"cpus": 4, "memory": "8Gi", "hugepages": {"pageSize": "1Gi", "amount": "2Gi"}},
    }
    document.update(changes)
    return TradingServiceSpec.model_validate(document)


def node(
    name: str, *, cpu: str = "32", hugepages: str = "16Gi", ready: bool = True, **extra: Any
) -> NodeView:
    manifest = {
        "metadata": {"name": name, "labels": {"tradeplane.io/pool": "trading", **extra.get("labels", {})}},
        "spec": {"unschedulable": extra.get("cordoned", False), "taints": extra.get("taints", [])},
        "status": {
            "allocatable": {"cpu": cpu, "memory": "128Gi", "hugepages-1Gi": hugepages, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
    return NodeView.from_manifest(manifest)


def pool(*nodes: NodeView, used: dict[str, dict[str, str]] | None = None) -> PoolSnapshot:
    requested = {name: Amounts.parse(amounts) for name, amounts in (used or {}).items()}
    return PoolSnapshot("trading", nodes, requested)


class TestPodSpec:
    def test_requests_equal_limits_with_integer_cpu_and_hugepages(self) -> None:
        resources = podspec.resources(spec(resources={"cpus": 3, "memory": "8192Mi"}))
        assert resources["requests"] == resources["limits"] == {"cpu": "3", "memory": "8Gi"}

    def test_hugepages_are_requested_and_mounted_from_their_medium(self) -> None:
        service = spec()
        assert podspec.resources(service)["limits"]["hugepages-1Gi"] == "2Gi"
        volume, mount = podspec.hugepages_volume(service) or ({}, {})
        assert volume == {"name": "hugepages", "emptyDir": {"medium": "HugePages-1Gi"}}
        assert mount["mountPath"] == "/dev/hugepages"
        assert podspec.hugepages_volume(spec(resources={"cpus": 1, "memory": "1Gi"})) is None

    def test_pool_affinity_toleration_and_host_spread(self) -> None:
        rules = podspec.affinity(spec(placement={"pool": "fast"}), {"app": "x"})
        term = rules["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert term["matchExpressions"] == [
            {"key": "tradeplane.io/pool", "operator": "In", "values": ["fast"]}
        ]
        anti = rules["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert anti == {
            "labelSelector": {"matchLabels": {"app": "x"}},
            "topologyKey": "kubernetes.io/hostname",
        }
        assert podspec.tolerations(spec(placement={"pool": "fast"})) == [
            {"key": "tradeplane.io/pool", "operator": "Equal", "value": "fast", "effect": "NoSchedule"}
        ]
        assert "podAntiAffinity" not in podspec.affinity(spec(placement={"spread": "none"}), {"app": "x"})

    def test_isolation_asks_become_crio_annotations(self) -> None:
        assert podspec.isolation_annotations(spec()) == {}
        isolated = spec(placement={"isolation": {"cpuLoadBalancing": False, "cpuQuota": False}})
        assert podspec.isolation_annotations(isolated) == {
            "cpu-load-balancing.crio.io": "disable",
            "cpu-quota.crio.io": "disable",
        }

    def test_capabilities_dropped_unless_asked(self) -> None:
        context = podspec.container_security_context(spec())
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        raw = podspec.container_security_context(spec(network={"capabilities": ["NET_RAW"]}))
        assert raw["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
        assert podspec.pod_security_context()["runAsNonRoot"] is True


class TestGuaranteedCheck:
    @staticmethod
    def container(
        name: str, requests: dict[str, str] | None, limits: dict[str, str] | None
    ) -> dict[str, Any]:
        resources = {}
        if requests is not None:
            resources["requests"] = requests
        if limits is not None:
            resources["limits"] = limits
        return {"name": name, "resources": resources}

    def test_a_guaranteed_pod_passes(self) -> None:
        amounts = {"cpu": "2", "memory": "1Gi", "hugepages-2Mi": "64Mi"}
        pod = {"containers": [self.container("app", amounts, amounts)]}
        assert podspec.qos_violations(pod) == []

    def test_a_sidecar_without_limits_is_named(self) -> None:
        amounts = {"cpu": "2", "memory": "1Gi"}
        pod = {"containers": [self.container("app", amounts, amounts), self.container("proxy", None, None)]}
        assert podspec.qos_violations(pod) == [
            "containers[proxy]: no cpu limit",
            "containers[proxy]: no memory limit",
        ]

    def test_init_containers_count_too(self) -> None:
        amounts = {"cpu": "2", "memory": "1Gi"}
        init = self.container("setup", {"cpu": "1", "memory": "1Gi"}, amounts)
        pod = {"initContainers": [init], "containers": [self.container("app", amounts, amounts)]}
        assert podspec.qos_violations(pod) == ["initContainers[setup]: cpu request 1 != limit 2"]

    def test_fractional_cpu_gets_no_exclusive_core(self) -> None:
        amounts = {"cpu": "1500m", "memory": "1Gi"}
        problems = podspec.qos_violations({"containers": [self.container("app", amounts, amounts)]})
        assert problems == ["containers[app]: cpu 1500m is not an integer, so no core is exclusive"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Fraction(1, 10)),
        ("0.5", Fraction(1, 2)),
        ("2", Fraction(2)),
        ("1e3", Fraction(1000)),
        ("129M", Fraction(129_000_000)),
        ("128Mi", Fraction(128 * 2**20)),
        ("1Gi", Fraction(GiB)),
        ("250u", Fraction(1, 4000)),
    ],
)
def test_any_kubernetes_quantity_parses_exactly(text: str, value: Fraction) -> None:
    assert quantity.parse_quantity(text) == value


def test_a_malformed_quantity_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity.parse_quantity("12 cores")


def test_pod_requests_take_the_larger_of_containers_and_init_containers_plus_overhead() -> None:
    pod = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                {"resources": {"requests": {"cpu": "1", "hugepages-1Gi": "2Gi"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "4", "memory": "512Mi"}}}],
            "overhead": {"cpu": "100m"},
        }
    }
    requests = capacity.pod_requests(pod)
    assert requests.get("cpu") == 4100
    assert requests.get("memory") == GiB
    assert requests.get("hugepages-1Gi") == 2 * GiB
    assert requests.get("pods") == 1


class TestPreflight:
    def test_fits_when_two_nodes_have_room(self) -> None:
        verdict = capacity.preflight(spec(), pool(node("a"), node("b")), pods_needed=2)
        assert verdict.fits
        assert verdict.reason == "Fits"

    def test_hugepages_beyond_any_node_names_the_shortfall(self) -> None:
        big = spec(resources={"cpus": 2, "memory": "4Gi", "hugepages": {"pageSize": "1Gi", "amount": "20Gi"}})
        verdict = capacity.preflight(big, pool(node("a"), node("b", hugepages="18Gi")), pods_needed=2)
        assert not verdict.fits
        assert verdict.reason == "InsufficientHugepages"
        assert "20Gi hugepages-1Gi each" in verdict.message
        assert "the most free hugepages-1Gi on a node is 18Gi (b)" in verdict.message

    def test_requests_of_running_pods_are_subtracted(self) -> None:
        used = {"a": {"cpu": "30", "pods": "3"}, "b": {"cpu": "29500m"}}
        verdict = capacity.preflight(spec(), pool(node("a"), node("b"), used=used), pods_needed=1)
        assert not verdict.fits
        assert verdict.reason == "InsufficientCPU"
        assert "4 cpu each" in verdict.message
        assert "is 2.5 (b)" in verdict.message

    def test_an_unknown_pool_has_no_nodes(self) -> None:
        verdict = capacity.preflight(spec(placement={"pool": "gpu"}), pool(), pods_needed=1)
        assert (verdict.fits, verdict.reason) == (False, "UnknownPool")
        assert "tradeplane.io/pool=gpu" in verdict.message

    def test_nodes_that_cannot_take_pods_are_no_nodes(self) -> None:
        taint = {"key": "maintenance", "value": "yes", "effect": "NoSchedule"}
        nodes = pool(node("a", ready=False), node("b", cordoned=True), node("c", taints=[taint]))
        verdict = capacity.preflight(spec(), nodes, pods_needed=1)
        assert verdict.reason == "NoNodes"
        assert "a (NotReady)" in verdict.message
        assert "b (cordoned)" in verdict.message
        assert "c (tainted maintenance=yes:NoSchedule)" in verdict.message

    def test_the_pool_taint_itself_is_tolerated(self) -> None:
        taint = {"key": "tradeplane.io/pool", "value": "trading", "effect": "NoSchedule"}
        assert capacity.preflight(spec(), pool(node("a", taints=[taint])), pods_needed=1).fits

    def test_host_spread_needs_a_node_per_pod(self) -> None:
        verdict = capacity.preflight(spec(), pool(node("a"), node("b")), pods_needed=3)
        assert (verdict.fits, verdict.reason) == (False, "InsufficientNodes")
        shared = capacity.preflight(
            spec(placement={"spread": "none"}), pool(node("a"), node("b")), pods_needed=3
        )
        assert shared.fits

    def test_nodes_already_running_the_revision_are_out_for_host_spread(self) -> None:
        verdict = capacity.preflight(spec(), pool(node("a"), node("b")), pods_needed=1, occupied={"a", "b"})
        assert verdict.reason == "InsufficientNodes"
        assert "a, b already run one" in verdict.message

    def test_single_numa_node_needs_the_cores_on_one_numa_node(self) -> None:
        wide = spec(resources={"cpus": 20, "memory": "8Gi"})
        two_sockets = node("a", labels={"tradeplane.io/numa-nodes": "2"})
        verdict = capacity.preflight(wide, pool(two_sockets), pods_needed=1)
        assert verdict.reason == "InsufficientCPUPerNUMANode"
        assert "the largest in pool trading has 16" in verdict.message
        relaxed = spec(resources={"cpus": 20, "memory": "8Gi"}, placement={"numa": "best-effort"})
        assert capacity.preflight(relaxed, pool(two_sockets), pods_needed=1).fits

    def test_co_located_peers_are_charged_like_the_pod_the_scheduler_sees(self) -> None:
        co_located = spec(
            resources={"cpus": 4, "memory": "8Gi", "hugepages": {"pageSize": "1Gi", "amount": "2Gi"}},
            coLocate={"services": [{"component": "risk", "cpus": 6, "memory": "2Gi"}], "medium": "HugePages"},
            placement={"spread": "none"},
        )
        template = podspec.pod_template(Owner("order", "trading", "uid"), co_located, "r1")
        charged = capacity.spec_requests(co_located)
        assert charged.values == capacity.pod_requests(template).values
        assert (charged.get("cpu"), charged.get("memory")) == (10_000, 10 * GiB)
        # Ten cores a pod: three fit on a 32-core node, where its first container alone would fit eight.
        assert capacity.preflight(co_located, pool(node("a")), pods_needed=3).fits
        verdict = capacity.preflight(co_located, pool(node("a")), pods_needed=4)
        assert (verdict.fits, verdict.reason) == (False, "InsufficientCPU")

    def test_single_numa_node_counts_the_co_located_peers_cores(self) -> None:
        two_sockets = node("a", labels={"tradeplane.io/numa-nodes": "2"})
        alone = spec(resources={"cpus": 12, "memory": "8Gi"})
        assert capacity.preflight(alone, pool(two_sockets), pods_needed=1).fits
        with_risk = spec(
            resources={"cpus": 12, "memory": "8Gi"},
            coLocate={"services": [{"component": "risk", "cpus": 6}]},
        )
        verdict = capacity.preflight(with_risk, pool(two_sockets), pods_needed=1)
        assert verdict.reason == "InsufficientCPUPerNUMANode"
        assert "needs 18 cpus on one NUMA node" in verdict.message

    def test_a_partial_view_says_so(self) -> None:
        snapshot = PoolSnapshot("trading", [node("a")], {}, partial=True)
        assert "not counted" in capacity.preflight(spec(), snapshot, pods_needed=1).message


def pod_view(**changes: Any) -> PodView:
    fields: dict[str, Any] = {
        "name": "p",
        "revision": "r1",
        "node": "a",
        "phase": "Running",
        "ready": True,
        "deleting": False,
    }
    fields.update(changes)
    return PodView(**fields)


def test_admission_failures_are_failed_pods_with_kubelet_reasons() -> None:
    pods = [
        pod_view(name="topology", phase="Failed", reason="TopologyAffinityError"),
        pod_view(name="smt", phase="Failed", reason="SMTAlignmentError"),
        pod_view(name="pages", phase="Failed", reason="OutOfhugepages-1Gi"),
        pod_view(name="crashed", phase="Failed", reason="Error"),
        pod_view(name="running"),
        pod_view(name="going", phase="Failed", reason="OutOfcpu", deleting=True),
    ]
    assert [pod.name for pod in capacity.admission_failures(pods)] == ["topology", "smt", "pages"]


def test_pod_view_reads_the_scheduler_refusal() -> None:
    manifest = {
        "metadata": {"name": "p", "labels": {"rev": "r1"}},
        "spec": {},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/5 nodes are available: 3 Insufficient hugepages-1Gi.",
                }
            ],
        },
    }
    view = PodView.from_manifest(manifest, "rev")
    assert view.unschedulable == "0/5 nodes are available: 3 Insufficient hugepages-1Gi."
    assert (view.revision, view.node, view.active) == ("r1", None, True)


def test_pods_to_place_counts_unscheduled_and_missing_pods() -> None:
    pods = [pod_view(), pod_view(node=None), pod_view(phase="Failed"), pod_view(deleting=True)]
    assert capacity.pods_to_place(3, pods) == 2
    assert capacity.pods_to_place(1, pods) == 0
