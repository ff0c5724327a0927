"""The chart's operator pods, run as they would run: on nothing but a token of the chart's ServiceAccount,
with the chart's own command line. Its RBAC is enough to reconcile a TradingService end to end, and of two
replicas exactly one acts, the holder of the chart's Lease, until it goes; a SIGKILLed holder is replaced
within seconds.

Pods do not really run on the local control plane, so each operator pod runs here as a process, started as
the StatefulSet would start it: the container's args with POD_NAME set as the kubelet would, only the
ports moved so that two pods can share this host.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chart.chartkit import Release, find, one, operator_container

from support import Kubectl, get_json, token_kubeconfig, wait_for

pytestmark = pytest.mark.cluster

Install = Callable[[dict[str, Any]], Release]
# Whole words: a timestamp such as 15:28:28.040398 holds "403" too.
REFUSALS = re.compile(r"\b(403|Forbidden|forbidden)\b|ForbiddenError|Not enough permissions")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class OperatorPod:
    name: str
    health: int
    metrics: int
    log: Path
    process: subprocess.Popen[bytes]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of a metric that carry these labels; 0 when there are none."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as response:
            page = response.read().decode()
        total = 0.0
        for sample in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", page, re.MULTILINE):
            if labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', sample[1])).items():
                total += float(sample[2])
        return total

    def writes(self) -> float:
        return self.metric("tradeplane_writes_total")

    def refusals(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if REFUSALS.search(line)]

    def stop(self) -> None:
        """SIGTERM, as the kubelet stops a pod: the operator gives its Lease up on the way out."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@dataclass
class ChartOperator:
    release: Release
    start: Callable[[int], OperatorPod]

    def holder(self, kubectl: Kubectl) -> str:
        """The pod holding the chart's Lease ("" when nobody does)."""
        (lease,) = find(self.release.manifests, "Lease")
        found = get_json(kubectl, "lease", "-n", self.release.namespace, lease["metadata"]["name"])
        return str(found.get("spec", {}).get("holderIdentity") or "")


@pytest.fixture
def chart_operator(
    install: Install, kubectl: Kubectl, kube_env: Path, watched: list[str], tmp_path: Path
) -> Iterator[ChartOperator]:
    """The chart installed for the watched namespaces (2 replicas, one elected); `start(i)` runs pod i."""
    release = install({"watchNamespaces": watched})
    account = one(release.manifests, "ServiceAccount")["metadata"]["name"]
    token = kubectl("create", "token", account, f"--namespace={release.namespace}", "--duration=15m").stdout
    # The only credential in reach: no client certificate, no in-cluster account, no ~/.kube/config.
    kubeconfig = token_kubeconfig(kube_env, token.strip(), tmp_path / "token.kubeconfig")
    container = operator_container(release.manifests)
    statefulset = one(release.manifests, "StatefulSet")["metadata"]["name"]
    started: list[OperatorPod] = []

    def start(index: int) -> OperatorPod:
        name, health, metrics = f"{statefulset}-{index}", free_port(), free_port()
        ports = {"health": str(health), "metrics": str(metrics)}
        defaults = {p["name"]: str(p["containerPort"]) for p in container["ports"]}
        args = [
            arg.replace(f":{defaults['health']}/", f":{ports['health']}/").replace(
                f"--metrics-port={defaults['metrics']}", f"--metrics-port={ports['metrics']}"
            )
            for arg in container["args"]
        ]
        log = tmp_path / f"{name}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("tradeplane")), *args],
                env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        pod = OperatorPod(name, health, metrics, log, process)
        started.append(pod)
        wait_for(lambda: answers(f"http://127.0.0.1:{health}/healthz"), timeout=30, what=f"{name} liveness")
        return pod

    yield ChartOperator(release, start)
    for pod in started:
        pod.stop()


def trading_service(namespace: str, replicas: int = 2) -> str:
    return json.dumps(
        {
            "apiVersion": "tradeplane.io/v1alpha1",
            "kind": "TradingService",
            "metadata": {"name": "risk", "namespace": namespace},
            "spec": {
                "component": "risk",
                "image": "registry.example/tradeplane-services:0.1.0",
                "replicas": replicas,
                "resources": {"cpus": 2, "memory": "2Gi", "hugepages": {"pageSize": "1Gi", "amount": "1Gi"}},
            },
        }
    )


