"""`pulumi up` of the local target, timed: from nothing to five Ready TradingServices, then a no-op up.

The real engine, the Kubernetes provider and the policy pack (tradeplane_infra.automation), the Helm
release of charts/tradeplane and the five TradingServices, with `tradeplane operator run` reconciling
them; fresh namespaces and a file backend in a temporary folder each run, destroyed afterwards.
    python bench/pulumi_up.py               # against $KUBECONFIG, or the local control plane (started)
    python bench/pulumi_up.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tradeplane.cluster import local, toolchain
from tradeplane.cluster.podrunner import stop_process
from tradeplane_infra.automation import ScratchProject
from tradeplane_infra.settings import INFRA_DIR

POLICY_PACK = str(INFRA_DIR / "policy" / "__main__.py")


def phases(kubeconfig: str, namespace: str) -> list[str]:
    listed = subprocess.run(
        [str(toolchain.require("kubectl")), f"--kubeconfig={kubeconfig}", "get", "tradingservices",
         "-n", namespace, "-o", "json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [item.get("status", {}).get("phase") for item in json.loads(listed)["items"]]


def one_run(kubeconfig: str, scratch: Path) -> tuple[float, float, float]:
    """Seconds of: `pulumi up` alone, up until five Ready, a no-op up."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    project = ScratchProject.create(scratch, "bench", {**os.environ, "KUBECONFIG": kubeconfig})
    project.configure(
        "local",
        namespace=namespace,
        operatorNamespace=f"{namespace}-system",
        local={"kubeconfig": kubeconfig},
    )
    operator = subprocess.Popen(
        [sys.executable, "-m", "tradeplane.cli", "operator", "run", "-n", namespace],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.monotonic()
        project.run("up", "--policy-pack", POLICY_PACK, stack="local")
        up = time.monotonic() - started
        while phases(kubeconfig, namespace) != ["Ready"] * 5:
            time.sleep(0.2)
        ready = time.monotonic() - started
        started = time.monotonic()
        project.run("up", "--policy-pack", POLICY_PACK, "--expect-no-changes", stack="local")
        noop = time.monotonic() - started
    finally:
        stop_process(operator, signal.SIGTERM, timeout=15)
        project.run("destroy", stack="local")
    return up, ready, noop


def summary(label: str, values: list[float]) -> str:
    return f"{label}: median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG") or str(
        local.up(log=lambda message: print(message, file=sys.stderr))
    )
    runs = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
            runs.append(one_run(kubeconfig, Path(scratch) / "project"))
        up, ready, noop = runs[-1]
        print(f"run {run + 1}: up {up:.1f} s, five Ready {ready:.1f} s, no-op up {noop:.1f} s")
    command = " ".join([sys.executable, *sys.argv])
    print(f"command: {command} (KUBECONFIG={kubeconfig}), {os.cpu_count()} cpus")
    print(summary("pulumi up (engine, provider, policy pack; Helm release and five TradingServices)",
                  [r[0] for r in runs]))  # fmt: skip
    print(summary("pulumi up from nothing until five TradingServices are Ready", [r[1] for r in runs]))
    print(summary("no-op pulumi up", [r[2] for r in runs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
