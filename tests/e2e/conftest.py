"""End-to-end fixtures: the operator as a process, a real Prometheus discovering the namespace's pods."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e.prometheus import PodDiscovery, Prometheus, free_port, run_prometheus
from rollout.conftest import tradingservice_crd  # noqa: F401  (a shared fixture)

from support import Kubectl, wait_for
from tradeplane.cluster import local
from tradeplane.cluster.podrunner import stop_process


@dataclass
class OperatorProcess:
    """`tradeplane operator run` as a process watching one namespace; killable and restartable."""

    kubeconfig: Path
    namespace: str
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self) -> None:
        command = [sys.executable, "-m", "tradeplane.cli", "operator", "run", "-n", self.namespace]
        environment = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [*command, "--metrics-port", str(self.port)],
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: _metrics_up(self.metrics_url), timeout=30, what="the operator's metrics endpoint")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM and wait; SIGKILL (no chance to finish anything) when `kill`."""
        assert self.process is not None
        stop_process(self.process, signal.SIGKILL if kill else signal.SIGTERM, timeout=15)

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of the operator's own metrics, None when absent."""
        with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
            text = response.read().decode()
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        for line in text.splitlines():
            if line.startswith(name + "{") and all(label in line for label in wanted):
                return float(line.rsplit(" ", 1)[1])
        return None


def _metrics_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def operator_process(
    kube_env: Path, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    """The operator watching the test's namespace, stopped (SIGTERM) after the test."""
    request.getfixturevalue("tradingservice_crd")
    operator = OperatorProcess(kube_env, namespace, tmp_path / "operator.log")
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


@pytest.fixture
def prometheus(kube_env: Path, namespace: str, tmp_path: Path) -> Iterator[Prometheus]:
    """A real Prometheus discovering the namespace's pods through the API server, scraping every second."""
    with (
        PodDiscovery(kube_env, namespace) as discovery,
        run_prometheus(tmp_path / "prometheus", [discovery.scrape_config()]) as server,
    ):
        yield server


GATEWAY_API = "sigs.k8s.io/gateway-api@v1.2.1"


@pytest.fixture(scope="session")
def gateway_api_crds(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Gateway API's HTTPRoute CRD (standard channel), from its Go module, installed on the cluster."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "go is not installed: the local control plane and the Gateway API CRDs come from Go modules"
        )
    download = subprocess.run(
        [go, "mod", "download", "-json", GATEWAY_API],
        cwd=tmp_path_factory.mktemp("gateway-api"),
        capture_output=True,
        text=True,
        check=True,
    )
    crd = (
        Path(json.loads(download.stdout)["Dir"])
        / "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"
    )
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    local.wait_established(kubectl, "httproutes.gateway.networking.k8s.io")
    return "httproutes.gateway.networking.k8s.io"
