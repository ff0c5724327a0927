"""Operator failover: from a SIGKILL of the acting operator to the standby's first write.

Two `tradeplane operator run --lease` processes on the local control plane, the chart's lease settings
(4 s lease, 3 s renew deadline, 0.5 s retry). The first is elected and makes a TradingService Ready; the
second stands by. Then the first is SIGKILLed (it gives nothing up) and the TradingService's spec changes
at once; measured: the time until the standby holds the Lease, and until its first write (its own
tradeplane_writes_total). Prints each run and the medians.
    python bench/operator_failover.py              # 5 runs
    python bench/operator_failover.py --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

from tradeplane.api import API_VERSION, KIND
from tradeplane.cluster import local
from tradeplane.kube import ApiError, Kube
from tradeplane.leadership import LEASE_API, LEASE_KIND

SPEC: dict[str, Any] = {
    "component": "risk",
    "image": "registry.example/tradeplane-services:0.1.0",
    "replicas": 2,
    "resources": {"cpus": 2, "memory": "2Gi", "hugepages": {"pageSize": "1Gi", "amount": "1Gi"}},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def writes(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            lines = reply.read().decode().splitlines()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("tradeplane_writes_total{"))


class Operator:
    def __init__(self, kubeconfig: str, namespace: str, lease: str, name: str) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tradeplane.cli",
                "operator",
                "run",
                f"--namespace={namespace}",
                f"--lease={lease}",
                f"--lease-namespace={namespace}",
                f"--identity={name}",
                f"--metrics-port={self.metrics_port}",
            ],
            env={**os.environ, "KUBECONFIG": kubeconfig},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


async def wait_until(check: Any, timeout: float = 120, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s")
        await asyncio.sleep(interval)


def held_by(kube: Kube, namespace: str, lease: str, name: str) -> Any:
    async def check() -> bool:
        found = await kube.get(LEASE_API, LEASE_KIND, namespace, lease)
        return bool(((found or {}).get("spec") or {}).get("holderIdentity") == name)

    return check


async def one_run(kube: Kube, kubeconfig: str) -> tuple[float, float]:
    namespace = f"failover-{uuid.uuid4().hex[:6]}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    lease = "tradeplane"
    active = Operator(kubeconfig, namespace, lease, "operator-0")
    standby: Operator | None = None
    try:
        await wait_until(held_by(kube, namespace, lease, "operator-0"))
        standby = Operator(kubeconfig, namespace, lease, "operator-1")
        service = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": "risk", "namespace": namespace},
            "spec": SPEC,
        }
        await kube.create(service)

        async def ready() -> bool:
            found = await kube.get(API_VERSION, KIND, namespace, "risk")
            return ((found or {}).get("status") or {}).get("phase") == "Ready"

        await wait_until(ready)
        active.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        active.process.wait()
        await kube.patch(API_VERSION, KIND, namespace, "risk", {"spec": {"replicas": 1}})
        await wait_until(held_by(kube, namespace, lease, "operator-1"))
        elected = time.monotonic() - killed
        port = standby.metrics_port

        async def standby_wrote() -> bool:
            return await asyncio.to_thread(writes, port) > 0

        await wait_until(standby_wrote)
        return elected, time.monotonic() - killed
    finally:
        for operator in (active, standby):
            if operator is not None:
                operator.stop()
        with contextlib.suppress(ApiError):
            await kube.delete("v1", "Namespace", None, namespace)


async def bench(kubeconfig: str, runs: int) -> None:
    kube = Kube.from_environment(kubeconfig)
    try:
        elections, firsts = [], []
        for run in range(1, runs + 1):
            elected, first_write = await one_run(kube, kubeconfig)
            elections.append(elected)
            firsts.append(first_write)
            print(
                f"run {run}: standby elected {elected:.2f}s, "
                f"first write {first_write:.2f}s after the SIGKILL",
                flush=True,
            )
        print(
            f"\nSIGKILL of the acting operator, lease 4s / renew deadline 3s / retry 0.5s, {runs} run(s):\n"
            f"  standby holds the Lease:   median {statistics.median(elections):.2f}s\n"
            f"  standby's first write:     median {statistics.median(firsts):.2f}s\n"
            f"  load average:              {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
            f"  command:                   python bench/operator_failover.py --runs {runs}"
        )
    finally:
        await kube.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    kubeconfig = local.cluster_with_crd(log=lambda message: print(message, file=sys.stderr))
    asyncio.run(bench(kubeconfig, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
