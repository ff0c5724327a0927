"""Pulumi and kubectl speak the same API: the TradingServices the program declares, exactly as the
Kubernetes provider would send them, are accepted and stored unchanged by the real API server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import Kubectl, get_json
from tradeplane.cluster import local

pytestmark = pytest.mark.cluster

Graphs = Callable[[str], Any]
CRD = Path(__file__).resolve().parents[2] / "crds" / "tradingservice.yaml"
CRD_NAME = "tradingservices.tradeplane.io"


def as_sent(value: Any) -> Any:
    """Engine values carry numbers as floats; the provider's Go JSON encoder writes whole ones as integers."""
    if isinstance(value, dict):
        return {key: as_sent(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_sent(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@pytest.fixture
def crd_installed(kubectl: Kubectl) -> None:
    if kubectl("get", "crd", CRD_NAME, check=False).returncode != 0:
        kubectl("apply", "-f", str(CRD))
    local.wait_established(kubectl, CRD_NAME)


@pytest.mark.parametrize("stack", ["local", "aws", "gcp"])
def test_declared_trading_services_are_accepted_unchanged(
    stack: str, declared: Graphs, kubectl: Kubectl, namespace: str, crd_installed: None
) -> None:
    sent = {}
    for resource in declared(stack).of_type("kubernetes:tradeplane.io/v1alpha1:TradingService"):
        manifest = as_sent(resource.inputs)
        manifest["metadata"]["namespace"] = namespace
        sent[manifest["metadata"]["name"]] = manifest
    assert len(sent) == 5
    kubectl(
        "apply",
        "--server-side",
        "--field-manager=pulumi-kubernetes",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(sent.values())}),
    )
    stored = {
        item["metadata"]["name"]: item
        for item in get_json(kubectl, "tradingservices", "-n", namespace)["items"]
    }
    assert sorted(stored) == sorted(sent)
    for name, manifest in sent.items():
        assert stored[name]["spec"] == manifest["spec"], name
        assert stored[name]["metadata"]["labels"] == manifest["metadata"]["labels"]
