"""Pre-trade risk checks per second in process, on one core: one at a time, and batched.

Single: `RiskEngine.check` (compiled, core/src/risk.rs) on one order, timed call by call
(perf_counter_ns around each call, which adds its own ~0.1 us), p50/p99/p99.9 from an HdrHistogram;
goal p99 <= 2 us. Throughput single: checks/s of a tight loop. Batched: `RiskEngine.check_batch` on runs
of RiskCheck records as bytes (what the risk service gets when checks queue up on its socket); goal 2M
checks/s. Every order is distinct and within limits, so each check runs every rule and books exposure;
orders are released as they would be by their fills.

Baseline in the same run: the same calls with the kill switch HALTED, refused by the first rule, so
they time what a call costs before any rule runs (argument conversion, the call into the extension, the
clock); the ratios put the checks against it.

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
from tradeplane_services.protocol import KillSwitchState, Reason, price_units, symbol_bytes
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
    records["price"] = np.array(engine.reference)[index % len(symbols)]
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
    runs = [
        (records[start : start + batch].tobytes(), records["order_id"][start : start + batch].tolist())
        for start in range(0, len(records), batch)
    ]
    elapsed, accepted = 0.0, 0
    for data, order_ids in runs:
        started = time.perf_counter()
        reasons = engine.check_batch(data, time.perf_counter_ns())
        elapsed += time.perf_counter() - started
        assert reasons is not None
        accepted += int((reasons == Reason.OK).sum())
        for order_id in order_ids:
            engine.on_done(order_id)
    return len(records) / elapsed, accepted


def halted(engine: RiskEngine) -> RiskEngine:
    engine.kill_switch = KillSwitchState.HALTED
    return engine


PERCENTILES = (50, 99, 99.9)


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

    # Per measure ("check", "baseline"): latency percentiles, single rates, batched rates by size.
    percentiles: dict[str, list[dict[float, float]]] = {"check": [], "baseline": []}
    single_rates: dict[str, list[float]] = {"check": [], "baseline": []}
    batch_rates: dict[str, dict[int, list[float]]] = {m: {b: [] for b in batches} for m in single_rates}
    for run in range(arguments.runs):
        records = orders(arguments.orders, 1 + run * 10 * arguments.orders, make_engine())
        for measure, engine_of in (("baseline", halted), ("check", lambda engine: engine)):
            histogram, rate, accepted = single(engine_of(make_engine()), records)
            expected = 0 if measure == "baseline" else len(records)
            assert accepted == expected, f"{accepted} of {len(records)} accepted: the bench must pass"
            percentiles[measure].append({p: histogram.value_at_percentile(p) / 1000 for p in PERCENTILES})
            single_rates[measure].append(rate)
            for batch in batches:
                rate, accepted = batched(engine_of(make_engine()), records, batch)
                assert accepted == expected
                batch_rates[measure][batch].append(rate)
            print(
                f" run {run + 1} {measure:>8}: single "
                + " ".join(f"p{p:g} {percentiles[measure][-1][p]:.2f}us" for p in PERCENTILES)
                + f", {rate_text(single_rates[measure][-1])}; batched "
                + ", ".join(f"{b}: {rate_text(batch_rates[measure][b][-1])}" for b in batches),
                flush=True,
            )
    print("medians (baseline: the same calls refused by the first rule, the kill switch):")
    single_median = {m: statistics.median(rates) for m, rates in single_rates.items()}
    for measure, goal in (("check", " (goal p99 <= 2us)"), ("baseline", "")):
        print(
            f"  single {measure}: "
            + " ".join(
                f"p{p:g} {statistics.median(r[p] for r in percentiles[measure]):.2f}us" for p in PERCENTILES
            )
            + f"{goal}; {rate_text(single_median[measure])}"
        )
    print(f"  single check / baseline throughput: {single_median['check'] / single_median['baseline']:.2f}")
    for batch in batches:
        rate = statistics.median(batch_rates["check"][batch])
        baseline = statistics.median(batch_rates["baseline"][batch])
        print(
            f"  batched x{batch}: {rate_text(rate)} = {rate / single_median['check']:.1f}x single check, "
            f"{rate / baseline:.2f} of the baseline's {rate_text(baseline)} (goal 2M/s)"
        )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


def rate_text(rate: float) -> str:
    return f"{rate / 1e6:.2f}M checks/s" if rate >= 1e6 else f"{rate / 1e3:.0f}k checks/s"


if __name__ == "__main__":
    sys.exit(main())
