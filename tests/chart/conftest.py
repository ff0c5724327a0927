"""Chart test fixtures: helm (built from the Go module proxy and cached), releases on the local cluster."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.chartkit import CHART, Helm, Release, set_json

from support import Kubectl
from tradeplane.cluster import toolchain


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(toolchain.require("helm"))


@pytest.fixture(scope="session")
def cluster_helm(helm: Helm, kube_env: Path) -> Helm:
    return Helm(helm.binary, kubeconfig=kube_env)


@pytest.fixture
def install(cluster_helm: Helm, namespace: str) -> Iterator[Callable[[dict[str, Any]], Release]]:
    """Install the chart into the test's namespace; uninstalled afterwards, cluster-scoped objects too."""
    installed: list[Release] = []

    def run(values: dict[str, Any]) -> Release:
        name = "tp"
        cluster_helm.run(
            "install",
            name,
            str(CHART),
            f"--namespace={namespace}",
            "--wait",
            "--timeout=60s",
            *set_json(values),
        )
        manifest = cluster_helm.run("get", "manifest", name, f"--namespace={namespace}").stdout
        release = Release(name, namespace, [doc for doc in yaml.safe_load_all(manifest) if doc])
        installed.append(release)
        return release

    yield run
    for release in installed:
        cluster_helm.run("uninstall", release.name, f"--namespace={release.namespace}", "--wait", check=False)


@pytest.fixture
def watched(kubectl: Kubectl) -> Iterator[list[str]]:
    """Two more namespaces for the operator to watch in namespaced mode."""
    names = [f"desk-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in names:
        kubectl("create", "namespace", name)
    yield names
    for name in names:
        kubectl("delete", "namespace", name, "--wait=false", check=False)
