"""Positions as a projection: PnL arithmetic, exactly-once fills, snapshots that replay to the same state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeplane_services.eventlog import PARTITIONS
from tradeplane_services.position import DIGEST_MODULUS, Position, PositionBook, position_hash
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


def test_fifo_realizes_against_the_oldest_lots_first() -> None:
    book = PositionBook("fifo")
    book.apply(fill(1, BUY, 100, 10_0000))
    book.apply(fill(2, BUY, 100, 12_0000))
    book.apply(fill(3, SELL, 150, 13_0000))  # 100 x (13 - 10) + 50 x (13 - 12)
    position = book.positions[1, AAPL]
    assert (position.quantity, position.open_cost, position.realized) == (50, 50 * 12_0000, 350_0000)
    book.apply(fill(4, SELL, 80, 11_0000))  # closes the last 50 at a loss of 1, then 30 short at 11
    assert (position.quantity, position.open_cost, position.realized) == (-30, -30 * 11_0000, 300_0000)
    book.apply(fill(5, BUY, 30, 10_0000))
    assert (position.quantity, position.open_cost, position.realized) == (0, 0, 330_0000)


@settings(max_examples=60, deadline=None)
@given(fills=FILLS)
def test_fifo_and_average_cost_agree_on_quantities_and_on_a_closed_position_s_total_pnl(fills: list) -> None:
    batch = [fill(n, side, qty, price, account) for n, (side, qty, price, account) in enumerate(fills, 1)]
    average, fifo = PositionBook(), PositionBook("fifo")
    for record in batch:
        average.apply(record)
        fifo.apply(record)
    for key, position in average.positions.items():
        other = fifo.positions[key]
        assert position.figures()[:3] == other.figures()[:3]
        if position.quantity == 0:
            assert position.realized == other.realized, "a flat position realized all it made"


def digest_of(book: PositionBook) -> int:
    """The digest computed afresh from the positions, in another order than the fills built them."""
    return sum(position_hash(key, p) for key, p in reversed(book.positions.items())) % DIGEST_MODULUS


@settings(max_examples=60, deadline=None)
@given(fills=FILLS, cut=st.integers(0, 60), method=st.sampled_from(["average-cost", "fifo"]))
def test_the_digest_follows_each_fill_and_a_snapshot_s_replica_agrees_at_every_later_sequence(
    fills: list, cut: int, method: str
) -> None:
    batch = [fill(n, side, qty, price, account) for n, (side, qty, price, account) in enumerate(fills, 1)]
    replaying = PositionBook(method)
    for sequence, record in enumerate(batch, 1):
        replaying.apply(record)
        replaying.advance(sequence)
        assert replaying.digest == digest_of(replaying)
    before = PositionBook(method)
    for sequence, record in enumerate(batch[:cut], 1):
        before.apply(record)
        before.advance(sequence)
    restored = PositionBook.from_snapshot(json.loads(json.dumps(before.to_snapshot())), method)
    for sequence, record in enumerate(batch[cut:], cut + 1):
        restored.apply(record)
        restored.advance(sequence)
    history = dict(replaying.digests)
    assert restored.digests, "the snapshot's replica records from its snapshot's sequence on"
    assert all(history[sequence] == digest for sequence, digest in restored.digests)


def test_the_two_methods_differ_in_the_digest_once_a_close_realizes_differently() -> None:
    books = PositionBook(), PositionBook("fifo")
    for book in books:
        book.apply(fill(1, BUY, 100, 10_0000))
        book.apply(fill(2, BUY, 100, 12_0000))
    assert books[0].digest == books[1].digest, "the same open lots: the same five figures"
    for book in books:
        book.apply(fill(3, SELL, 100, 13_0000))
    assert books[0].digest != books[1].digest


def test_a_snapshot_of_the_other_method_is_refused_naming_both() -> None:
    document = PositionBook("fifo").to_snapshot()
    with pytest.raises(ValueError, match="snapshot pnlMethod 'fifo': this replica projects 'average-cost'"):
        PositionBook.from_snapshot(document)


def test_a_figure_beyond_64_bits_still_hashes_and_counts() -> None:
    small, huge = Position(), Position()
    huge.realized = 2**70  # the book's integers are unbounded; the wire saturates, the digest does not
    before = position_hash((1, AAPL), huge)
    assert before != position_hash((1, AAPL), small)
    huge.realized += 1
    assert position_hash((1, AAPL), huge) != before
