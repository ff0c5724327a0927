"""Shared fixtures: the real local control plane (started once per session) and a namespace per test."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from support import Kubectl, kubectl_runner
from tradeplane.cluster import local, toolchain
from tradeplane.cluster.podrunner import DEFAULT_SELECTOR, PodRunner
from tradeplane.sessions_cli import ensure_secret


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches the local control plane carries the `cluster` marker, whether or not its
    module says so, so `scripts/test -m "not cluster"` never starts one."""
    for item in items:
        if "kube_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def kube_env() -> Iterator[Path]:
    """KUBECONFIG of a running cluster: the caller's when set, else the local control plane (started here)."""
    preset = os.environ.get("KUBECONFIG")
    if preset:
        yield Path(preset)
        return
    # A cluster that was already up (e.g. `tradeplane cluster up` for quick re-runs) is left running.
    started_here = not all(local.running_components().values())
    absent = toolchain.missing(toolchain.CLUSTER_BINARIES)
    if absent:
        pytest.fail(f"{', '.join(absent)} not built: run scripts/bootstrap before the tests", pytrace=False)
    path = local.up(log=lambda message: print(message, flush=True))
    os.environ["KUBECONFIG"] = str(path)
    yield path
    if started_here:
        local.down(log=lambda message: None)


@pytest.fixture(scope="session")
def kubectl(kube_env: Path) -> Kubectl:
    return kubectl_runner(kube_env)


@pytest.fixture
def namespace(kubectl: Kubectl, kube_env: Path) -> Iterator[str]:
    """A fresh namespace with its session keys Secret, as `tradeplane session-keys create` makes it."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    api_client = config.new_client_from_config(config_file=str(kube_env))  # type: ignore[no-untyped-call]
    ensure_secret(client.CoreV1Api(api_client), name)
    # Pods are refused until the controller-manager has created the namespace's default ServiceAccount.
    deadline = time.monotonic() + 30
    while kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"namespace {name}: default ServiceAccount never appeared")
        time.sleep(0.2)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def pod_runner(kube_env: Path) -> Iterator[Callable[..., PodRunner]]:
    """Start real local processes behind the selected kwok pods of a namespace; all stopped after the test."""
    runners: list[PodRunner] = []

    def start(namespace: str, selector: str = DEFAULT_SELECTOR) -> PodRunner:
        runner = PodRunner(namespace, selector, kubeconfig=str(kube_env)).start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop()
