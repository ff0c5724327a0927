"""End to end after a million orders: positions equal the sum of fills, also across a kill -9 of position
or of the event log's nats-server.

Runs the stack (with its nats-server, sync_interval: always), sends --orders orders open-loop at --rate as
crossing pairs (every accepted pair trades), and kill -9s --victim part-way, restarting it --down seconds
later. Execution reports a trade only once the event log has its fills (retrying through an outage);
position is a projection of the log (snapshot + tail) and ignores fills it has applied. At the end the
positions position reports are compared, per account and symbol, with the net of the trade reports the
client received. Nothing acknowledged may be lost: any difference is printed and fails the run.

    python bench/services_end_to_end.py                            # 1M orders at 20k/s
    python bench/services_end_to_end.py --orders 200000 --rate 10000 --kill-at 0.3 --victim nats-server
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from tradeplane_services.client import positions
from tradeplane_services.loadgen import run_load
from tradeplane_services.stack import Stack

HOST = "127.77.252.1"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of the run when the victim dies")
    parser.add_argument("--down", type=float, default=2.0, help="seconds the victim stays dead")
    parser.add_argument("--victim", default="position", choices=["position", "nats-server"])
    arguments = parser.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    seconds = arguments.orders / arguments.rate

    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
        settings = {
            "risk": {"creditLimit": 1e13, "maxPosition": 10**9},
            "market-data": {"ticksPerSecond": 1000},
        }
        stack = Stack(HOST, Path(scratch), settings)
        os.environ["TRADEPLANE_KEYS_DIR"] = str(stack.keys_dir)  # this process's clients log on
        stack.start()
        stack.wait_ready()
        events: list[str] = []

        def kill_and_restart() -> None:
            time.sleep(seconds * arguments.kill_at)
            fills_before = stack.status("execution")["fills"]
            if arguments.victim == "position":
                stack.kill("position", signal.SIGKILL)
            else:
                stack.events.kill(0)
            events.append(f"kill -9 {arguments.victim} at {time.strftime('%X')} after ~{fills_before} fills")
            time.sleep(arguments.down)
            restarted = time.monotonic()
            if arguments.victim == "position":
                stack.start_one("position")
                stack.wait_ready(components=("position",))
            else:
                stack.events.start_one(0)
                stack.events.wait_ready()
            took = time.monotonic() - restarted
            events.append(f"{arguments.victim} back at {time.strftime('%X')}, ready after {took:.2f} s")

        killer = threading.Thread(target=kill_and_restart)
        try:
            started = time.monotonic()
            killer.start()
            result = run_load(
                stack.address("order"), arguments.rate, seconds, warmup=0, drain_seconds=60, settle_seconds=2
            )
            killer.join()
            elapsed = time.monotonic() - started
            for event in events:
                print("  " + event)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (
                stack.status("execution")["unstoredFills"]
                or stack.status("position")["fills"] < stack.status("execution")["fills"]
            ):
                time.sleep(0.2)
            execution = stack.status("execution")
            position = stack.status("position")
            booked = {
                (report.account, report.symbol): report.quantity
                for report in positions(stack.address("position"), 0)
            }
        finally:
            stack.stop()

    expected = {key: quantity for key, quantity in result.net_fills.items()}
    keys = set(expected) | set(booked)
    differences = {
        k: (expected.get(k, 0), booked.get(k, 0)) for k in keys if expected.get(k, 0) != booked.get(k, 0)
    }
    print(
        f"  {result.sent} orders in {elapsed:.0f} s ({result.achieved_rate:.0f}/s acknowledged), "
        f"rejects {dict(result.rejects)}, unanswered {result.unanswered}"
    )
    print(
        f"  trade reports to the client: {result.trades}; fills made by execution: {execution['fills']}, "
        f"not stored at the end: {execution['unstoredFills']}; fills in position: {position['fills']} "
        f"(event log sequence {position['sequence']}, snapshot at {position['snapshotSequence']})"
    )
    print(
        f"  positions compared: {len(keys)} (account, symbol) cells; differences: {len(differences)}"
        + (
            f" e.g. {sorted(differences.items())[:5]}"
            if differences
            else " -- positions equal the sum of fills"
        )
    )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 1 if differences or execution["fills"] != position["fills"] else 0


if __name__ == "__main__":
    sys.exit(main())
