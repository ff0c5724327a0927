"""What position's state digest costs per fill: the projection's apply and advance with the digest, against
the same with the position hash replaced by a constant (the baseline: the projection without hashing; the
digest's sum and history stay, so the ratio slightly understates the digest's cost), on the same fills, in
the same process.

Each run applies --fills random fills (--accounts accounts, two symbols, both sides, moving prices) to a
fresh PositionBook and advances the log sequence after each; the median of --runs runs of each kind, and
their ratio. Figures vary with what else runs: the load average is printed with them.

    python bench/position_digest.py
    python bench/position_digest.py --fills 200000 --runs 7 --method fifo
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import sys
import time

from tradeplane_services import position
from tradeplane_services.position import AVERAGE_COST, FIFO, PositionBook
from tradeplane_services.protocol import Fill, Side, price_units, symbol_bytes


def random_fills(count: int, accounts: int) -> list[Fill]:
    draw = random.Random(1)
    symbols = [symbol_bytes("AAPL"), symbol_bytes("MSFT")]
    return [
        Fill(
            9,
            n,
            draw.randint(1, accounts),
            draw.choice(symbols),
            int(draw.choice((Side.BUY, Side.SELL))),
            draw.randint(1, 100),
            price_units(draw.randint(180, 200)),
            n,
            0,
        )
        for n in range(1, count + 1)
    ]


def micros_per_fill(fills: list[Fill], method: str) -> float:
    book = PositionBook(method)
    started = time.perf_counter()
    for sequence, fill in enumerate(fills, 1):
        book.apply(fill)
        book.advance(sequence)
    return (time.perf_counter() - started) / len(fills) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fills", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--method", choices=(AVERAGE_COST, FIFO), default=AVERAGE_COST)
    arguments = parser.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    fills = random_fills(arguments.fills, arguments.accounts)
    hashed = position.position_hash
    with_digest, baseline = [], []
    try:
        for _ in range(arguments.runs):
            position.position_hash = hashed
            with_digest.append(micros_per_fill(fills, arguments.method))
            position.position_hash = lambda key, book_position: 0
            baseline.append(micros_per_fill(fills, arguments.method))
    finally:
        position.position_hash = hashed
    digest, plain = statistics.median(with_digest), statistics.median(baseline)
    print(
        f"{arguments.method}, {arguments.fills} fills, median of {arguments.runs}: {digest:.2f} us per fill "
        f"with the digest, {plain:.2f} us without (baseline), ratio {digest / plain:.2f}"
    )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
