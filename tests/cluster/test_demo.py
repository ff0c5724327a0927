"""README's main command: the stack comes up, orders flow, a bad release rolls back, a good one wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster


def test_the_demo_story_happens_from_start_to_end(kube_env: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tradeplane.cli", "demo", "--once"],
        env={**os.environ, "KUBECONFIG": str(kube_env)},
        capture_output=True,
        text=True,
        timeout=540,
    )
    story = result.stdout
    assert result.returncode == 0, f"{story[-4000:]}\n{result.stderr[-3000:]}"
    lines = story.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if marker in line)
        for marker in (
            "orders flowing:",
            "releasing a bad risk revision",
            "gate p99 FAILED",
            "ROLLED BACK on its own",
            "kept its 2 pods throughout",
            "releasing a good risk revision",
            "PROMOTED:",
            "the desk's flow went on throughout",
        )
    ]
    assert order == sorted(order), story
    # The closing screen: every bundled service Ready, positions held, fills counted.
    for component in ("order", "risk", "market-data", "position", "execution"):
        assert f"│ {component} " in story.split("PROMOTED:")[1], story
    assert "Positions by account" in story and "AAPL" in story, story
