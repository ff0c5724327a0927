"""Session keys on the local control plane: the operator mounts them, the services log on with them, and
Kubernetes RBAC on the Secret decides who may throw the kill switch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import Kubectl, get_json, token_kubeconfig, wait_for
from tradeplane.cluster.podrunner import PodRunner

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def tradeplane(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tradeplane.cli", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": ""},
    )


def test_the_kill_switch_is_thrown_by_whoever_may_read_the_keys_and_by_no_one_else(
    kubectl: Kubectl,
    kube_env: Path,
    namespace: str,
    operator: Any,
    pod_runner: Callable[..., PodRunner],
    tmp_path: Path,
) -> None:
    # Risk with the market data it subscribes to: the pod runner starts a process once the Services its
    # environment names exist.
    for component in ("market-data", "risk"):
        sample = yaml.safe_load((REPO / "samples" / f"{component}.yaml").read_text())
        sample["metadata"]["namespace"] = namespace
        sample["spec"]["replicas"] = 1
        kubectl("apply", "-f", "-", input=yaml.safe_dump(sample))
    runner = pod_runner(namespace, selector="app.kubernetes.io/name=risk")
    (pod,) = runner.wait_running(1, timeout=60)
    wait_for(
        lambda: "listening" in (pod.workdir / "output.log").read_text(), timeout=30, what="risk to listen"
    )
    risk_pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app.kubernetes.io/name=risk")
    (running,) = risk_pods["items"]  # type: ignore[misc]
    volumes = {volume["name"]: volume for volume in running["spec"]["volumes"]}
    items = [item["key"] for item in volumes["session-keys"]["secret"]["items"]]
    assert items == ["risk", "order", "admin"]  # its own, and its callers'

    # A desk account may list pods but not read the keys: RBAC refuses it before any connection is made.
    kubectl("create", "serviceaccount", "desk", "-n", namespace)
    kubectl("create", "role", "pods", "--verb=list", "--resource=pods", "-n", namespace)
    kubectl(
        "create", "rolebinding", "desk", "--role=pods", f"--serviceaccount={namespace}:desk", "-n", namespace
    )
    token = kubectl("create", "token", "desk", "-n", namespace, "--duration=10m").stdout.strip()
    desk = token_kubeconfig(kube_env, token, tmp_path / "desk.kubeconfig")
    refused = tradeplane(desk, "kill-switch", "HALTED", "-n", namespace)
    assert refused.returncode == 1
    assert f"reading secret {namespace}/tradeplane-session-keys: Forbidden" in refused.stderr

    halted = tradeplane(kube_env, "kill-switch", "HALTED", "-n", namespace)
    assert halted.returncode == 0, halted.stderr
    assert halted.stdout.strip() == f"pod {running['metadata']['name']}: kill switch HALTED"
    log = (pod.workdir / "output.log").read_text()
    assert '"message": "kill switch moved"' in log and '"state": "HALTED"' in log
    assert '"identity": "admin"' in log
