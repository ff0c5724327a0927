"""`tradeplane demo`: local control plane, CRD, operator, the five bundled services, a live status view.

The services run as real processes behind kwok's simulated pods (see cluster/podrunner.py), so orders
really flow order -> risk -> execution -> position while the status view shows each pod on its trading node.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tradeplane import crd
from tradeplane.cluster import local
from tradeplane.cluster.podrunner import PodRunner

NAMESPACE = "trading"
SAMPLES_DIR = crd.REPO_ROOT / "samples"


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _start_operator(kubeconfig: Path) -> subprocess.Popen[bytes]:
    log_path = local.state_dir() / "logs" / "operator.log"
    _say(f"starting the operator (log: {log_path})")
    return subprocess.Popen(
        [sys.executable, "-m", "tradeplane.cli", "operator", "run", "--namespace", NAMESPACE],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def _trading_services() -> list[dict[str, Any]]:
    listed = json.loads(local.kubectl("get", "tradingservices", "-n", NAMESPACE, "-o", "json").stdout)
    items: list[dict[str, Any]] = listed["items"]
    return items


def _all_ready(expected: int) -> bool:
    items = _trading_services()
    return len(items) == expected and all(
        (item.get("status") or {}).get("readyReplicas", 0) >= item["spec"].get("replicas", 0)
        and (item.get("status") or {}).get("phase") == "Ready"
        for item in items
    )


def _status_view(runner: PodRunner) -> str:
    status = subprocess.run(
        [sys.executable, "-m", "tradeplane.cli", "status", "-n", NAMESPACE, "--pods"],
        capture_output=True,
        text=True,
    )
    processes = sorted(
        f"  {pod.name:<34} {pod.ip:<12} pid {pod.process.pid:<7} "
        f"{'running' if pod.process.poll() is None else f'exited {pod.process.returncode}'}"
        for pod in runner.running.values()
    )
    return "\n".join(
        [
            status.stdout.rstrip() or status.stderr.rstrip(),
            "",
            "service processes (bound to pod IPs):",
            *processes,
        ]
    )


def _send_orders() -> str:
    """One round of the services' own client against the order service, through its Service address."""
    order_pods = [
        pod for pod in _pods() if pod["metadata"]["labels"].get("app.kubernetes.io/name") == "order"
    ]
    position_pods = [
        pod for pod in _pods() if pod["metadata"]["labels"].get("app.kubernetes.io/name") == "position"
    ]
    if not order_pods or not position_pods:
        return "no order or position pod yet"
    order = f"{order_pods[0]['status']['podIP']}:7001"
    position = f"{position_pods[0]['status']['podIP']}:7005"
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "tradeplane-svc"),
            "client",
            "--order",
            order,
            "--position",
            position,
            "demo",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return (result.stdout + result.stderr).strip()


def _pods() -> list[dict[str, Any]]:
    listed = json.loads(local.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json").stdout)
    return [pod for pod in listed["items"] if pod["status"].get("phase") == "Running"]


def run(args: argparse.Namespace) -> int:
    _say("starting the local control plane")
    kubeconfig = local.up(log=_say)
    os.environ["KUBECONFIG"] = str(kubeconfig)
    _say("installing the TradingService CRD")
    local.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(crd.crd()))
    local.wait_established(local.kubectl, "tradingservices.tradeplane.io")
    operator = _start_operator(kubeconfig)
    runner = PodRunner(NAMESPACE, kubeconfig=str(kubeconfig))
    try:
        samples = sorted(SAMPLES_DIR.glob("*.yaml"))
        _say(f"applying {len(samples)} sample manifests from {SAMPLES_DIR}")
        for sample in samples:
            local.kubectl("apply", "-f", str(sample))
        expected = len(_trading_services())
        runner.start()
        deadline = time.monotonic() + args.timeout
        while not _all_ready(expected):
            if operator.poll() is not None:
                _say(f"the operator exited with {operator.returncode}; see its log")
                return 1
            if time.monotonic() > deadline:
                print(_status_view(runner))
                _say(f"not every TradingService was Ready within {args.timeout:.0f}s")
                return 1
            time.sleep(1)
        runner.wait_running(sum(item["spec"]["replicas"] for item in _trading_services()), timeout=30)
        time.sleep(2)  # let the services connect to their peers before the first orders
        print(_status_view(runner))
        orders = _send_orders().splitlines()
        print("\norders through the stack (order -> risk -> execution -> position), last lines:")
        print("\n".join(orders[-12:]))
        if args.once:
            return 0
        _say("live view; Ctrl-C stops the operator and the service processes (the cluster stays up)")
        while True:
            time.sleep(args.interval)
            print("\033[2J\033[H" + _status_view(runner), flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        runner.stop()
        operator.terminate()
        operator.wait(timeout=15)


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo", help="cluster, operator, the five bundled services and a status view"
    )
    demo.add_argument(
        "--once", action="store_true", help="print the status view once everything runs, then exit"
    )
    demo.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes of the live view"
    )
    demo.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for every service to be Ready"
    )
    demo.set_defaults(handler=run)
