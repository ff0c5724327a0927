"""Positions as a projection: PnL arithmetic, exactly-once fills, snapshots that replay to the same state."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeplane_services.eventlog import PARTITIONS
from tradeplane_services.position import Position, PositionBook
from tradeplane_services.protocol import Fill

AAPL, MSFT = b"AAPL\0\0\0\0", b"MSFT\0\0\0\0"
BUY, SELL = 1, 2


def fill(sequence: int, side: int, quantity: int, price: int, account: int = 1, symbol: bytes = AAPL) -> Fill:
    return Fill(99, sequence, account, symbol, side, quantity, price, 1000 + sequence, 0)


def test_average_cost_realized_and_unrealized_pnl() -> None:
    book = PositionBook()
    book.apply(fill(1, BUY, 100, 10_0000))
    book.apply(fill(2, BUY, 100, 12_0000))  # long 200 at 11
    book.apply(fill(3, SELL, 50, 13_0000))  # realize 50 x (13 - 11)
    position = book.positions[1, AAPL]
    assert (position.quantity, position.open_cost, position.realized) == (150, 150 * 11_0000, 50 * 2_0000)
    book.mark(np.array([AAPL, MSFT], dtype="S8"), np.array([14_0000, 1], dtype=np.int64))
    report = book.report(1, AAPL)
    assert (report.mark_price, report.unrealized_pnl) == (14_0000, 150 * 3_0000)
    assert (report.bought_quantity, report.sold_quantity) == (200, 50)


def test_a_fill_through_zero_flips_the_position_at_the_fill_price() -> None:
    position = Position()
    position.apply(BUY, 10, 100)
    position.apply(SELL, 25, 90)
    assert (position.quantity, position.realized, position.open_cost) == (-15, 10 * (90 - 100), -15 * 90)
    position.apply(BUY, 15, 80)  # short covered 10 below its open price
    assert (position.quantity, position.realized, position.open_cost) == (0, -100 + 15 * 10, 0)


def test_each_fill_counts_once_per_source() -> None:
    book = PositionBook()
    assert book.apply(fill(1, BUY, 5, 100))
    assert not book.apply(fill(1, BUY, 5, 100))
    assert book.apply(fill(1, BUY, 5, 100)._replace(source=7)), "another source, another fill"
    assert book.positions[1, AAPL].quantity == 10


def test_a_source_s_fills_are_ordered_within_a_partition_only() -> None:
    # The log holds one event per partition per commit: fill 3 of partition 2 may come after fill 5 of 1.
    book = PositionBook()
    assert book.apply(fill(5, BUY, 1, 100, account=1))
    assert book.apply(fill(3, BUY, 1, 100, account=2))
    assert not book.apply(fill(3, BUY, 1, 100, account=2))
    assert not book.apply(fill(4, BUY, 1, 100, account=1 + PARTITIONS)), "partition 1 is past 4"
    assert book.fills == 2


FILLS = st.lists(
    st.tuples(
        st.sampled_from([BUY, SELL]), st.integers(1, 500), st.integers(1, 3_000_000), st.integers(1, 3)
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(fills=FILLS, cut=st.integers(0, 60))
def test_a_snapshot_plus_the_tail_rebuilds_the_same_state(fills: list, cut: int) -> None:
    batch = [fill(n, side, qty, price, account) for n, (side, qty, price, account) in enumerate(fills, 1)]
    live = PositionBook()
    for record in batch:
        live.apply(record)
    before = PositionBook()
    for record in batch[:cut]:
        before.apply(record)
    before.sequence = cut
    restored = PositionBook.from_snapshot(json.loads(json.dumps(before.to_snapshot())))
    for record in batch:  # the log delivers what the snapshot holds again: applied once all the same
        restored.apply(record)
    assert {k: vars_of(p) for k, p in restored.positions.items()} == {
        k: vars_of(p) for k, p in live.positions.items()
    }
    assert (restored.fills, restored.last_fill_price) == (live.fills, live.last_fill_price)
    net = sum((qty if side == BUY else -qty) for side, qty, _, _ in fills)
    assert sum(p.quantity for p in restored.positions.values()) == net


def vars_of(position: Position) -> tuple[int, ...]:
    return (position.quantity, position.bought, position.sold, position.open_cost, position.realized)
