"""The chart's RBAC is enough: the operator, run with nothing but a token of the chart's ServiceAccount and
the chart's own command line, reconciles a TradingService end to end and is never refused.

Pods do not really run on the local control plane, so the operator runs here as a process, exactly as the
StatefulSet would start it: same arguments, POD_ID and POD_INDEX filled in as the kubelet would.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chart.chartkit import Release, find, one, operator_container

from support import Kubectl, get_json, token_kubeconfig, wait_for

pytestmark = pytest.mark.cluster

Install = Callable[[dict[str, Any]], Release]
REFUSALS = ("403", "Forbidden", "forbidden", "Not enough permissions")


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


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry these labels, from a /metrics page; 0 when there are none."""
    with urllib.request.urlopen(url, timeout=5) as response:
        page = response.read().decode()
    total = 0.0
    for sample in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", page, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample[1]))
        if labels.items() <= found.items():
            total += float(sample[2])
    return total


def trading_service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "tradeplane.io/v1alpha1",
        "kind": "TradingService",
        "metadata": {"name": "risk", "namespace": namespace},
        "spec": {
            "component": "risk",
            "image": "registry.example/tradeplane-services:0.1.0",
            "replicas": 2,
            "resources": {"cpus": 2, "memory": "2Gi", "hugepages": {"pageSize": "1Gi", "amount": "1Gi"}},
        },
    }


@pytest.fixture
def operator_process(
    install: Install, kubectl: Kubectl, kube_env: Path, watched: list[str], tmp_path: Path
) -> Iterator[tuple[Release, str, str, Path]]:
    """The chart installed for the watched namespaces; its operator runs on the ServiceAccount's token."""
    health, metrics = free_port(), free_port()
    release = install({"watchNamespaces": watched, "health": {"port": health}, "metrics": {"port": metrics}})
    account = one(release.manifests, "ServiceAccount")["metadata"]["name"]
    token = kubectl("create", "token", account, f"--namespace={release.namespace}", "--duration=15m").stdout
    kubeconfig = token_kubeconfig(kube_env, token.strip(), tmp_path / "token.kubeconfig")
    args = [arg.replace("$(POD_INDEX)", "0") for arg in operator_container(release.manifests)["args"]]
    pod = f"{one(release.manifests, 'StatefulSet')['metadata']['name']}-0"
    # The token kubeconfig is the only credential in reach: no client certificate, no in-cluster account.
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_ID": pod}
    log = tmp_path / "operator.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("tradeplane")), *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{health}/healthz"), timeout=30, what="kopf's liveness")
        yield release, pod, f"http://127.0.0.1:{metrics}/metrics", log
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_operator_reconciles_with_only_the_service_accounts_token(
    operator_process: tuple[Release, str, str, Path], kubectl: Kubectl, watched: list[str]
) -> None:
    release, operator_pod, metrics, log = operator_process
    namespace = watched[0]
    kubectl("apply", "-f", "-", input=json.dumps(trading_service(namespace)))

    def ready() -> bool:
        status = get_json(kubectl, "tradingservice", "risk", "-n", namespace).get("status", {})
        return status.get("phase") == "Ready" and status.get("readyReplicas") == 2

    try:
        wait_for(ready, timeout=60, what="TradingService risk Ready")
    except AssertionError as error:
        raise AssertionError(f"{error}; the operator's log ends:\n{log.read_text()[-3000:]}") from None
    managed = ("-n", namespace, "-l", "app.kubernetes.io/managed-by=tradeplane")
    for kind in ("deployments", "services", "poddisruptionbudgets", "controllerrevisions", "configmaps"):
        assert get_json(kubectl, kind, *managed)["items"], f"no {kind} applied in {namespace}"
    pool = get_json(kubectl, "nodes", "-l", "tradeplane.io/pool=trading")["items"]
    pods = get_json(kubectl, "pods", *managed)["items"]
    assert {p["spec"]["nodeName"] for p in pods} <= {n["metadata"]["name"] for n in pool}

    # This process did the writing, on its token: its own counters say so, and nothing was refused.
    assert metric(metrics, "tradeplane_writes_total", verb="apply", kind="Deployment") >= 1
    assert metric(metrics, "tradeplane_writes_total", verb="patch", kind="TradingService/status") >= 1
    assert metric(metrics, "tradeplane_reconcile_errors_total", reason="api403") == 0
    events = get_json(kubectl, "events", "-n", namespace, "--field-selector=involvedObject.name=risk")
    assert events["items"], "the operator posted no Event"
    # kopf peering ran on the chart's KopfPeering, which the Role lets it patch by name only.
    (peering,) = (
        p for p in find(release.manifests, "KopfPeering") if p["metadata"]["namespace"] == namespace
    )
    peers = get_json(kubectl, "kopfpeering", "-n", namespace, peering["metadata"]["name"])["status"]
    assert list(peers) == [operator_pod]
    refusals = [line for line in log.read_text().splitlines() if any(word in line for word in REFUSALS)]
    assert refusals == [], "\n".join(refusals)
