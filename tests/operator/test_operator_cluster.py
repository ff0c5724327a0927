"""The operator against the real API server, scheduler, controllers and garbage collector (kwok nodes).

`operator` is the conftest's OperatorProcess: the operator as a subprocess watching the test's namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import Kubectl, get_json, wait_for
from tradeplane import rendering
from tradeplane.api import TradingServiceSpec
from tradeplane.naming import Owner
from tradeplane.reconcile import is_subset
from tradeplane.revision import template_revision

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / "samples").glob("*.yaml"))
CORPUS = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))
CHILD_KINDS = "deployments,services,configmaps,poddisruptionbudgets,networkpolicies,controllerrevisions"


def samples_in(namespace: str) -> str:
    """The bundled services' manifests, moved to the test's namespace."""
    documents = []
    for path in SAMPLES:
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] == "TradingService":
                document["metadata"]["namespace"] = namespace
                documents.append(document)
    return yaml.safe_dump_all(documents)


def manifest(name: str, namespace: str, **spec: Any) -> str:
    document = {
        "apiVersion": "tradeplane.io/v1alpha1",
        "kind": "TradingService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "component": "execution",
            "image": "registry.example/tradeplane-services:0.1.0",
            "replicas": 1,
            "resources": {"cpus": 1, "memory": "1Gi", "hugepages": {"pageSize": "1Gi", "amount": "1Gi"}},
            **spec,
        },
    }
    return yaml.safe_dump(document)


def services(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, Any]]:
    listed = get_json(kubectl, "tradingservices", "-n", namespace)
    return {item["metadata"]["name"]: item for item in listed["items"]}  # type: ignore[attr-defined]


def condition(service: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in service.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def all_ready(kubectl: Kubectl, namespace: str, count: int) -> bool:
    found = services(kubectl, namespace)
    return len(found) == count and all(s.get("status", {}).get("phase") == "Ready" for s in found.values())


def events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = get_json(kubectl, "events", "-n", namespace, f"--field-selector=involvedObject.name={name}")
    return list(listed["items"])  # type: ignore[call-overload]


def operator_events(kubectl: Kubectl, namespace: str) -> list[str]:
    listed = get_json(kubectl, "events", "-n", namespace, "--field-selector=source=tradeplane")
    return sorted(event["metadata"]["name"] for event in listed["items"])  # type: ignore[attr-defined]


def resource_versions(kubectl: Kubectl, namespace: str) -> dict[str, str]:
    listed = get_json(kubectl, f"tradingservices,{CHILD_KINDS},replicasets,pods", "-n", namespace)
    return {
        f"{item['kind']}/{item['metadata']['name']}": item["metadata"]["resourceVersion"]
        for item in listed["items"]  # type: ignore[attr-defined]
    }


def test_the_samples_run_guaranteed_on_trading_nodes_with_hugepages(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    kubectl("apply", "-f", "-", input=samples_in(namespace))
    wait_for(lambda: all_ready(kubectl, namespace, 5), timeout=60, what="the five samples to be Ready")
    nodes = get_json(kubectl, "nodes")["items"]
    pools = {
        node["metadata"]["name"]: node["metadata"].get("labels", {}).get("tradeplane.io/pool")
        for node in nodes
    }  # type: ignore[attr-defined]
    pods = get_json(kubectl, "pods", "-n", namespace)["items"]
    assert len(pods) == 9  # type: ignore[arg-type]
    for pod in pods:  # type: ignore[attr-defined]
        name = pod["metadata"]["name"]
        assert pod["status"]["phase"] == "Running", name
        assert pods and pools[pod["spec"]["nodeName"]] == "trading", f"{name} on {pod['spec']['nodeName']}"
        assert pod["status"]["qosClass"] == "Guaranteed", name
        (container,) = pod["spec"]["containers"]
        limits = container["resources"]["limits"]
        pages = next(resource for resource in limits if resource.startswith("hugepages-"))
        volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
        assert volumes["hugepages"]["emptyDir"]["medium"] == f"HugePages-{pages.removeprefix('hugepages-')}"
        assert {"name": "hugepages", "mountPath": "/dev/hugepages"} in container["volumeMounts"]
    for service in services(kubectl, namespace).values():
        status = service["status"]
        assert all(pools[node] == "trading" for node in status["nodes"])
        assert condition(service, "Placed")["status"] == "True"
        assert status["observedGeneration"] == service["metadata"]["generation"]
    replicas = {name: len(s["status"]["nodes"]) for name, s in services(kubectl, namespace).items()}
    assert replicas == {"order": 2, "risk": 2, "market-data": 2, "execution": 2, "position": 1}, (
        "one pod per host"
    )
    report = subprocess.run(
        [sys.executable, "-m", "tradeplane.cli", "status", "-n", namespace, "--pods"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "market-data" in report
    assert report.count("Guaranteed") == 9
    assert operator.metric("tradeplane_reconcile_duration_seconds_count") > 0


def test_specs_that_cannot_be_placed_say_why_and_others_keep_working(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    too_big = {"resources": {"cpus": 1, "memory": "1Gi", "hugepages": {"pageSize": "1Gi", "amount": "64Gi"}}}
    kubectl("apply", "-f", "-", input=manifest("greedy", namespace, **too_big))
    kubectl("apply", "-f", "-", input=manifest("lost", namespace, placement={"pool": "nowhere"}))
    kubectl("apply", "-f", "-", input=manifest("fine", namespace))

    def verdicts() -> dict[str, tuple[str, str]] | None:
        found = services(kubectl, namespace)
        placed = {
            name: (condition(s, "Placed").get("status", ""), condition(s, "Placed").get("reason", ""))
            for name, s in found.items()
        }
        ready = found.get("fine", {}).get("status", {}).get("phase") == "Ready"
        return (
            placed
            if ready and placed.get("greedy", ("",))[0] == "False" and placed.get("lost", ("",))[0] == "False"
            else None
        )

    placed = wait_for(verdicts, timeout=30, what="placement verdicts")
    assert placed == {
        "greedy": ("False", "InsufficientHugepages"),
        "lost": ("False", "UnknownPool"),
        "fine": ("True", "Scheduled"),
    }
    greedy = services(kubectl, namespace)["greedy"]
    assert "64Gi hugepages-1Gi each" in condition(greedy, "Placed")["message"]
    assert greedy["status"]["phase"] == "Degraded"
    warnings = {(e["type"], e["reason"]) for e in events(kubectl, namespace, "greedy")}
    assert ("Warning", "InsufficientHugepages") in warnings
    lost_events = {(e["type"], e["reason"]) for e in events(kubectl, namespace, "lost")}
    assert ("Warning", "UnknownPool") in lost_events


def test_children_edited_or_deleted_by_hand_are_restored_within_ten_seconds(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    kubectl("apply", "-f", "-", input=manifest("execution", namespace, replicas=2))
    wait_for(lambda: all_ready(kubectl, namespace, 1), timeout=30, what="the service to be Ready")
    revision = services(kubectl, namespace)["execution"]["status"]["stableRevision"]

    started = time.monotonic()
    kubectl("scale", "deployment/execution", "-n", namespace, "--replicas=5")
    kubectl("delete", "service/execution", "-n", namespace)
    kubectl(
        "patch",
        f"configmap/execution-{revision}",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"data": {"config.yaml": "venue: elsewhere\\n"}}',
    )
    kubectl("label", "pdb/execution", "-n", namespace, "app.kubernetes.io/name-")

    def restored() -> bool:
        deployment = get_json(kubectl, "deployment/execution", "-n", namespace)
        service = kubectl("get", "service/execution", "-n", namespace, check=False)
        config = get_json(kubectl, f"configmap/execution-{revision}", "-n", namespace)
        budget = get_json(kubectl, "pdb/execution", "-n", namespace)
        return (
            deployment["spec"]["replicas"] == 2  # type: ignore[index]
            and service.returncode == 0
            and config["data"]["config.yaml"] == "venue: simulated\n"  # type: ignore[index]
            and budget["metadata"]["labels"].get("app.kubernetes.io/name") == "execution"  # type: ignore[index]
        )

    wait_for(restored, timeout=10, what="every child to be restored")
    assert time.monotonic() - started < 10
    reasons = [e["reason"] for e in events(kubectl, namespace, "execution")]
    assert reasons.count("Restored") >= 4


def test_deleting_a_service_collects_its_children(kubectl: Kubectl, namespace: str, operator: Any) -> None:
    kubectl("apply", "-f", "-", input=manifest("execution", namespace))
    wait_for(lambda: all_ready(kubectl, namespace, 1), timeout=30, what="the service to be Ready")
    kubectl("delete", "tradingservice/execution", "-n", namespace, "--wait=true", "--timeout=30s")

    def collected() -> bool:
        left = get_json(
            kubectl, f"{CHILD_KINDS},pods", "-n", namespace, "-l", "app.kubernetes.io/managed-by=tradeplane"
        )
        return not left["items"]

    wait_for(collected, timeout=60, what="the garbage collector to delete every child")


def test_a_restarted_operator_changes_nothing_that_is_right(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    kubectl("apply", "-f", "-", input=samples_in(namespace))
    wait_for(lambda: all_ready(kubectl, namespace, 5), timeout=60, what="the five samples to be Ready")
    time.sleep(2)  # let the last status and Deployment updates land
    before = resource_versions(kubectl, namespace)
    events_before = operator_events(kubectl, namespace)
    assert events_before, "the operator posts Events for what it created"

    operator.restart()
    wait_for(
        lambda: operator.metric("tradeplane_reconcile_duration_seconds_count") >= 5,
        timeout=30,
        what="the restarted operator to reconcile every service",
    )
    time.sleep(2)
    assert resource_versions(kubectl, namespace) == before
    assert operator_events(kubectl, namespace) == events_before
    assert operator.metric("tradeplane_writes_total") == 0


def test_rendered_children_are_field_for_field_what_the_api_server_stores(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    """So the operator can skip unchanged children without asking: nothing it renders gets normalised."""
    kubectl("apply", "-f", "-", input=samples_in(namespace))
    wait_for(lambda: all_ready(kubectl, namespace, 5), timeout=60, what="the five samples to be Ready")
    for name, service in services(kubectl, namespace).items():
        spec = TradingServiceSpec.model_validate(service["spec"])
        owner = Owner(name, namespace, service["metadata"]["uid"])
        for child in rendering.stable_children(
            owner, spec, template_revision(spec), monitoring=False, number=1
        ):
            if child["kind"] == "ControllerRevision":
                continue  # its number is the generation that made it
            live = get_json(kubectl, f"{child['kind']}/{child['metadata']['name']}", "-n", namespace)
            assert is_subset(child, live), f"{child['kind']} {child['metadata']['name']} differs once stored"


def test_kubelet_admission_failures_are_reported_and_replaced(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    kubectl("apply", "-f", "-", input=manifest("execution", namespace))
    wait_for(lambda: all_ready(kubectl, namespace, 1), timeout=30, what="the service to be Ready")
    (pod,) = get_json(kubectl, "pods", "-n", namespace)["items"]  # type: ignore[misc]
    failed = {
        "status": {
            "phase": "Failed",
            "reason": "OutOfhugepages-1Gi",
            "message": "Node didn't have enough resource: hugepages-1Gi",
        }
    }
    kubectl(
        "patch",
        f"pod/{pod['metadata']['name']}",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(failed),
    )

    def replaced() -> bool:
        names = [p["metadata"]["name"] for p in get_json(kubectl, "pods", "-n", namespace)["items"]]  # type: ignore[attr-defined]
        return pod["metadata"]["name"] not in names and len(names) == 1

    wait_for(replaced, timeout=30, what="the refused pod to be deleted and replaced")
    warnings = [e for e in events(kubectl, namespace, "execution") if e["reason"] == "AdmissionFailed"]
    assert warnings and "OutOfhugepages-1Gi" in warnings[0]["message"]
    wait_for(lambda: all_ready(kubectl, namespace, 1), timeout=30, what="the service to be Ready again")


def test_the_api_server_refuses_each_invalid_manifest_naming_the_field(
    kubectl: Kubectl, namespace: str, crd: None
) -> None:
    assert len(CORPUS) >= 20
    wrong = []
    for path in CORPUS:
        expected = next(line for line in path.read_text().splitlines() if line.startswith("# error: "))
        refused = kubectl("apply", "-n", namespace, "-f", str(path), check=False)
        # A CEL rule evaluated on a value the schema already refused adds a second, misleading error.
        noisy = "conversion error" in refused.stderr or "no such overload" in refused.stderr
        if refused.returncode == 0 or expected.removeprefix("# error: ") not in refused.stderr or noisy:
            wrong.append(f"{path.name}: exit {refused.returncode}: {refused.stderr.strip()}")
    assert not wrong, "\n".join(wrong)


def selected(kubectl: Kubectl, namespace: str, labels: dict[str, str]) -> set[str]:
    """Names of the pods a label selector picks, as the API server evaluates it."""
    selector = ",".join(f"{key}={value}" for key, value in labels.items())
    listed = get_json(kubectl, "pods", "-n", namespace, "-l", selector)["items"]
    return {pod["metadata"]["name"] for pod in listed}  # type: ignore[attr-defined]


def test_each_service_gets_a_network_policy_selecting_its_callers_and_peers(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    """The local control plane stores and selects with NetworkPolicies but has no CNI to enforce them:
    this checks the objects (accepted by the API server, selecting the right pods), not the packets."""
    kubectl("apply", "-f", "-", input=samples_in(namespace))
    wait_for(lambda: all_ready(kubectl, namespace, 5), timeout=60, what="the five samples to be Ready")
    policies = {
        p["metadata"]["name"]: p for p in get_json(kubectl, "networkpolicies", "-n", namespace)["items"]
    }  # type: ignore[attr-defined]
    assert sorted(policies) == ["execution", "market-data", "order", "position", "risk"]
    pods_of = {name: selected(kubectl, namespace, {"app.kubernetes.io/name": name}) for name in policies}
    callers: dict[str, set[str]] = {
        "order": set(),
        "risk": {"order"},
        "execution": {"order"},
        "position": set(),
    }
    callers["market-data"] = {"risk", "position"}
    for name, policy in policies.items():
        spec = policy["spec"]
        assert selected(kubectl, namespace, spec["podSelector"]["matchLabels"]) == pods_of[name]
        wire = spec["ingress"][0]
        in_namespace = [
            peer["podSelector"]["matchLabels"] for peer in wire["from"] if "namespaceSelector" not in peer
        ]
        allowed = set().union(*(selected(kubectl, namespace, labels) for labels in in_namespace))
        assert allowed == set().union(*(pods_of[caller] for caller in callers[name])), name
        called = [rule for rule in spec["egress"][1:] if "to" in rule and rule["ports"][0].get("port")]
        reached = set().union(
            *(selected(kubectl, namespace, rule["to"][0]["podSelector"]["matchLabels"]) for rule in called)
        )
        assert reached == set().union(*(pods_of[c] for c in callers if name in callers[c])), name
    kubectl(
        "patch",
        "tradingservice",
        "order",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"networkPolicy": {"enabled": False}}}),
    )
    wait_for(
        lambda: kubectl("get", "networkpolicy", "order", "-n", namespace, check=False).returncode != 0,
        timeout=30,
        what="the opted-out policy to be deleted",
    )
