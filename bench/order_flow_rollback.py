"""Order-flow rollback speed: from a slow canary's first answer to the canary's share of orders at zero.

On the local control plane, with `tradeplane operator run` as a process and the order, risk, execution and
market-data services behind the kwok pods (the pod runner), under open-loop order entry into order
(`loadgen.run_load`, accounts spread over `--accounts`). Risk rolls out with `orderFlow` at `--weight-bp`
(default 100: 1% of the accounts) and an analysis every 250 ms (scrape provider, window 5s, minSamples 20);
each run's canary adds `--inject-us` of latency to every check (SLO 1 ms), so its first answer is the
breach; it also refuses every symbol (restrictedSymbols), so the load generator knows a canary's answer
when it receives one (its first RESTRICTED_SYMBOL). The canary's share is at zero when order holds weight
0 (GET /routing on its HTTP port, polled every POLL_SECONDS: an upper bound, order answers it between
orders): from then on no new order reaches the canary, whatever its pods do. Both moments are on this
process's monotonic clock. The runs follow each other in one namespace, each a new revision (the
injected latency differs by a microsecond).

Prints each run, the median, the split into detection (breach -> the operator's verdict recorded in the
status, polled) and the rest, the load offered and achieved, and the goal (< 1 s). For comparison:
bench/rollout_rollback.py (replica ratio, default analysis, breach -> canary pods gone).

    python bench/order_flow_rollback.py                 # 5 runs at 10k orders/s
    python bench/order_flow_rollback.py --runs 3 --rate 2000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

# The end-to-end tests' stack, shared rather than copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from e2e.scenario import ORDER_FLOW_STACK, bundled_manifest

from support import wait_for
from tradeplane.api import TradingServiceSpec
from tradeplane.cluster import local, toolchain
from tradeplane.cluster.podrunner import PodRunner, stop_process
from tradeplane.labels import NAME_LABEL, REVISION_LABEL
from tradeplane.revision import template_revision
from tradeplane.sessions_cli import ensure_secret, secret_credentials
from tradeplane_services.config import Address
from tradeplane_services.loadgen import LoadResult, default_plan, run_load
from tradeplane_services.sessions import Credentials
from tradeplane_services.settings import DEFAULT_SYMBOLS

# The canary spins the injected time per check: at 1% of 10k orders/s, 1.5 ms a check keeps it at 15% of a
# core. A canary that cannot keep up falls behind, answers its readiness probe late, and leaves the routing
# as unready before any verdict: that measures overload, not the rollback.
SLO_MICROS = 1_000
POLL_SECONDS = 0.01
REPO = Path(__file__).resolve().parents[1]
ANALYSIS = {"interval": "250ms", "window": "5s", "minSamples": 20, "inconclusiveLimit": 1000}


def rollout(weight: int) -> dict[str, Any]:
    return {
        "orderFlow": {"leaseSeconds": 3},
        "steps": [{"weightBasisPoints": weight, "pause": "1h"}],
        "analysis": ANALYSIS,
    }


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return str(response.read().decode())
    except OSError:
        return ""


class Bench:
    def __init__(self, kubeconfig: Path, weight: int, logs: Path) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl = str(toolchain.require("kubectl"))
        api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(api_client)
        self.objects = client.CustomObjectsApi(api_client)
        self.namespace = f"bench-flow-{uuid.uuid4().hex[:6]}"
        self.weight = weight
        self.logs = logs

    def run(self, *args: str, input: str | None = None) -> None:
        command = [self.kubectl, f"--kubeconfig={self.kubeconfig}", *args]
        subprocess.run(command, input=input, text=True, check=True, capture_output=True)

    def status(self) -> dict[str, Any]:
        body: Any = self.objects.get_namespaced_custom_object(
            "tradeplane.io", "v1alpha1", self.namespace, "tradingservices", "risk"
        )
        return dict(body.get("status") or {})

    def pod_ips(self, name: str, revision: str | None = None) -> list[str]:
        selector = f"{NAME_LABEL}={name}" + (f",{REVISION_LABEL}={revision}" if revision else "")
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return [
            pod.status.pod_ip for pod in pods if pod.status.pod_ip and pod.metadata.deletion_timestamp is None
        ]

    def revision_of(self, config: dict[str, Any]) -> str:
        """The revision risk runs with these settings: the canary's, to find its pods."""
        document: dict[str, Any] = yaml.safe_load(
            bundled_manifest(self.namespace, "risk", 2, SLO_MICROS, rollout(self.weight))
        )
        return template_revision(TradingServiceSpec.model_validate({**document["spec"], "config": config}))


@dataclass(frozen=True)
class Timing:
    answer_to_zero: float
    """From the first canary answer the load generator received to order holding weight 0."""
    routed_to_zero: float
    """From order first holding the canary's weight (polled) to it holding 0: an upper bound of the
    former that does not depend on when the canary's answers reach the client."""
    verdict_to_zero: float
    """From the failing analysis (the reconcile's clock, in the status) to order holding weight 0: the
    actuation, the rest is detection."""


