"""Order entry round trip (client -> order -> risk -> ack) under open-loop load, beside a bare echo server.

Two kinds of load: passive orders (1% off the market: they rest, the path measured is order entry alone)
and crossing orders (pairs at the same price: every order also trades, so fills flow to the client and
risk as well). Starts the order path (market data, risk, execution, order; --whole-stack adds position
and analytics) and the echo server (`tradeplane-svc echo`: the same loopback TCP, uvloop and asyncio
protocol, no work) on a loopback address of their own, then alternates runs at the same offered rate
against each: latency from each order's intended send time to its acknowledgement, HdrHistogram. Prints
every run, the medians, and the ratio order p99 / echo p99 (goal <= 3 at 10k/s; 1k/s shows the
unsaturated path). Then steps the offered rate up to find the highest rate the stack sustains: every
order acknowledged (none refused, e.g. for a risk timeout), at least 98% of the offered rate achieved,
and the median latency under --sustain-p50-ms. The median, not p99: past saturation the queue grows and
the median with it, while a single scheduling stall of a shared machine moves p99 but not the median.
Every run starts once order's book and risk's open orders are empty: passive orders rest, a finished
run's are canceled when its session ends (cancel on disconnect), and those cancels and their releases
would otherwise land on the start of the next run.

    python bench/services_order_entry.py           # 1k/s and 10k/s, passive and crossing, 3 runs of 5 s
    python bench/services_order_entry.py --rate 10000 --mode passive --runs 5 --seconds 10
    python bench/services_order_entry.py --skip-ramp
    python bench/services_order_entry.py --whole-stack  # position and analytics on the same two cores
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tradeplane_services.config import Address
from tradeplane_services.loadgen import LoadResult, default_plan, run_load
from tradeplane_services.stack import START_ORDER, Stack

HOST = "127.77.250.1"
ECHO_PORT = 7000
RAMP = (
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    30_000,
    40_000,
    50_000,
    60_000,
    80_000,
    100_000,
    120_000,
    150_000,
    200_000,
)
MODES = {
    # Orders 1% off the market rest in the book: the order entry path alone.
    "passive": default_plan(crossing=False),
    # Buy and sell at the same price: every order also trades (fills to client, risk and position).
    "crossing": default_plan(crossing=True),
}
# The order path and the price source risk's collar needs. Position and analytics read the log beside it
# (on other nodes in a cluster); --whole-stack puts them on these two cores too.
ORDER_PATH = ("market-data", "risk", "execution", "order")
SETTINGS = {
    # Generated load is spread over 100 accounts; lift credit so long runs never reach it.
    "risk": {"creditLimit": 1e13},
    "market-data": {"ticksPerSecond": 1000},
}


def describe(label: str, result: LoadResult) -> str:
    latency = result.percentiles_us
    return (
        f"  {label:<6} offered {result.offered_rate:>7.0f}/s achieved {result.achieved_rate:>7.0f}/s "
        f"p50 {latency['p50']:>8.1f}us p99 {latency['p99']:>8.1f}us p99.9 {latency['p99.9']:>8.1f}us "
        f"max {result.max_us:>9.1f}us unanswered {result.unanswered} rejects {dict(result.rejects)}"
    )


def settle(stack: Stack) -> None:
    """Wait until the orders the previous run left resting are canceled at the venue (cancel on
    disconnect) and their reservations released in risk, and a moment more: a run that starts while
    thousands of cancels are under way measures them, not itself."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        stack.status("order")["openOrders"] or stack.status("risk")["openOrders"]
    ):
        time.sleep(0.05)
    time.sleep(0.5)


