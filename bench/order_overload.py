"""Order entry past saturation: what the orders risk accepted waited, and how fast the rest heard "no".

Offers --rate passive orders/s (default 200k: past the 150k/s the order path sustained on two shared
cores) for --seconds against the order path (market data, risk, execution, order; the event log on),
once per value of order's maxChecksInFlight in --limits, alternating, --runs times each, a fresh stack a
run.
The largest default limit (one billion) is the path without the bound: every order queues for risk, and
those risk cannot answer within riskTimeoutMillis are refused after it. Prints each run (achieved rate,
latency of the accepted orders and of all answers, refusals by reason) and the medians per limit.

    python bench/order_overload.py
    python bench/order_overload.py --rate 80000 --limits 1000000000,2048 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from services_order_entry import HOST, MODES, ORDER_PATH, SETTINGS

from tradeplane_services.loadgen import LoadResult, run_load
from tradeplane_services.stack import Stack


def one_run(workdir: Path, limit: int, rate: float, seconds: float) -> LoadResult:
    settings = {**SETTINGS, "order": {"maxChecksInFlight": limit}}
    stack = Stack(HOST, workdir, settings)
    os.environ["TRADEPLANE_KEYS_DIR"] = str(stack.keys_dir)
    try:
        stack.start(ORDER_PATH)
        stack.wait_ready(components=ORDER_PATH)
        return run_load(stack.address("order"), rate, seconds, 1.0, MODES["passive"])
    finally:
        stack.stop()


def describe(limit: int, result: LoadResult) -> str:
    accepted, every = result.accepted_percentiles_us, result.percentiles_us
    refused = sum(result.rejects.values())
    waited = (
        f"p50 {accepted['p50'] / 1000:>7.2f} ms p99 {accepted['p99'] / 1000:>7.2f} ms"
        if accepted["p50"]
        else "none after the warm-up"
    )
    return (
        f"  limit {limit:>10}: achieved {result.achieved_rate:>7.0f}/s,"
        f" accepted {result.answered - refused:>7} {waited};"
        f" all answers p50 {every['p50'] / 1000:>7.2f} ms p99 {every['p99'] / 1000:>7.2f} ms;"
        f" unanswered {result.unanswered}; refused {dict(result.rejects)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200_000, help="offered orders per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--limits",
        default="1000000000,4096,1024,256",
        help="order's maxChecksInFlight values, comma-separated",
    )
    arguments = parser.parse_args()
    limits = [int(value) for value in arguments.limits.split(",")]
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    results: dict[int, list[LoadResult]] = {limit: [] for limit in limits}
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
        for run in range(arguments.runs):
            for limit in limits:
                result = one_run(
                    Path(scratch) / f"run-{run}-{limit}", limit, arguments.rate, arguments.seconds
                )
                results[limit].append(result)
                print(describe(limit, result), flush=True)
    print(f"medians of {arguments.runs} runs at {arguments.rate:.0f}/s offered:")
    for limit, runs in results.items():
        refused = [sum(run.rejects.values()) for run in runs]
        accepted = [run.answered - count for run, count in zip(runs, refused, strict=True)]
        # Runs where every order accepted after the warm-up timed out have no latency to take a median of.
        waited = [run.accepted_percentiles_us for run in runs if run.accepted_percentiles_us["p50"]]
        latency = (
            f"their p50 {statistics.median(a['p50'] for a in waited) / 1000:.2f} ms"
            f" p99 {statistics.median(a['p99'] for a in waited) / 1000:.2f} ms ({len(waited)} runs)"
            if waited
            else "none accepted after the warm-up"
        )
        print(
            f"  limit {limit:>10}: achieved {statistics.median(run.achieved_rate for run in runs):>7.0f}/s,"
            f" accepted {statistics.median(accepted):.0f},"
            f" {latency}, refused {statistics.median(refused):.0f} of {runs[0].sent}"
        )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
