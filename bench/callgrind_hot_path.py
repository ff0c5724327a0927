"""Instructions per order on the execution and order services' hot paths, counted by valgrind's callgrind.

What one order costs the execution service besides the wire: the venue's submit (orders in crossing
pairs, so every second one trades: a NEW, then a NEW and two TRADEs) and recording its latency
(RequestMetrics.record); and what it costs the order service's OrderManager (I/O that does nothing): the
new order, risk's OK (route and ack), one fill for all of it, the sweep of its risk deadline. Each
workload runs once under `valgrind --tool=callgrind`, counting only inside functools.reduce, which drives
the measured orders after a warm-up: the counts are exact and the same from run to run on this noisy
machine, unlike times. The loop's own cost (reduce calling an empty Python step) is measured the same way
and subtracted.

Usage: python bench/callgrind_hot_path.py [--orders 20000]
Needs valgrind (Debian: apt-get install -y valgrind) and an interpreter with its symbols
(functools_reduce), as pyenv and Debian builds have.

Measured on 2 cores (load average 12-16 from other work; the counts do not depend on it):
  before (commit 72cc4f6, matching.py's book and RequestMetrics' bisect histogram in Python), this script
  against that commit's services (git worktree add /tmp/before 72cc4f6, this build's _wire module copied
  into it; PYTHONPATH=/tmp/before/services python bench/callgrind_hot_path.py):
    venue submit 25,952 instructions per order, latency record 4,346
  after (core/src/matching.rs, core/src/histogram.rs; python bench/callgrind_hot_path.py):
    venue submit 4,610 instructions per order (5.6x fewer), latency record 2,629 (1.7x fewer)
  the order service's lifecycle (new order, risk OK with route and ack, one fill, the deadline swept; its
  latency record included), python bench/callgrind_hot_path.py:
    before (commit f11e7d8, OrderManager's state and rules in Python): 42,786 instructions per order
    after (core/src/orders.rs's OrderBook, OrderManager sending its outcomes): 26,348 (1.6x fewer)
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKLOADS = ("loop", "venue", "latency", "order", "order_runs")
WARMUP_ORDERS = 2000
RUN = 10  # orders per read in the order_runs workload: a FrameRun of NewOrders, then one of RiskResults


def workload(name: str, orders: int) -> None:
    """Runs `orders` measured orders of one workload (inside valgrind: only functools.reduce counts)."""
    from prometheus_client import CollectorRegistry

    from tradeplane_services.matching import MatchingEngine
    from tradeplane_services.order import OrderManager, Session
    from tradeplane_services.protocol import (
        ExecType,
        NewOrder,
        OrderType,
        Reason,
        RiskResult,
        Side,
        TimeInForce,
        VenueReport,
        encode,
        price_units,
        symbol_bytes,
    )
    from tradeplane_services.runtime import RequestMetrics

    venue, owner = MatchingEngine(), object()
    metrics = RequestMetrics(CollectorRegistry(), "bench", "bench")
    symbol, price = symbol_bytes("AAPL"), price_units(190)
    sides = (int(Side.BUY), int(Side.SELL))
    limit, day = int(OrderType.LIMIT), int(TimeInForce.DAY)
    submit, record, clock = venue.submit, metrics.record, time.perf_counter_ns

    def loop(state: int, order_id: int) -> int:
        return state

    def venue_step(state: int, order_id: int) -> int:
        submit(owner, order_id, 1, symbol, sides[order_id & 1], limit, day, 100, price)
        return state

    def latency_step(state: int, order_id: int) -> int:
        record(clock())
        return state

    # The order service's lifecycle with I/O that does nothing: a new order, risk's OK (routed, acked),
    # one fill for all of it, the risk deadline swept. The messages are decoded beforehand, as the wire's
    # cost is not the manager's. With no risk timeout the sweep drops the order's deadline at once.
    manager = OrderManager(
        lambda session, report: None,
        lambda message, account: 0,
        lambda message: True,
        RequestMetrics(CollectorRegistry(), "bench", "bench"),
        risk_timeout_ns=0,
        id_prefix=0,
    )
    session = Session(None)
    new_order, risk_result, venue_report = manager.new_order, manager.risk_result, manager.venue_report
    expire = manager.expire_risk_checks
    total = WARMUP_ORDERS + orders
    news = [NewOrder(i, 1, symbol, sides[i & 1], limit, day, 100, price) for i in range(total)]
    # Order ids count up from 1 with a zero prefix.
    oks = [RiskResult(i + 1, 0) for i in range(total)]
    fills = [VenueReport(i + 1, int(ExecType.TRADE), 0, 100, price, 0) for i in range(total)]

    def order_step(state: int, index: int) -> int:
        new_order(session, news[index], index)
        risk_result(oks[index])
        venue_report(fills[index])
        expire(index)
        return state

    # The same lifecycle as the services take it under load: RUN orders' frames from one read decided in
    # one call (OrderService.on_run), their RiskResults likewise (on_risk_results), fills one by one.
    new_orders, risk_results = manager.new_orders, manager.risk_results
    unsent = int(Reason.RISK_UNAVAILABLE)
    new_runs = [b"".join(encode(order) for order in news[at : at + RUN]) for at in range(0, total, RUN)]
    ok_runs = [b"".join(encode(ok) for ok in oks[at : at + RUN]) for at in range(0, total, RUN)]

    def order_runs_step(state: int, run: int) -> int:
        new_orders(session, new_runs[run], run, [0], unsent)
        risk_results(ok_runs[run])
        for index in range(run * RUN, run * RUN + RUN):
            venue_report(fills[index])
        expire(run)
        return state

    steps = {"loop": loop, "venue": venue_step, "latency": latency_step, "order": order_step}
    step = steps.get(name, order_runs_step)
    per_step = RUN if name == "order_runs" else 1
    for index in range(WARMUP_ORDERS // per_step):
        step(0, index)
    functools.reduce(step, range(WARMUP_ORDERS // per_step, (WARMUP_ORDERS + orders) // per_step), 0)


def instructions(name: str, orders: int, output: Path) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
        f"--callgrind-out-file={output}",
        sys.executable, __file__, "--workload", name, "--orders", str(orders),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    summary = re.search(r"^summary: (\d+)", output.read_text(), re.MULTILINE)
    if summary is None or int(summary.group(1)) == 0:
        raise SystemExit(f"callgrind counted nothing in functools_reduce: {shlex.join(command)}")
    return int(summary.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.workload:
        workload(arguments.workload, arguments.orders)
        return 0
    import tradeplane_services.matching

    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"services from {Path(tradeplane_services.matching.__file__).parent}")
    with tempfile.TemporaryDirectory() as directory:
        counts: dict[str, Any] = {
            name: instructions(name, arguments.orders, Path(directory) / name) for name in WORKLOADS
        }
    # The loop's cost is per step, and a step of order_runs takes RUN orders.
    steps = {name: arguments.orders // (RUN if name == "order_runs" else 1) for name in WORKLOADS}
    loop_step = counts["loop"] / arguments.orders
    per_order = {name: (counts[name] - loop_step * steps[name]) / arguments.orders for name in WORKLOADS}
    print(f"loop overhead     {counts['loop'] / arguments.orders:>9,.0f} instructions per order (subtracted)")
    print(f"venue submit      {per_order['venue']:>9,.0f} instructions per order")
    print(f"latency record    {per_order['latency']:>9,.0f} instructions per order")
    print(f"order lifecycle   {per_order['order']:>9,.0f} instructions per order, a message at a time")
    print(f"                  {per_order['order_runs']:>9,.0f} instructions per order, {RUN} orders a read")
    return 0


if __name__ == "__main__":
    sys.exit(main())