def one_run(
    bench: Bench, order: Address, creds: Credentials, args: argparse.Namespace, run: int
) -> tuple[Timing, dict[str, Any], LoadResult]:
    """Load into order, a slow canary of risk, and how long its share of the orders took to reach 0."""
    slow = {"latencyInjectionMicros": args.inject_us + run, "restrictedSymbols": list(DEFAULT_SYMBOLS)}
    canary = bench.revision_of(slow)
    loads: list[LoadResult] = []
    seconds = 25.0

    def offer() -> None:
        plan = default_plan(args.accounts)
        loads.append(run_load(order, args.rate, seconds, warmup=0, plan=plan, creds=creds))

    load = threading.Thread(target=offer, daemon=True)
    load.start()
    time.sleep(3)
    patch = json.dumps({"spec": {"config": slow}})
    bench.run("patch", "tradingservice", "risk", "-n", bench.namespace, "--type", "merge", "-p", patch)

    def weight_in_force() -> int | None:
        routing = json.loads(get(f"http://{order.host}:9100/routing") or "{}").get("risk", {})
        return routing.get("weightInForce")

    routed = wait_for(
        lambda: (weight_in_force() or 0) > 0 and time.monotonic(), 90, POLL_SECONDS, "the canary's weight"
    )
    at_zero = wait_for(
        lambda: weight_in_force() == 0 and time.monotonic(), 60, POLL_SECONDS, "the canary's share at zero"
    )
    verdict = wait_for(
        lambda: (status := bench.status()).get("failedRevision") == canary and status,
        60,
        0.05,
        "the rollback recorded",
    )
    load.join(seconds + 30)
    wait_for(lambda: bench.status().get("phase") == "RolledBack", 120, 0.2, "rolled back")
    breach = loads[0].first_reject_at["RESTRICTED_SYMBOL"]
    analysis: dict[str, Any] = verdict.get("lastAnalysis") or {}
    # The status stamps wall time; this process's wall clock minus its monotonic one relates the two.
    decided = datetime.fromisoformat(analysis["time"].replace("Z", "+00:00")).timestamp()
    decided_monotonic = decided - (time.time() - time.monotonic())
    return Timing(at_zero - breach, at_zero - routed, at_zero - decided_monotonic), analysis, loads[0]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=10_000.0, help="orders per second into order")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--weight-bp", type=int, default=100, help="the canary's share, basis points")
    parser.add_argument("--inject-us", type=int, default=1_500, help="latency the bad canary adds per check")
    parser.add_argument("--logs", type=Path, default=Path("/tmp/tradeplane-bench-order-flow"))
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    kubeconfig = local.up(log=lambda message: print(message, file=sys.stderr))
    os.environ["KUBECONFIG"] = str(kubeconfig)
    bench = Bench(kubeconfig, args.weight_bp, args.logs)
    bench.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / "tradingservice.yaml"))
    namespace = bench.namespace
    bench.run("create", "namespace", namespace)
    ensure_secret(bench.core, namespace)
    environment = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with (args.logs / f"{namespace}-operator.log").open("wb") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "tradeplane.cli", "operator", "run", "-n", namespace],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    runner = PodRunner(namespace, kubeconfig=str(kubeconfig)).start()
    runs: list[Timing] = []
    loads: list[LoadResult] = []
    try:
        for name, replicas in ORDER_FLOW_STACK:
            bundled = rollout(args.weight_bp) if name == "risk" else None
            bench.run(
                "apply", "-f", "-", input=bundled_manifest(namespace, name, replicas, SLO_MICROS, bundled)
            )
        wait_for(lambda: bench.status().get("phase") == "Ready", 120, 0.5, "risk Ready")
        runner.wait_running(5, timeout=120)
        order_ip = wait_for(lambda: bench.pod_ips("order"), 120, 0.5, "order's pod")[0]  # type: ignore[index]
        wait_for(lambda: get(f"http://{order_ip}:9100/readyz") == "ready\n", 120, 0.2, "order ready")
        creds = secret_credentials(bench.core, namespace, "client", args.logs)
        for run in range(1, args.runs + 1):
            timing, analysis, load = one_run(bench, Address(order_ip, 7001), creds, args, run)
            runs.append(timing)
            loads.append(load)
            print(
                f"run {run}: canary's first answer -> its share at zero {timing.answer_to_zero:.3f} s, "
                f"routed -> zero {timing.routed_to_zero:.3f} s, "
                f"verdict -> zero {timing.verdict_to_zero:.3f} s ({analysis.get('verdict')} on "
                f"{analysis.get('gate')}: {analysis.get('value')} us > {analysis.get('threshold')} us on "
                f"{analysis.get('samples')} samples); load achieved {load.achieved_rate:.0f}/s, "
                f"answers refused {dict(load.rejects)}"
            )
    finally:
        runner.stop()
        stop_process(operator, signal.SIGTERM, timeout=15)
        bench.run("delete", "namespace", namespace, "--wait=false")
    achieved = statistics.median(load.achieved_rate for load in loads)
    for what, figures in (
        ("first slow canary answer -> canary share at zero (goal < 1 s)", [t.answer_to_zero for t in runs]),
        ("canary routed -> canary share at zero (an upper bound)", [t.routed_to_zero for t in runs]),
        ("verdict's reconcile -> canary share at zero (actuation)", [t.verdict_to_zero for t in runs]),
    ):
        print(
            f"{what}: median {statistics.median(figures):.3f} s over {len(figures)} runs "
            f"(min {min(figures):.3f}, max {max(figures):.3f})"
        )
    print(
        f"orderFlow at {args.weight_bp} bp, offered {args.rate:g} orders/s, achieved median {achieved:.0f}/s"
    )
    print(
        f"command: python bench/order_flow_rollback.py --runs {args.runs} --rate {args.rate:g} "
        f"--accounts {args.accounts} --weight-bp {args.weight_bp} --inject-us {args.inject_us}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
