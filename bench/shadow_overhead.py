"""What a shadow rollout costs the orders: order entry round trip with risk's routing off, and with every
account's checks copied to a shadow risk canary.

Starts the five services (risk at v1) and a second market-data and risk (v2, the canary, refusing one of
the symbols the load trades, so half its decisions mismatch) on loopback addresses of their own, then
alternates runs at the same offered rate (`loadgen.run_load`, open loop): `off` (order holds no routing)
and `shadow` (a routing in shadow mode at 10000 basis points, renewed before each run). Prints every run,
the medians of p50 and p99, and order's comparison counters at the end (every copy compared, none left
waiting). Never fails on timing.

    python bench/shadow_overhead.py                       # 3 runs of 5 s each at 2k orders/s
    python bench/shadow_overhead.py --rate 5000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tradeplane_services.loadgen import LoadResult, default_plan, run_load
from tradeplane_services.stack import Stack

STABLE_HOST, CANARY_HOST = "127.77.221.1", "127.77.221.2"
SETTINGS = {"risk": {"creditLimit": 1e13}, "market-data": {"ticksPerSecond": 1000}}


def push(stable: Stack, canary: Stack, weight: int) -> None:
    routing = {
        "peer": "risk",
        "stableRevision": "v1",
        "canaryRevision": "v2",
        "canary": [str(canary.address("risk"))] if weight else [],
        "weightBasisPoints": weight,
        "salt": "bench/risk/v2",
        "leaseSeconds": 60,
        "mode": "shadow",
    }
    request = urllib.request.Request(stable.metrics_url("order", "/routing"), json.dumps(routing).encode())
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def shadow_counters(stable: Stack) -> dict[str, Any]:
    with urllib.request.urlopen(stable.metrics_url("order"), timeout=5) as response:
        page = response.read().decode()
    return {
        sample.labels["outcome"]: int(sample.value)
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == "tradeplane_shadow_decisions_total"
    }


def describe(label: str, result: LoadResult) -> str:
    latency = result.percentiles_us
    return (
        f"  {label:<7} offered {result.offered_rate:>6.0f}/s achieved {result.achieved_rate:>6.0f}/s "
        f"p50 {latency['p50']:>8.1f}us p99 {latency['p99']:>9.1f}us unanswered {result.unanswered}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    figures: dict[str, list[tuple[float, float]]] = {"off": [], "shadow": []}
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
        stable = Stack(STABLE_HOST, Path(scratch) / "stable", SETTINGS, revision="v1")
        canary_settings = {**SETTINGS, "risk": {**SETTINGS["risk"], "restrictedSymbols": ["AAPL"]}}
        canary = Stack(
            CANARY_HOST, Path(scratch) / "canary", canary_settings, revision="v2", keys_dir=stable.keys_dir
        )
        os.environ["TRADEPLANE_KEYS_DIR"] = str(stable.keys_dir)  # this process's clients log on
        try:
            stable.start()
            canary.start(("market-data", "risk"))
            stable.wait_ready()
            canary.wait_ready(components=("market-data", "risk"))
            time.sleep(2)  # the canary risk takes its partitions
            next_id = 1
            for run in range(arguments.runs):
                for label, weight in (("off", 0), ("shadow", 10_000)):
                    push(stable, canary, weight)
                    result = run_load(
                        stable.address("order"),
                        arguments.rate,
                        arguments.seconds,
                        plan=default_plan(crossing=False),
                        first_client_order_id=next_id,
                    )
                    next_id += int(arguments.rate * (arguments.seconds + 1)) + 1
                    print(describe(f"{label}", result) + f" (run {run + 1})", flush=True)
                    figures[label].append((result.percentiles_us["p50"], result.percentiles_us["p99"]))
            time.sleep(1)
            print(f"order's shadow comparisons: {shadow_counters(stable)}")
        finally:
            canary.stop()
            stable.stop()
    for label, runs in figures.items():
        p50 = statistics.median(p50 for p50, _ in runs)
        p99 = statistics.median(p99 for _, p99 in runs)
        print(f"median of {len(runs)} runs, {label:<7}: p50 {p50:.1f}us p99 {p99:.1f}us")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
