"""Chart test fixtures: helm (built from the Go module proxy and cached), with or without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart.chartkit import Helm

from tradeplane.cluster import toolchain


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(toolchain.build("helm"))


@pytest.fixture(scope="session")
def cluster_helm(helm: Helm, kube_env: Path) -> Helm:
    return Helm(helm.binary, kubeconfig=kube_env)
