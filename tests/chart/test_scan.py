"""A security reviewer's scan (checkov) of every rendered mode and of the operator's Dockerfile.

checkov's open-source edition reports no severities, so every failed check counts: each is fixed in the
chart, or skipped in the chart with a `checkov.io/skipN` annotation that says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart.chartkit import DOCKERFILE, MODES, Helm, scan


def failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{check['check_id']} {check['check_name']}: {check['resource']} ({Path(check['file_path']).name})"
        for check in report["results"]["failed_checks"]
    ]


@pytest.fixture(scope="module")
def rendered(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rendered")
    for mode, values in MODES.items():
        slug = mode.replace(", ", "-").replace(" ", "-")
        (directory / f"{slug}.yaml").write_text(helm.template(values))
    return directory


@pytest.fixture(scope="module")
def report(rendered: Path) -> dict[str, Any]:
    return scan(rendered, "kubernetes")


def test_every_mode_passes_the_kubernetes_checks(rendered: Path, report: dict[str, Any]) -> None:
    assert failures(report) == []
    results = report["results"]
    passed = {(check["check_id"], Path(check["file_path"]).stem) for check in results["passed_checks"]}
    for path in rendered.iterdir():
        # Read-only root filesystem and no ServiceAccount that can read all Secrets, in every mode.
        assert {("CKV_K8S_22", path.stem), ("CKV2_K8S_5", path.stem)} <= passed


def test_every_skipped_check_says_why(report: dict[str, Any]) -> None:
    skipped = report["results"]["skipped_checks"]
    assert skipped, "the chart documents its accepted findings; none were reported"
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]


def test_operator_dockerfile_passes_the_dockerfile_checks() -> None:
    report = scan(DOCKERFILE, "dockerfile")
    assert failures(report) == []
    assert {check["check_id"] for check in report["results"]["passed_checks"]} >= {
        "CKV_DOCKER_3",  # a non-root user
        "CKV_DOCKER_7",  # a versioned base image
    }
