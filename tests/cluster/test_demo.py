"""README's main command: the operator and the five services come up, and orders flow through them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster


def test_demo_runs_the_stack_on_trading_nodes(kube_env: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tradeplane.cli", "demo", "--once", "--timeout", "120"],
        env={**os.environ, "KUBECONFIG": str(kube_env)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    view = result.stdout
    for component in ("order", "risk", "market-data", "position", "execution"):
        assert f"trading    {component} " in view, view
    pod_lines = [line for line in view.splitlines() if "Guaranteed" in line]
    assert len(pod_lines) >= 9 and all(" trading-" in line for line in pod_lines), view
    assert view.count("running") >= 9, view
    assert "FILLED" in view and "positions:" in view, view
