"""Rollback speed: wall time from the moment a canary breaches its p99 SLO until the canary is at zero.

On the local control plane, with `tradeplane operator run` as a process and real risk services behind the
kwok pods (the pod runner), under steady traffic spread over the pods:

- analysis: a new revision with 8 ms of injected latency per check (SLO 5 ms) and the default rollout
  and analysis settings (scrape provider, interval 5s, window 30s, minSamples 200, failureLimit 1). The
  breach is the first answer of a canary pod: every canary answer is slower than the SLO. Done when the
  canary Deployment has zero replicas, spec and pods;
- abort (the baseline, same run): a good new revision aborted (`tradeplane abort`) at its first answer;
  the same mechanics without the detection, so the ratio shows what detection costs.

Prints each run, the medians, the split of the analysis runs into detection (breach -> the operator
scales the canary to zero) and actuation (-> no canary pod left), and the goal (<= 15 s). For comparison:
Flagger needs at least interval x threshold (10 s minimum interval, 1 min default); Argo Rollouts'
defaults take minutes.
    python bench/rollout_rollback.py              # 5 runs of each
    python bench/rollout_rollback.py --runs 3 --rate 200
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

# The end-to-end tests' subject and traffic, shared rather than copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from e2e.scenario import NAME, risk_spec

from tradeplane.api import BUNDLED_PORTS, TradingServiceSpec
from tradeplane.cli import main as tradeplane
from tradeplane.cluster import local, toolchain
from tradeplane.cluster.podrunner import PodRunner, stop_process
from tradeplane.demo.traffic import RiskTraffic
from tradeplane.labels import NAME_LABEL, REVISION_LABEL
from tradeplane.revision import template_revision
from tradeplane.sessions_cli import ensure_secret

SLO_MICROS = 5_000
INJECTED_MICROS = 8_000
POLL_SECONDS = 0.05
REPO = Path(__file__).resolve().parents[1]


def revision_of(config: dict[str, Any]) -> str:
    return template_revision(TradingServiceSpec.model_validate(risk_spec(config, SLO_MICROS)))


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl: str
    apps: client.AppsV1Api
    core: client.CoreV1Api
    objects: client.CustomObjectsApi

    def run(self, *args: str, input: str | None = None) -> None:
        subprocess.run(
            [self.kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            text=True,
            check=True,
            capture_output=True,
        )

    def apply(self, namespace: str, config: dict[str, Any]) -> None:
        manifest = {
            "apiVersion": "tradeplane.io/v1alpha1",
            "kind": "TradingService",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": risk_spec(config, SLO_MICROS),
        }
        self.run("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def status(self, namespace: str) -> dict[str, Any]:
        body: Any = self.objects.get_namespaced_custom_object(
            "tradeplane.io", "v1alpha1", namespace, "tradingservices", NAME
        )
        return dict(body.get("status") or {})

    def scaled_to_zero(self, namespace: str) -> bool:
        """The operator set the canary Deployment to zero replicas."""
        try:
            deployment: Any = self.apps.read_namespaced_deployment(f"{NAME}-canary", namespace)
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return bool(deployment.spec.replicas == 0)

    def canary_pods(self, namespace: str, revision: str) -> int:
        """Pods of the canary revision, terminating ones included."""
        selector = f"{NAME_LABEL}={NAME},{REVISION_LABEL}={revision}"
        return len(self.core.list_namespaced_pod(namespace, label_selector=selector).items)


def wait(what: str, predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def stable_service(cluster: Cluster, rate: float, log_dir: Path) -> Iterator[tuple[str, RiskTraffic]]:
    """A namespace with its operator, revision one Ready on two running pods, and traffic."""
    namespace = f"bench-rollback-{uuid.uuid4().hex[:6]}"
    cluster.run("create", "namespace", namespace)
    ensure_secret(cluster.core, namespace)  # the session keys the services and the traffic log on with
    environment = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    with (log_dir / f"{namespace}-operator.log").open("wb") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "tradeplane.cli", "operator", "run", "-n", namespace],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    runner = PodRunner(namespace, kubeconfig=str(cluster.kubeconfig)).start()
    try:
        cluster.apply(namespace, {"maxOrderQuantity": 50_000})
        wait("revision one Ready", lambda: cluster.status(namespace).get("phase") == "Ready")
        runner.wait_running(2)
        with RiskTraffic(cluster.kubeconfig, namespace, NAME, BUNDLED_PORTS["risk"], rate=rate) as traffic:
            wait("revision one answering", lambda: traffic.answered)
            yield namespace, traffic
    finally:
        runner.stop()
        stop_process(operator, signal.SIGTERM, timeout=15)
        cluster.run("delete", "namespace", namespace, "--wait=false")


def at_zero(cluster: Cluster, namespace: str, revision: str) -> float:
    """When the canary Deployment is at zero replicas and no canary pod is left."""
    wait(
        "the canary at zero",
        lambda: cluster.scaled_to_zero(namespace) and cluster.canary_pods(namespace, revision) == 0,
        timeout=120,
    )
    return time.monotonic()


def analysis_run(cluster: Cluster, rate: float, log_dir: Path) -> tuple[float, float]:
    """(breach -> canary scaled to zero, breach -> no canary pod) for a canary slower than its SLO."""
    slow = {"maxOrderQuantity": 50_000, "latencyInjectionMicros": INJECTED_MICROS}
    canary = revision_of(slow)
    with stable_service(cluster, rate, log_dir) as (namespace, traffic):
        cluster.apply(namespace, slow)
        breach = wait("the canary's first answer", lambda: traffic.first_answer.get(canary), timeout=60)
        wait("the canary scaled to zero", lambda: cluster.scaled_to_zero(namespace), timeout=120)
        decided = time.monotonic()
        done = at_zero(cluster, namespace, canary)
        verdict = cluster.status(namespace).get("lastAnalysis") or {}
        if (verdict.get("verdict"), verdict.get("gate")) != ("Fail", "p99"):
            raise RuntimeError(f"rolled back for another reason than the p99 gate: {verdict}")
    return decided - breach, done - breach


def abort_run(cluster: Cluster, rate: float, log_dir: Path) -> float:
    """Request -> no canary pod, for a good canary aborted at its first answer."""
    good = {"maxOrderQuantity": 60_000}
    canary = revision_of(good)
    with stable_service(cluster, rate, log_dir) as (namespace, traffic):
        cluster.apply(namespace, good)
        wait("the canary's first answer", lambda: traffic.first_answer.get(canary), timeout=60)
        requested = time.monotonic()
        if tradeplane(["abort", NAME, "-n", namespace, "--kubeconfig", str(cluster.kubeconfig)]) != 0:
            raise RuntimeError("tradeplane abort failed")
        return at_zero(cluster, namespace, canary) - requested


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=150.0, help="risk checks per second over all pods")
    parser.add_argument("--logs", type=Path, default=Path("/tmp/tradeplane-bench-rollback"))
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    kubeconfig = local.up(log=lambda message: print(message, file=sys.stderr))
    os.environ["KUBECONFIG"] = str(kubeconfig)
    api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    cluster = Cluster(
        kubeconfig,
        str(toolchain.require("kubectl")),
        client.AppsV1Api(api_client),
        client.CoreV1Api(api_client),
        client.CustomObjectsApi(api_client),
    )
    cluster.run(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / "tradingservice.yaml")
    )
    rollbacks: list[tuple[float, float]] = []
    aborts: list[float] = []
    for run in range(1, args.runs + 1):
        detection, total = analysis_run(cluster, args.rate, args.logs)
        rollbacks.append((detection, total))
        print(f"run {run}: breach -> canary at zero {total:.2f} s (scaled to zero after {detection:.2f} s)")
        aborts.append(abort_run(cluster, args.rate, args.logs))
        print(f"run {run}: abort -> canary at zero {aborts[-1]:.2f} s")
    totals = [seconds for _, seconds in rollbacks]
    total, baseline = statistics.median(totals), statistics.median(aborts)
    detection = statistics.median(seconds for seconds, _ in rollbacks)
    print(
        f"\nbreach -> canary at zero, default analysis settings, {args.rate:g} checks/s: "
        f"median {total:.2f} s over {len(totals)} runs (min {min(totals):.2f}, max {max(totals):.2f}); "
        "goal <= 15 s"
    )
    print(f"  detection (breach -> canary scaled to zero): median {detection:.2f} s")
    print(
        f"  baseline, abort -> canary at zero: median {baseline:.2f} s; "
        f"rollback/abort {total / baseline:.1f}x"
    )
    print(f"command: python bench/rollout_rollback.py --runs {args.runs} --rate {args.rate:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
