"""Analytics store: tick inserts per second, query latencies, bytes on disk per million ticks.

    .venv/bin/python bench/analytics.py [--ticks 100000000] [--batch 1000000] [--fills 1000000] [--dir DIR]

Generates ticks (8 symbols, a random walk, a tick every 10 us) and inserts them in batches the way the
analytics service does (the raw 48-byte wire ticks, each batch with its deduplication token), timed per
table: `market_ticks` (the seed's schema) alone, then `market_quotes`; then times the 1-minute OHLCV bars
of one symbol over the whole set and one account's positions and realized PnL rebuilt from generated
fills. Prints figures, never fails on them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tradeplane_services.analytics import positions_at
from tradeplane_services.protocol import TICK_DTYPE, symbol_bytes
from tradeplane_services.tickstore import TICK_TABLES, ChdbStore, ohlcv, render_schema

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "JPM", "TSLA"]
START_NS = 1_764_000_000_000_000_000


def generated_ticks(first: int, count: int, random: np.random.Generator) -> np.ndarray:
    index = np.arange(first, first + count)
    ticks = np.empty(count, dtype=TICK_DTYPE)
    names = np.array([symbol_bytes(name) for name in SYMBOLS], dtype="S8")
    ticks["symbol"] = names[index % len(SYMBOLS)]
    last = 1_900_000 + np.cumsum(random.integers(-100, 101, count)) % 50_000
    ticks["last_price"] = last
    ticks["bid_price"] = last - 100
    ticks["ask_price"] = last + 100
    ticks["bid_quantity"] = random.integers(1, 10, count) * 100
    ticks["ask_quantity"] = random.integers(1, 10, count) * 100
    ticks["timestamp_ns"] = START_NS + index * 10_000
    return ticks


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms ({len(ordered)} runs)"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ticks", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--fills", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--dir", type=Path, help="the store's directory (default: a new temp dir)")
    arguments = parser.parse_args()
    print("command: .venv/bin/python bench/analytics.py " + shlex.join(sys.argv[1:]))
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average before: {load} on {os.cpu_count()} cores")
    path = arguments.dir or Path(tempfile.mkdtemp(prefix="tradeplane-analytics-bench-")) / "store"
    store = ChdbStore(path)
    for statement in render_schema():
        store.execute(statement)

    # Each table on its own: market_ticks is the seed's schema, whose 1M+ inserts/s claim this checks.
    seconds = {}
    for table in TICK_TABLES:
        random = np.random.default_rng(7)
        seconds[table] = 0.0
        for first in range(0, arguments.ticks, arguments.batch):
            ticks = generated_ticks(first, min(arguments.batch, arguments.ticks - first), random)
            started = time.perf_counter()
            store.insert_ticks(ticks, f"bench:{first}", (table,))
            seconds[table] += time.perf_counter() - started
        print(
            f"{table}: {arguments.ticks:,} ticks in batches of {arguments.batch:,}:"
            f" {arguments.ticks / seconds[table]:,.0f} ticks/s"
        )
    print(f"both tables, as the service writes them: {arguments.ticks / sum(seconds.values()):,.0f} ticks/s")

    # Fills: `accounts` accounts trading the symbols, one fill per log sequence.
    store.execute(
        f"""INSERT INTO fills SELECT number + 1, 0, (number % {arguments.accounts} + 1) % 16,
            fromUnixTimestamp64Nano(toInt64({START_NS} + number * 1000)),
            fromUnixTimestamp64Nano(toInt64({START_NS} + number * 1000)),
            number % {arguments.accounts} + 1, ['AAPL', 'MSFT', 'NVDA'][number % 3 + 1],
            if(intHash32(number) % 2 = 0, 'BUY', 'SELL'), 1 + intHash32(number) % 200,
            toDecimal64(190 + (intHash32(number) % 1000) / 100, 8), number, 1, number + 1, 'bench'
            FROM numbers({arguments.fills})"""
    )
    ((on_disk, uncompressed),) = store.rows(
        "SELECT sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts"
        " WHERE database = 'tradeplane' AND table = 'market_ticks' AND active"
    )
    ((quotes_on_disk,),) = store.rows(
        "SELECT sum(bytes_on_disk) FROM system.parts"
        " WHERE database = 'tradeplane' AND table = 'market_quotes' AND active"
    )
    raw = arguments.ticks * TICK_DTYPE.itemsize
    print(
        f"market_ticks on disk: {on_disk / arguments.ticks * 1e6 / 2**20:.2f} MiB per million ticks "
        f"(uncompressed {uncompressed / arguments.ticks * 1e6 / 2**20:.2f} MiB); raw 48-byte ticks "
        f"{raw / on_disk:.1f}x larger; with market_quotes {raw / (on_disk + quotes_on_disk):.1f}x"
    )

    bars = []
    for _ in range(arguments.runs):
        started = time.perf_counter()
        ohlcv(store, "AAPL", "1m", None, None)
        bars.append(time.perf_counter() - started)
    print(f"1-minute OHLCV of one symbol over {arguments.ticks:,} ticks: {percentiles(bars)}")

    ((last_sequence,),) = store.rows("SELECT max(log_sequence) FROM fills")
    pnl = []
    for run in range(arguments.runs):
        started = time.perf_counter()
        positions_at(store, 1 + run % arguments.accounts, int(last_sequence))
        pnl.append(time.perf_counter() - started)
    print(f"one account's positions and realized PnL over {arguments.fills:,} fills: {percentiles(pnl)}")
    store.close()
    print(f"load average after: {' '.join(f'{load:.2f}' for load in os.getloadavg())}; store: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
