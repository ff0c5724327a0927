"""What a session that leaves with many resting orders costs the sessions that stay: cancel on disconnect.

On the order path (market data, risk, execution, order; the event log on), a resting session rests
--resting passive orders, then another session offers --rate passive orders/s for --seconds (open loop,
`loadgen.run_load`). In a "leaves" run the resting session disconnects --leave-after seconds into that
load, so order cancels all its orders at the venue meanwhile; in a "stays" run, the baseline, it stays
connected. The two kinds alternate, --runs each, a fresh stack a run. Prints the other session's latency
per run (p50, p99, p99.9, max) and the medians per kind, and how long after the disconnect order's book
was empty (every cancel confirmed by the venue).

    python bench/order_disconnect.py
    python bench/order_disconnect.py --resting 50000 --rate 2000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from services_order_entry import HOST, MODES, ORDER_PATH, SETTINGS

from tradeplane_services.loadgen import LoadResult, run_load
from tradeplane_services.protocol import ExecutionReport, NewOrder, OrderType, TimeInForce, encode, layout_of
from tradeplane_services.sessions import credentials, logon
from tradeplane_services.stack import Stack

CHUNK = 1000  # resting orders sent before waiting for their answers: risk is never flooded
OTHER_SESSION_FIRST_ID = 10_000_000


def rest_orders(stack: Stack, count: int) -> socket.socket:
    """A session with `count` passive orders resting in the book, all acknowledged; still connected."""
    sock = socket.create_connection((stack.host, stack.address("order").port), timeout=30)
    logon(sock, credentials())
    plan = MODES["passive"]
    report_size = layout_of(ExecutionReport).size
    received = 0
    for first in range(0, count, CHUNK):
        frames = []
        for index in range(first, min(count, first + CHUNK)):
            account, symbol, side, quantity, price = plan.order(index)
            order = NewOrder(
                index + 1, account, symbol, side, OrderType.LIMIT, TimeInForce.DAY, quantity, price
            )
            frames.append(encode(order, index + 2))
        sock.sendall(b"".join(frames))
        while received < (first + len(frames)) * report_size:  # passive orders: one NEW report each
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("order closed the resting session")
            received += len(data)
    return sock


def one_run(workdir: Path, leaves: bool, arguments: argparse.Namespace) -> tuple[LoadResult, float | None]:
    stack = Stack(HOST, workdir, {**SETTINGS, "risk": {**SETTINGS["risk"], "maxPosition": 10**9}})
    os.environ["TRADEPLANE_KEYS_DIR"] = str(stack.keys_dir)
    try:
        stack.start(ORDER_PATH)
        stack.wait_ready(components=ORDER_PATH)
        resting = rest_orders(stack, arguments.resting)
        assert stack.status("order")["openOrders"] == arguments.resting
        time.sleep(1.0)  # past risk's duplicate window: the other session's orders repeat these
        outcome: list[LoadResult] = []
        other = threading.Thread(
            target=lambda: outcome.append(
                run_load(
                    stack.address("order"),
                    arguments.rate,
                    arguments.seconds,
                    0.0,
                    MODES["passive"],
                    first_client_order_id=OTHER_SESSION_FIRST_ID,
                )
            )
        )
        other.start()
        time.sleep(arguments.leave_after)
        emptied = None
        if leaves:
            left = time.monotonic()
            resting.close()
            while stack.status("order")["openOrders"] > arguments.rate * arguments.seconds:
                time.sleep(0.01)
            emptied = time.monotonic() - left  # the other session's orders may still rest: not counted
        other.join()
        resting.close()
        return outcome[0], emptied
    finally:
        stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resting", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="the other session's orders per second")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--leave-after", type=float, default=1.5)
    parser.add_argument("--runs", type=int, default=2)
    arguments = parser.parse_args()
    print("command: python " + shlex.join(sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    figures: dict[str, list[dict[str, float]]] = {"stays": [], "leaves": []}
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(arguments.runs):
            for kind in ("stays", "leaves"):
                result, emptied = one_run(Path(scratch) / f"{kind}-{run}", kind == "leaves", arguments)
                latency = {**result.percentiles_us, "max": result.max_us}
                figures[kind].append(latency)
                book = "" if emptied is None else f", book empty {emptied * 1000:.0f} ms after the disconnect"
                print(
                    f"  run {run + 1} {kind:<6}: other session p50 {latency['p50']:.0f}us "
                    f"p99 {latency['p99']:.0f}us "
                    f"p99.9 {latency['p99.9']:.0f}us max {latency['max']:.0f}us, answered "
                    f"{result.answered}/{result.sent}, refused {dict(result.rejects)}{book}",
                    flush=True,
                )
    print(f"medians over {arguments.runs} runs (the other session at {arguments.rate:.0f}/s):")
    for kind, runs in figures.items():
        medians = {key: statistics.median(run[key] for run in runs) for key in ("p50", "p99", "p99.9", "max")}
        print(f"  {kind:<6} " + " ".join(f"{key} {value:.0f}us" for key, value in medians.items()))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
