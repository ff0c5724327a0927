"""200 TradingServices applied at once: time until all are Ready, against a client creating the same children.

Both sides run on the same local control plane in the same run, alternately, each in a fresh namespace on
a pool of kwok nodes made for the benchmark (so the bundled trading pool's size is not the limit):

- operator: `tradeplane operator run` as a process; all TradingServices created at once; done when every
  one reports phase Ready (its pods scheduled, running and ready);
- direct: the same child objects (revision, ConfigMap, Deployment, Service, PDB per service) created by a
  plain asyncio client with the same concurrency; done when every Deployment has all replicas ready.

Prints each run, the medians, the ratio operator/direct (goal: <= 2) and the operator's peak RSS.
    python bench/operator_apply.py                 # 200 services x 2 replicas, 3 runs each
    python bench/operator_apply.py --services 50 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tradeplane import naming, rendering
from tradeplane.api import API_VERSION, KIND, TradingServiceSpec
from tradeplane.cluster import local
from tradeplane.kube import ApiError, Kube
from tradeplane.revision import template_revision

POOL = "bench"
POOL_NODES = 25
CONCURRENCY = 32
SPEC: dict[str, Any] = {
    "component": "execution",
    "image": "registry.example/tradeplane-services:0.1.0",
    "replicas": 2,
    "resources": {"cpus": 1, "memory": "1Gi", "hugepages": {"pageSize": "1Gi", "amount": "1Gi"}},
    "placement": {"pool": POOL},
}


def bench_nodes() -> list[dict[str, Any]]:
    pool = {
        "count": POOL_NODES,
        "namePrefix": "bench",
        "podCIDRPrefix": "127.9",
        "labels": {"tradeplane.io/pool": POOL},
        "taints": [{"key": "tradeplane.io/pool", "value": POOL, "effect": "NoSchedule"}],
        "capacity": {"cpu": "64", "memory": "256Gi", "hugepages-1Gi": "64Gi", "pods": "110"},
    }
    return list(local.node_manifests({POOL: pool}))


async def gather_limited(jobs: list[Any], limit: int = CONCURRENCY) -> None:
    slots = asyncio.Semaphore(limit)

    async def run(job: Any) -> None:
        async with slots:
            await job

    await asyncio.gather(*(run(job) for job in jobs))


async def make_namespace(kube: Kube, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


async def drop_namespace(kube: Kube, name: str) -> None:
    await kube.delete("v1", "Namespace", None, name)
    while await kube.get("v1", "Namespace", None, name) is not None:
        await asyncio.sleep(1)


def service_names(count: int) -> list[str]:
    return [f"svc-{index:03d}" for index in range(count)]


async def wait_until(check: Any, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("not done within the timeout")
        await asyncio.sleep(0.25)


async def run_operator(kube: Kube, kubeconfig: str, count: int) -> tuple[float, int, float]:
    """Seconds to all Ready, the operator's peak RSS in bytes, and its writes."""
    namespace = await make_namespace(kube, "bench-op")
    metrics_port = 18300
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tradeplane.cli",
            "operator",
            "run",
            f"--namespace={namespace}",
            f"--metrics-port={metrics_port}",
        ],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(4)  # kopf starts its watches
        manifests = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": name, "namespace": namespace},
                "spec": SPEC,
            }
            for name in service_names(count)
        ]
        started = time.monotonic()
        await gather_limited([kube.create(manifest) for manifest in manifests])

        async def ready() -> bool:
            items = await kube.list(API_VERSION, KIND, namespace)
            return sum(item.get("status", {}).get("phase") == "Ready" for item in items) == count

        await wait_until(ready)
        elapsed = time.monotonic() - started
        peak = _peak_rss(process.pid)
        writes = _metric(metrics_port, "tradeplane_writes_total")
    finally:
        process.terminate()
        process.wait(timeout=30)
    await drop_namespace(kube, namespace)
    return elapsed, peak, writes


async def run_direct(kube: Kube, count: int) -> float:
    namespace = await make_namespace(kube, "bench-direct")
    spec = TradingServiceSpec.model_validate(SPEC)
    revision = template_revision(spec)
    children = [
        child
        for name in service_names(count)
        for child in rendering.stable_children(
            naming.Owner(name, namespace), spec, revision, monitoring=False
        )
    ]
    started = time.monotonic()
    await gather_limited([kube.create(child) for child in children])

    async def ready() -> bool:
        deployments = await kube.list("apps/v1", "Deployment", namespace)
        done = sum(d.get("status", {}).get("readyReplicas", 0) == d["spec"]["replicas"] for d in deployments)
        return done == count

    await wait_until(ready)
    elapsed = time.monotonic() - started
    await drop_namespace(kube, namespace)
    return elapsed


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


async def bench(kubeconfig: str, count: int, runs: int) -> None:
    kube = Kube.from_environment(kubeconfig, max_connections=CONCURRENCY)
    nodes = bench_nodes()
    try:
        for node in nodes:
            try:
                await kube.create(node)
            except ApiError as error:
                if not error.conflict:
                    raise
        operator_times, direct_times, peaks = [], [], []
        for run in range(1, runs + 1):
            direct = await run_direct(kube, count)
            elapsed, peak, writes = await run_operator(kube, kubeconfig, count)
            direct_times.append(direct)
            operator_times.append(elapsed)
            peaks.append(peak)
            print(
                f"run {run}: operator {elapsed:.1f}s ({writes:.0f} writes), direct {direct:.1f}s, "
                f"ratio {elapsed / direct:.2f}, operator peak RSS {peak / 2**20:.0f} MiB",
                flush=True,
            )
        operator_median, direct_median = statistics.median(operator_times), statistics.median(direct_times)
        print(
            f"\n{count} TradingServices x {SPEC['replicas']} replicas on {POOL_NODES} kwok nodes, "
            f"{runs} run(s):\n"
            f"  operator, all Ready:         median {operator_median:.1f}s\n"
            f"  direct client, all ready:    median {direct_median:.1f}s\n"
            f"  ratio operator/direct:       {operator_median / direct_median:.2f} (goal <= 2)\n"
            f"  operator peak RSS:           {max(peaks) / 2**20:.0f} MiB"
        )
    finally:
        for node in nodes:
            await kube.delete("v1", "Node", None, node["metadata"]["name"])
        await kube.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    kubeconfig = local.cluster_with_crd(log=lambda message: print(message, file=sys.stderr))
    asyncio.run(bench(kubeconfig, args.services, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
