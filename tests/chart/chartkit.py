"""The chart under test through the real helm binary, and the manifest scanner a security reviewer runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tradeplane.cluster import toolchain

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "tradeplane"
DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"
CHECKOV_VERSION = "3.3.30"

Manifest = dict[str, Any]

# The modes the chart is tested in: value overrides for `helm --set-json`.
MODES: dict[str, dict[str, Any]] = {
    "cluster-wide, elected": {},
    "namespaced, elected": {"watchNamespaces": ["desk-a", "desk-b"]},
    "cluster-wide, standalone": {"replicas": 1, "leaderElection": {"enabled": False}},
    "namespaced, standalone": {
        "replicas": 1,
        "leaderElection": {"enabled": False},
        "watchNamespaces": ["desk-a"],
    },
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
}


def set_json(values: dict[str, Any]) -> list[str]:
    return [f"--set-json={key}={json.dumps(value)}" for key, value in values.items()]


@dataclass
class Helm:
    binary: Path
    kubeconfig: Path | None = None

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), *args]
        if self.kubeconfig is not None:
            command.append(f"--kubeconfig={self.kubeconfig}")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def template(
        self, values: dict[str, Any] | None = None, release: str = "tp", namespace: str = "tradeplane-system"
    ) -> str:
        return self.run(
            "template", release, str(CHART), f"--namespace={namespace}", *set_json(values or {})
        ).stdout

    def manifests(self, values: dict[str, Any] | None = None, **kwargs: str) -> list[Manifest]:
        return [doc for doc in yaml.safe_load_all(self.template(values, **kwargs)) if doc]


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    manifests: list[Manifest]

    @property
    def service_account(self) -> str:
        """The operator's ServiceAccount as a user name for `kubectl auth can-i --as`."""
        (account,) = find(self.manifests, "ServiceAccount")
        return f"system:serviceaccount:{self.namespace}:{account['metadata']['name']}"


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def operator_container(manifests: list[Manifest]) -> Manifest:
    statefulset = one(manifests, "StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return container


def checkov() -> Path:
    """checkov in its own virtualenv in the tool cache: it pins old versions of many libraries
    (packaging, boto3, networkx) that must not leak into the project's environment."""
    venv = toolchain.cache_dir().parent / f"checkov-{CHECKOV_VERSION}"
    binary = venv / "bin" / "checkov"
    installed = venv / ".installed"
    if installed.exists():
        return binary
    shutil.rmtree(venv, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, capture_output=True)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            f"checkov=={CHECKOV_VERSION}",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    installed.touch()
    return binary


def scan(target: Path, framework: str) -> dict[str, Any]:
    """checkov's JSON report of a file or directory; --skip-download keeps it off the network."""
    flag = "-d" if target.is_dir() else "-f"
    result = subprocess.run(
        [str(checkov()), flag, str(target), f"--framework={framework}", "--skip-download", "--output=json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # checkov exits 1 when a check fails; anything else is a crash.
    assert result.returncode in (0, 1), f"checkov crashed:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    assert isinstance(report, dict), f"checkov found nothing to scan in {target}: {report}"
    return report
