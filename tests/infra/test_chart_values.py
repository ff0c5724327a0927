"""The Helm release's values are ones the chart accepts: rendered by the real helm, schema-checked."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tradeplane.cluster import toolchain

Graphs = Callable[[str], Any]


@pytest.mark.parametrize("stack", ["local", "aws", "gcp"])
def test_chart_renders_with_the_release_values(stack: str, declared: Graphs, tmp_path: Path) -> None:
    release = declared(stack).one("kubernetes:helm.sh/v3:Release", "tradeplane-operator").inputs
    values = tmp_path / "values.json"
    values.write_text(json.dumps(release["values"]))
    rendered = subprocess.run(
        [
            str(toolchain.require("helm")),
            "template",
            release["name"],
            release["chart"],
            f"--namespace={release['namespace']}",
            f"--values={values}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    manifests = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    (operator,) = [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")]
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    image = release["values"]["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    # Watching one namespace: the operator is granted its namespaced permissions there.
    bindings = [m for m in manifests if m["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert {(m["kind"], m["metadata"].get("namespace")) for m in bindings} >= {("RoleBinding", "trading")}
