"""Pre-trade risk checks per second in process: one at a time, and batched through the numpy path.

Single: `RiskEngine.check` on one order, timed call by call (perf_counter_ns around each call, which adds
its own ~0.1 us), p50/p99/p99.9 from an HdrHistogram; goal p99 <= 5 us. Throughput single: checks/s of
a tight loop. Batched: `RiskEngine.check_batch` on runs of CHECK_DTYPE records (what the risk service gets
when checks queue up on its socket); goal 1M checks/s. Every order is distinct and within limits, so each
check runs every rule and books exposure; orders are released as they would be by their fills.

    python bench/services_risk.py
    python bench/services_risk.py --orders 500000 --batch 256 --batch 4096
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import statistics
import sys
import time
from typing import Any

import numpy as np

from tradeplane_services._wire import LatencyHistogram
from tradeplane_services.protocol import Reason, price_units, symbol_bytes
from tradeplane_services.risk import CHECK_DTYPE, RiskEngine
from tradeplane_services.settings import RiskSettings


def make_engine() -> RiskEngine:
    settings = RiskSettings(creditLimit=1e15, maxPosition=10**12, duplicateWindowMillis=500)
    engine = RiskEngine(settings)
    for name, price in settings.symbols.items():
        engine.set_reference(symbol_bytes(name), price_units(price))
    return engine


def orders(count: int, first: int, engine: RiskEngine) -> np.ndarray[Any, Any]:
    """Distinct orders over 1000 accounts and every symbol, priced at the reference."""
    index = np.arange(first, first + count)
    symbols = np.array(engine.symbols, dtype="S8")
    records = np.zeros(count, dtype=CHECK_DTYPE)
    records["order_id"] = index
    records["account"] = 1 + index % 1000
    records["symbol"] = symbols[index % len(symbols)]
    records["side"] = 1 + (index // len(symbols)) % 2
    records["order_type"] = 1
    records["quantity"] = 1 + (index // 2000) % 500  # (account, symbol, side, qty) repeats every 1M
    records["price"] = engine.reference[index % len(symbols)]
    return records


def single(engine: RiskEngine, records: np.ndarray[Any, Any]) -> tuple[LatencyHistogram, float, int]:
    arguments = []
    for record in records.tolist():
        order_id, account, symbol, side, kind, quantity, price = record[4:11]
        arguments.append((order_id, account, symbol.ljust(8, b"\0"), side, kind, quantity, price))
    histogram = LatencyHistogram(10**9)
    clock = time.perf_counter_ns
    check, done = engine.check, engine.on_done
    timings = []
    accepted = 0
    for order_id, account, symbol, side, kind, quantity, price in arguments:
        started = clock()
        reason = check(order_id, account, symbol, side, kind, quantity, price, started)
        timings.append(clock() - started)
        accepted += reason == Reason.OK
        done(order_id)
    histogram.record_all(timings)
    loop_started = time.perf_counter()
    now = time.perf_counter_ns()
    for order_id, account, symbol, side, kind, quantity, price in arguments:
        check(order_id + 10**9, account, symbol, side, kind, quantity + 1000, price, now)
    throughput = len(arguments) / (time.perf_counter() - loop_started)
    return histogram, throughput, accepted


def batched(engine: RiskEngine, records: np.ndarray[Any, Any], batch: int) -> tuple[float, int]:
    elapsed, accepted = 0.0, 0
    for start in range(0, len(records), batch):
        run = records[start : start + batch]
        started = time.perf_counter()
        reasons = engine.check_batch(run, time.perf_counter_ns())
        elapsed += time.perf_counter() - started
        assert reasons is not None
        accepted += int((reasons == Reason.OK).sum())
        for order_id in run["order_id"].tolist():
            engine.on_done(order_id)
    return len(records) / elapsed, accepted


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=300_000)
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 64, 1024, 8192)")
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    batches = arguments.batch or [64, 1024, 8192]
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    gc.freeze()

    percentiles, single_rates, batch_rates = [], [], {b: [] for b in batches}
    for run in range(arguments.runs):
        engine = make_engine()
        records = orders(arguments.orders, 1 + run * 10 * arguments.orders, engine)
        histogram, rate, accepted = single(engine, records)
        assert accepted == len(records), f"only {accepted} of {len(records)} accepted: the bench must pass"
        percentiles.append({p: histogram.value_at_percentile(p) / 1000 for p in (50, 99, 99.9)})
        single_rates.append(rate)
        for batch in batches:
            engine = make_engine()
            rate, accepted = batched(engine, records, batch)
            assert accepted == len(records)
            batch_rates[batch].append(rate)
        print(
            f" run {run + 1}: single p50 {percentiles[-1][50]:.2f}us p99 {percentiles[-1][99]:.2f}us "
            f"p99.9 {percentiles[-1][99.9]:.2f}us, {rate_text(single_rates[-1])}; batched "
            + ", ".join(f"{b}: {rate_text(batch_rates[b][-1])}" for b in batches),
            flush=True,
        )
    single_median = statistics.median(single_rates)
    print("medians:")
    print(
        "  single check: "
        + " ".join(f"p{p:g} {statistics.median(r[p] for r in percentiles):.2f}us" for p in (50, 99, 99.9))
        + f" (goal p99 <= 5us); {rate_text(single_median)}"
    )
    for batch in batches:
        rate = statistics.median(batch_rates[batch])
        print(f"  batched x{batch}: {rate_text(rate)} = {rate / single_median:.1f}x single (goal 1M/s)")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


def rate_text(rate: float) -> str:
    return f"{rate / 1e6:.2f}M checks/s" if rate >= 1e6 else f"{rate / 1e3:.0f}k checks/s"


if __name__ == "__main__":
    sys.exit(main())
