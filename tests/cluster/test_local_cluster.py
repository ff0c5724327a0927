"""The local control plane is real Kubernetes: scheduling, hugepage accounting, taints, RBAC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import Kubectl, get_json, token_kubeconfig, wait_for
from tradeplane.cluster import local

pytestmark = pytest.mark.cluster

TRADING_TOLERATION = {
    "key": "tradeplane.io/pool",
    "operator": "Equal",
    "value": "trading",
    "effect": "NoSchedule",
}
TRADING_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "tradeplane.io/pool", "operator": "In", "values": ["trading"]}]}
            ]
        }
    }
}


def pod(name: str, namespace: str, hugepages: str, tolerate: bool = True) -> dict[str, object]:
    resources = {"cpu": "2", "memory": "1Gi", "hugepages-1Gi": hugepages}
    spec: dict[str, object] = {
        "containers": [
            {
                "name": "app",
                "image": "registry.example/app:1",
                "resources": {"requests": resources, "limits": resources},
                "volumeMounts": [{"name": "hugepages", "mountPath": "/hugepages"}],
            }
        ],
        "volumes": [{"name": "hugepages", "emptyDir": {"medium": "HugePages-1Gi"}}],
    }
    if tolerate:
        spec["tolerations"] = [TRADING_TOLERATION]
        spec["affinity"] = TRADING_AFFINITY
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def apply(kubectl: Kubectl, manifest: dict[str, object]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(manifest))


def test_nodes_are_the_described_pools(kubectl: Kubectl) -> None:
    nodes = get_json(kubectl, "nodes")["items"]
    trading = [n for n in nodes if n["metadata"]["labels"].get("tradeplane.io/pool") == "trading"]
    general = [n for n in nodes if "tradeplane.io/pool" not in n["metadata"]["labels"]]
    assert len(trading) == 3 and len(general) == 2
    for node in trading:
        assert node["status"]["allocatable"]["hugepages-1Gi"] == "16Gi"
        assert node["status"]["allocatable"]["cpu"] == "32"
        assert {"key": "tradeplane.io/pool", "value": "trading", "effect": "NoSchedule"} in node["spec"][
            "taints"
        ]
    version = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert version.startswith("v1.3")


def test_guaranteed_hugepage_pod_runs_on_a_trading_node(kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, pod("pinned", namespace, "2Gi"))

    def running() -> dict[str, object] | None:
        current = get_json(kubectl, "pod", "pinned", "-n", namespace)
        return current if current["status"].get("phase") == "Running" else None

    current = wait_for(running, what="the pod to run")
    assert isinstance(current, dict)
    assert current["status"]["qosClass"] == "Guaranteed"
    assert current["spec"]["nodeName"].startswith("trading-")
    assert current["status"]["podIP"].startswith(local.pod_prefix("127.1") + "."), (
        "pods get loopback IPs from their node's podCIDR"
    )


def test_pod_asking_more_hugepages_than_any_node_stays_pending(kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, pod("greedy", namespace, "64Gi"))

    def failed_scheduling() -> list[dict[str, object]]:
        events = get_json(
            kubectl, "events", "-n", namespace, "--field-selector", "involvedObject.name=greedy"
        )
        return [e for e in events["items"] if e["reason"] == "FailedScheduling"]

    events = wait_for(failed_scheduling, what="a FailedScheduling event")
    assert isinstance(events, list)
    assert "Insufficient hugepages-1Gi" in events[0]["message"]
    assert get_json(kubectl, "pod", "greedy", "-n", namespace)["status"]["phase"] == "Pending"


def test_untolerating_pods_never_land_on_trading_nodes(kubectl: Kubectl, namespace: str) -> None:
    for index in range(6):
        manifest = pod(f"plain-{index}", namespace, "0", tolerate=False)
        containers = manifest["spec"]["containers"]  # type: ignore[index]
        containers[0]["resources"] = {"requests": {"cpu": "100m"}}
        containers[0].pop("volumeMounts")
        manifest["spec"].pop("volumes")  # type: ignore[union-attr]
        apply(kubectl, manifest)

    def all_scheduled() -> list[str] | None:
        pods = get_json(kubectl, "pods", "-n", namespace)["items"]
        nodes = [p["spec"].get("nodeName") for p in pods]
        return nodes if len(nodes) == 6 and all(nodes) else None

    nodes = wait_for(all_scheduled, what="six plain pods to be scheduled")
    assert isinstance(nodes, list)
    assert all(node.startswith("general-") for node in nodes), nodes


def test_rbac_is_enforced(kubectl: Kubectl, namespace: str, kube_env: Path, tmp_path: Path) -> None:
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    as_nobody = token_kubeconfig(kube_env, token, tmp_path / "nobody.kubeconfig")
    denied = kubectl(f"--kubeconfig={as_nobody}", "get", "pods", "-n", namespace, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and f"system:serviceaccount:{namespace}:nobody" in denied.stderr
    kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    kubectl(
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
        "-n",
        namespace,
    )
    allowed = wait_for(
        lambda: (
            kubectl("--token", token, "--user=", "get", "pods", "-n", namespace, check=False).returncode == 0
        ),
        what="the RoleBinding to take effect",
    )
    assert allowed
