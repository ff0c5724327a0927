"""Fixtures for the operator on the local control plane: the CRD, and the operator as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Kubectl, wait_for
from tradeplane import crd as crd_generator
from tradeplane.cluster import local
from tradeplane.cluster.podrunner import stop_process

CRD_NAME = "tradingservices.tradeplane.io"


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> None:
    """The TradingService CRD of this checkout, installed and established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_generator.CRD_PATHS[0]))
    local.wait_established(kubectl, CRD_NAME)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OperatorProcess:
    """`tradeplane operator run --namespace NS` as a subprocess, with its metrics and liveness ports."""

    def __init__(self, namespace: str, kubeconfig: Path, log: Path) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.log = log
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        command = [
            sys.executable,
            "-m",
            "tradeplane.cli",
            "operator",
            "run",
            f"--namespace={self.namespace}",
            f"--metrics-port={self.metrics_port}",
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
        ]
        environment = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
        wait_for(self._alive, timeout=30, what=f"the operator's liveness endpoint (log: {self.log})")
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited with {self.process.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_process(self.process, signal.SIGINT, timeout=15)

    def restart(self) -> OperatorProcess:
        self.stop()
        return self.start()

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on the operator's /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name)] in " {"
        )

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def operator(kube_env: Path, crd: None, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator watching the test's namespace; its log is printed when the test fails."""
    process = OperatorProcess(namespace, kube_env, tmp_path / "operator.log").start()
    yield process
    process.stop()
    print(f"--- operator log ({process.log}) ---\n{process.tail(80)}")