def compare_with_echo(
    stack: Stack, rate: float, mode: str, arguments: argparse.Namespace, next_id: int
) -> int:
    """Alternate echo and order runs at `rate`; print them, the medians and the p99 ratio."""
    pairs: list[tuple[LoadResult, LoadResult]] = []
    print(f"order entry round trip at {rate:.0f}/s offered, {mode} orders, {arguments.seconds:.0f} s a run:")
    for run in range(arguments.runs):
        settle(stack)
        echo_result = run_load(Address(HOST, ECHO_PORT), rate, arguments.seconds, arguments.warmup, echo=True)
        order_result = run_load(
            stack.address("order"),
            rate,
            arguments.seconds,
            arguments.warmup,
            MODES[mode],
            first_client_order_id=next_id,
        )
        next_id += order_result.sent
        pairs.append((echo_result, order_result))
        print(f" run {run + 1}")
        print(describe("echo", echo_result))
        print(describe("order", order_result), flush=True)
    ratios = [o.percentiles_us["p99"] / e.percentiles_us["p99"] for e, o in pairs]
    print(" medians:")
    for label, index in (("echo", 0), ("order", 1)):
        values = {
            key: statistics.median(pair[index].percentiles_us[key] for pair in pairs)
            for key in ("p50", "p99", "p99.9")
        }
        print(f"  {label:<6} " + " ".join(f"{k} {v:.1f}us" for k, v in values.items()))
    runs = ", ".join(f"{r:.2f}" for r in ratios)
    print(
        f"  order p99 / echo p99 at {rate:.0f}/s, {mode}: {statistics.median(ratios):.2f} "
        f"(runs: {runs}; goal <= 3)"
    )
    return next_id


def highest_sustained(stack: Stack, mode: str, arguments: argparse.Namespace, next_id: int) -> int:
    print(
        f"highest sustained rate, {mode} orders ({arguments.ramp_seconds:.0f} s steps, "
        f"p50 < {arguments.sustain_p50_ms} ms, >= 98% achieved, all acknowledged):"
    )
    sustained = 0
    for rate in RAMP:
        settle(stack)
        result = run_load(
            stack.address("order"),
            rate,
            arguments.ramp_seconds,
            1.0,
            MODES[mode],
            first_client_order_id=next_id,
        )
        next_id += result.sent
        ok = (
            result.unanswered == 0
            and not result.rejects
            and result.achieved_rate >= 0.98 * rate
            and result.percentiles_us["p50"] < arguments.sustain_p50_ms * 1000
        )
        print(describe("order", result) + ("  sustained" if ok else "  NOT sustained"), flush=True)
        if not ok:
            break
        sustained = rate
    print(f"  highest sustained, {mode}: {sustained}/s (design target 100000/s)")
    return next_id


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=float, action="append", help="offered orders/s (default 1000 and 10000)"
    )
    parser.add_argument("--mode", choices=list(MODES), action="append", help="default: passive and crossing")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ramp-seconds", type=float, default=3.0)
    parser.add_argument("--sustain-p50-ms", type=float, default=5.0)
    parser.add_argument("--skip-ramp", action="store_true")
    parser.add_argument(
        "--whole-stack", action="store_true", help="position and analytics too, beside the order path"
    )
    arguments = parser.parse_args()
    modes = arguments.mode or list(MODES)
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")

    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
        stack = Stack(HOST, Path(scratch), SETTINGS)
        os.environ["TRADEPLANE_KEYS_DIR"] = str(stack.keys_dir)  # this process's clients log on
        echo = subprocess.Popen(
            [sys.executable, "-m", "tradeplane_services", "echo", "--bind", HOST, "--port", str(ECHO_PORT)],
            stdout=subprocess.DEVNULL,
        )
        try:
            components = START_ORDER if arguments.whole_stack else ORDER_PATH
            print(f"components: the event log, {', '.join(components)}", flush=True)
            stack.start(components)
            stack.wait_ready(components=components)
            time.sleep(0.5)
            next_id = 1
            for rate in arguments.rate or [1_000, 10_000]:
                for mode in modes:
                    next_id = compare_with_echo(stack, rate, mode, arguments, next_id)
            if not arguments.skip_ramp:
                for mode in modes:
                    next_id = highest_sustained(stack, mode, arguments, next_id)
        finally:
            stack.stop()
            echo.terminate()
            echo.wait(10)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
