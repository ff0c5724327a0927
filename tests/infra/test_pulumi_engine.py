"""The real Pulumi engine installs tradeplane on the local control plane.

The CLI and the Kubernetes provider are the ones scripts/bootstrap builds; the program runs inline
(tradeplane_infra.automation: no Python language host exists here), the policy pack as an analyzer
executable. A file backend in a temporary folder, a passphrase; the operator runs as a local process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import OperatorProcess

from support import Kubectl, get_json, wait_for
from tradeplane.cluster import toolchain
from tradeplane_infra.automation import ScratchProject
from tradeplane_infra.settings import INFRA_DIR

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

POLICY_PACK = INFRA_DIR / "policy" / "__main__.py"
SERVICES = ["execution", "market-data", "order", "position", "risk"]


@dataclass
class Installation:
    project: ScratchProject
    namespace: str
    operator_namespace: str
    kubeconfig: Path

    def configure(self, **values: Any) -> None:
        self.project.configure(
            "local",
            namespace=self.namespace,
            operatorNamespace=self.operator_namespace,
            local={"kubeconfig": str(self.kubeconfig)},
            **values,
        )

    def run(self, command: str, *args: str) -> dict[str, int]:
        return self.project.run(command, "--policy-pack", str(POLICY_PACK), *args, stack="local")


@pytest.fixture
def installation(tmp_path: Path, kube_env: Path, kubectl: Kubectl) -> Iterator[Installation]:
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        # Every plugin comes from set-up; a missing one is an error, never a download.
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "KUBECONFIG": str(kube_env),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        "FRACTIONAL_NAMESPACE": f"t-{suffix}",
    }
    try:
        project = ScratchProject.create(tmp_path / "project", "local test stack", env)
    except toolchain.ToolchainError as error:
        pytest.fail(str(error), pytrace=False)
    installation = Installation(project, f"t-{suffix}", f"t-{suffix}-system", kube_env)
    installation.configure()
    yield installation
    for namespace in (installation.namespace, installation.operator_namespace):
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def trading_services(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, Any]]:
    listed = get_json(kubectl, "tradingservices", "-n", namespace)
    return {item["metadata"]["name"]: item for item in listed["items"]}  # type: ignore[attr-defined]


def phases(kubectl: Kubectl, namespace: str) -> dict[str, str | None]:
    return {
        name: item.get("status", {}).get("phase")
        for name, item in trading_services(kubectl, namespace).items()
    }


def helm_releases(kubectl: Kubectl, namespace: str) -> list[str]:
    listed = get_json(kubectl, "secrets", "-n", namespace, "-l", "owner=helm")
    return [item["metadata"]["labels"]["status"] for item in listed["items"]]  # type: ignore[attr-defined]


def namespace_exists(kubectl: Kubectl, name: str) -> bool:
    return kubectl("get", "namespace", name, check=False).returncode == 0


def test_pulumi_installs_tradeplane_and_rolls_a_canary(
    installation: Installation, kubectl: Kubectl, kube_env: Path, tmp_path: Path
) -> None:
    trading, system = installation.namespace, installation.operator_namespace

    planned = installation.run("preview")
    assert set(planned) == {"create"}, planned
    assert not namespace_exists(kubectl, trading), "a preview changed the cluster"

    up = installation.run("up")
    assert up == planned
    assert namespace_exists(kubectl, trading) and namespace_exists(kubectl, system)
    assert helm_releases(kubectl, system) == ["deployed"]
    assert get_json(kubectl, "statefulset", "tradeplane", "-n", system)["metadata"]
    services = trading_services(kubectl, trading)
    assert sorted(services) == SERVICES
    assert {s["spec"]["image"] for s in services.values()} == {"registry.example/tradeplane-services:0.1.0"}

    operator = OperatorProcess(kube_env, trading, tmp_path / "operator.log")
    operator.start()
    try:
        wait_for(
            lambda: set(phases(kubectl, trading).values()) == {"Ready"},
            timeout=120,
            what="the five TradingServices to be Ready",
        )

        assert installation.run("up", "--expect-no-changes") == {"same": planned["create"]}

        installation.configure(image="registry.example/tradeplane-services:0.2.0")
        assert installation.run("up") == {"same": planned["create"] - len(SERVICES), "update": len(SERVICES)}

        def canaries() -> bool:
            statuses = [s.get("status", {}) for s in trading_services(kubectl, trading).values()]
            return all(
                status.get("phase") == "Progressing"
                and status.get("canaryRevision") not in (None, status.get("stableRevision"))
                and status.get("step", 0) >= 1
                for status in statuses
            )

        wait_for(canaries, timeout=120, what="a canary of each TradingService")
    finally:
        operator.stop()

    violation = installation.project(
        "preview",
        "--program",
        "fractional_program:main",
        "--policy-pack",
        str(POLICY_PACK),
        stack="fractional",
    )
    output = violation.stdout + violation.stderr
    assert violation.returncode != 0, output
    assert "trading-services-whole-cpus-and-hugepages" in output, output
    assert "spec.resources.cpus is 1.5; exclusive cores need a whole number" in output, output

    assert installation.run("destroy") == {"delete": planned["create"]}
    wait_for(
        lambda: not namespace_exists(kubectl, trading) and not namespace_exists(kubectl, system),
        timeout=120,
        what="both namespaces to be deleted",
    )
