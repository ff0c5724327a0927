"""Rollout test fixtures: the TradingService CRD installed on the local control plane."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import Kubectl
from tradeplane.cluster import local

CRD = Path(__file__).resolve().parents[2] / "crds" / "tradingservice.yaml"


@pytest.fixture(scope="session")
def tradingservice_crd(kubectl: Kubectl) -> str:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    local.wait_established(kubectl, "tradingservices.tradeplane.io")
    return "tradingservices.tradeplane.io"