def wait_ready(kubectl: Kubectl, namespace: str, replicas: int, pods: list[OperatorPod]) -> None:
    def ready() -> bool:
        status = get_json(kubectl, "tradingservice", "risk", "-n", namespace).get("status", {})
        return status.get("phase") == "Ready" and status.get("readyReplicas") == replicas

    try:
        wait_for(ready, timeout=60, what=f"TradingService risk Ready with {replicas} replicas")
    except AssertionError as error:
        logs = "\n".join(f"{pod.name}:\n{pod.log.read_text()[-2000:]}" for pod in pods)
        raise AssertionError(f"{error}; the operators' logs end:\n{logs}") from None


def test_operator_reconciles_with_only_the_service_accounts_token(
    chart_operator: ChartOperator, kubectl: Kubectl, watched: list[str]
) -> None:
    operator = chart_operator.start(0)
    namespace = watched[0]
    kubectl("apply", "-f", "-", input=trading_service(namespace))
    wait_ready(kubectl, namespace, 2, [operator])

    managed = ("-n", namespace, "-l", "app.kubernetes.io/managed-by=tradeplane")
    for kind in (
        "deployments",
        "services",
        "poddisruptionbudgets",
        "networkpolicies",
        "controllerrevisions",
        "configmaps",
    ):
        assert get_json(kubectl, kind, *managed)["items"], f"no {kind} applied in {namespace}"
    pool = get_json(kubectl, "nodes", "-l", "tradeplane.io/pool=trading")["items"]
    pods = get_json(kubectl, "pods", *managed)["items"]
    assert {p["spec"]["nodeName"] for p in pods} <= {n["metadata"]["name"] for n in pool}
    events = get_json(kubectl, "events", "-n", namespace, "--field-selector=involvedObject.name=risk")
    assert events["items"], "the operator posted no Event"

    # This process did the writing, on its token: its own counters say so, and nothing was refused.
    assert operator.metric("tradeplane_writes_total", verb="apply", kind="Deployment") >= 1
    assert operator.metric("tradeplane_writes_total", verb="patch", kind="TradingService/status") >= 1
    assert operator.metric("tradeplane_reconcile_errors_total") == 0
    # Elected on the chart's Lease, which its Role lets it read and patch by name only.
    assert chart_operator.holder(kubectl) == operator.name
    assert operator.refusals() == []


def test_of_two_replicas_the_lease_holder_acts_until_it_goes(
    chart_operator: ChartOperator, kubectl: Kubectl, watched: list[str]
) -> None:
    active = chart_operator.start(0)
    wait_for(lambda: chart_operator.holder(kubectl) == active.name, timeout=20, what="pod 0 elected")
    standby = chart_operator.start(1)
    namespace = watched[0]

    kubectl("apply", "-f", "-", input=trading_service(namespace))
    wait_ready(kubectl, namespace, 2, [active, standby])
    assert active.writes() >= 1
    assert standby.writes() == 0, "the standby wrote while the active replica ran"
    assert chart_operator.holder(kubectl) == active.name

    # The active pod goes (a rolling update, a drained node): it gives the Lease up on the way out.
    active.stop()
    wait_for(lambda: chart_operator.holder(kubectl) == standby.name, timeout=10, what="the standby elected")
    kubectl("apply", "-f", "-", input=trading_service(namespace, replicas=1))
    wait_ready(kubectl, namespace, 1, [active, standby])
    assert standby.writes() >= 1
    assert active.refusals() == [] and standby.refusals() == []


# leaseSeconds (4) + retrySeconds (0.5) + a reconcile, with room for a loaded 2-core machine.
TAKEOVER_BOUND_SECONDS = 12.0


def test_a_sigkilled_holder_is_replaced_within_seconds(
    chart_operator: ChartOperator, kubectl: Kubectl, watched: list[str]
) -> None:
    active = chart_operator.start(0)
    wait_for(lambda: chart_operator.holder(kubectl) == active.name, timeout=20, what="pod 0 elected")
    standby = chart_operator.start(1)
    namespace = watched[0]
    kubectl("apply", "-f", "-", input=trading_service(namespace))
    wait_ready(kubectl, namespace, 2, [active, standby])
    assert standby.writes() == 0

    # No word to anyone: the Lease stays with the dead pod until the standby sees it unrenewed.
    active.process.kill()
    killed = time.monotonic()
    active.process.wait(timeout=10)
    kubectl("apply", "-f", "-", input=trading_service(namespace, replicas=1))
    wait_for(standby.writes, timeout=60, interval=0.05, what="the standby's first write")
    takeover = time.monotonic() - killed
    assert chart_operator.holder(kubectl) == standby.name
    assert takeover < TAKEOVER_BOUND_SECONDS, f"the standby took {takeover:.1f}s to act"
    wait_ready(kubectl, namespace, 1, [active, standby])
    assert standby.refusals() == []
