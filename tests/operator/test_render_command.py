"""`tradeplane render -f FILE`: the children a manifest makes, or an error naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def render(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tradeplane.cli", "render", *args], capture_output=True, text=True, input=input
    )


def test_every_sample_renders_its_children() -> None:
    for path in sorted((REPO / "samples").glob("*.yaml")):
        if "TradingService" not in path.read_text():
            continue
        result = render("-f", str(path))
        assert result.returncode == 0, result.stderr
        kinds = [child["kind"] for child in yaml.safe_load_all(result.stdout)]
        assert kinds == [
            "ControllerRevision",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]


def test_a_service_monitor_is_rendered_on_request_from_stdin() -> None:
    result = render("-f", "-", "--service-monitor", input=(REPO / "samples" / "risk.yaml").read_text())
    children = list(yaml.safe_load_all(result.stdout))
    assert children[-1]["kind"] == "ServiceMonitor"
    assert all(child["metadata"]["namespace"] == "trading" for child in children)


def test_an_invalid_manifest_is_refused_naming_the_field() -> None:
    corpus = Path(__file__).parent / "invalid" / "hugepages-not-multiple.yaml"
    result = render("-f", str(corpus))
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        "spec.resources.hugepages.amount: hugepages amount must be a positive multiple of pageSize"
        in result.stderr
    )


def test_a_file_without_trading_services_says_so() -> None:
    result = render("-f", str(REPO / "samples" / "00-namespace.yaml"))
    assert result.returncode == 1
    assert "no TradingService found" in result.stderr


@pytest.mark.parametrize(
    "case",
    [
        "freeze-unknown-timezone",
        "freeze-unknown-calendar",
        "analysis-prometheus-without-url",
        "analysis-interval-out-of-range",
        "analysis-window-malformed",
    ],
)
def test_render_refuses_what_the_api_server_refuses_at_the_same_field(case: str) -> None:
    path = Path(__file__).parent / "invalid" / f"{case}.yaml"
    expected = next(line for line in path.read_text().splitlines() if line.startswith("# error: "))
    field = expected.removeprefix("# error: ").split(": ", 1)[0]
    result = render("-f", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert f"{field}: " in result.stderr, result.stderr
