"""`tradeplane pause|resume|promote|abort|retry` against the real API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import Kubectl, get_json
from tradeplane.cli import main
from tradeplane.cluster import toolchain
from tradeplane.labels import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION

pytestmark = pytest.mark.cluster


@pytest.fixture
def service(kubectl: Kubectl, namespace: str, tradingservice_crd: str) -> str:
    manifest = {
        "apiVersion": "tradeplane.io/v1alpha1",
        "kind": "TradingService",
        "metadata": {"name": "order", "namespace": namespace},
        "spec": {
            "component": "order",
            "image": "registry.example/svc:1",
            "resources": {"cpus": 2, "memory": "1Gi"},
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    return "order"


def set_status(kubectl: Kubectl, namespace: str, status: dict[str, object]) -> None:
    kubectl(
        "patch",
        "tradingservice",
        "order",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def test_pause_and_resume_set_spec_paused(
    kube_env: Path, kubectl: Kubectl, namespace: str, service: str
) -> None:
    assert main(["pause", service, "-n", namespace]) == 0
    assert get_json(kubectl, "tradingservice", service, "-n", namespace)["spec"]["paused"] is True
    assert main(["resume", service, "-n", namespace]) == 0
    assert get_json(kubectl, "tradingservice", service, "-n", namespace)["spec"]["paused"] is False


def test_promote_and_abort_name_the_canary_revision(
    kube_env: Path, kubectl: Kubectl, namespace: str, service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    set_status(kubectl, namespace, {"phase": "Progressing", "stableRevision": "aaa", "canaryRevision": "bbb"})
    assert main(["promote", service, "-n", namespace]) == 0
    assert main(["abort", service, "-n", namespace]) == 0
    annotations = get_json(kubectl, "tradingservice", service, "-n", namespace)["metadata"]["annotations"]
    # Bound to the spec generation the request was made against (the first here).
    assert annotations[PROMOTE_ANNOTATION] == "bbb@1" and annotations[ABORT_ANNOTATION] == "bbb@1"
    assert f"tradingservice {namespace}/order: abort canary revision bbb requested" in capsys.readouterr().out


def test_promote_without_a_canary_says_so(
    kube_env: Path, kubectl: Kubectl, namespace: str, service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    set_status(kubectl, namespace, {"phase": "Ready", "stableRevision": "aaa"})
    assert main(["promote", service, "-n", namespace]) == 1
    assert (
        f"error: tradingservice {namespace}/order has no canary to promote (phase Ready)"
        in capsys.readouterr().err
    )


def test_retry_names_the_rolled_back_revision_once_per_request(
    kube_env: Path, kubectl: Kubectl, namespace: str, service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    set_status(kubectl, namespace, {"phase": "Ready", "stableRevision": "aaa"})
    assert main(["retry", service, "-n", namespace]) == 1
    assert (
        f"error: tradingservice {namespace}/order has no rolled-back revision (phase Ready)"
        in capsys.readouterr().err
    )
    set_status(
        kubectl,
        namespace,
        {
            "phase": "RolledBack",
            "stableRevision": "aaa",
            "failedRevision": "ccc",
            "rollbackOutcome": "Inconclusive",
        },
    )
    values = []
    for _ in range(2):
        assert main(["retry", service, "-n", namespace]) == 0
        annotations = get_json(kubectl, "tradingservice", service, "-n", namespace)["metadata"]["annotations"]
        values.append(annotations[RETRY_ANNOTATION])
    assert all(value.startswith("ccc@1#") for value in values)
    # Each request is its own: the operator honours a retry once, so a second must differ from the first.
    assert values[0] != values[1]
    assert (
        f"tradingservice {namespace}/order: retry of revision ccc (Inconclusive) requested"
        in capsys.readouterr().out
    )


def test_an_unknown_service_is_named(
    kube_env: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["abort", "nope", "-n", namespace]) == 1
    assert f"error: tradingservice {namespace}/nope not found" in capsys.readouterr().err


def test_the_namespace_defaults_to_the_kubeconfig_context(
    kube_env: Path, kubectl: Kubectl, namespace: str, service: str, tmp_path: Path
) -> None:
    config = yaml.safe_load(kube_env.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    assert main(["pause", service, "--kubeconfig", str(kubeconfig)]) == 0
    assert get_json(kubectl, "tradingservice", service, "-n", namespace)["spec"]["paused"] is True


def test_the_commands_work_as_a_kubectl_plugin(
    kube_env: Path, kubectl: Kubectl, namespace: str, service: str
) -> None:
    environment = {
        **os.environ,
        "KUBECONFIG": str(kube_env),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    binary = str(toolchain.require("kubectl"))
    result = subprocess.run(
        [binary, "tradeplane", "pause", service, "-n", namespace],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tradingservice {namespace}/order paused"
    assert get_json(kubectl, "tradingservice", service, "-n", namespace)["spec"]["paused"] is True
