"""Event-sourced positions: PnL arithmetic, exactly-once fills, and the durable log's replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeplane_services.position import LOG_HEADER, RECORD, FillLog, LogCorruption, Position, PositionBook
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


FILLS = st.lists(
    st.tuples(
        st.sampled_from([BUY, SELL]), st.integers(1, 500), st.integers(1, 3_000_000), st.integers(1, 3)
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(fills=FILLS)
def test_replaying_the_log_rebuilds_the_same_state(
    tmp_path_factory: pytest.TempPathFactory, fills: list
) -> None:
    directory = tmp_path_factory.mktemp("log")
    live, written = PositionBook(), FillLog(directory, "never")
    list(written.replay())
    written.open()
    batch = [fill(n, side, qty, price, account) for n, (side, qty, price, account) in enumerate(fills, 1)]
    for start in range(0, len(batch), 7):
        group = [f for f in batch[start : start + 7] if live.apply(f)]
        written.append(group)
    written.close()
    replayed = PositionBook()
    for record in FillLog(directory, "never").replay():
        replayed.apply(record)
    assert {k: vars_of(p) for k, p in replayed.positions.items()} == {
        k: vars_of(p) for k, p in live.positions.items()
    }
    net = sum((qty if side == BUY else -qty) for side, qty, _, _ in fills)
    assert sum(p.quantity for p in replayed.positions.values()) == net


def vars_of(position: Position) -> tuple[int, ...]:
    return (position.quantity, position.bought, position.sold, position.open_cost, position.realized)


def _log_with(directory: Path, count: int, policy: str = "always") -> FillLog:
    log = FillLog(directory, policy)
    list(log.replay())
    log.open()
    log.append([fill(n, BUY, n, 100) for n in range(1, count + 1)])
    log.close()
    return log


def test_a_torn_last_record_is_cut_off(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    with open(log.path, "ab") as file:
        file.write(b"\x01\x02\x03")  # a crash in the middle of a write
    assert [f.fill_sequence for f in FillLog(tmp_path, "always").replay()] == [1, 2, 3]
    assert log.path.stat().st_size == LOG_HEADER.size + 3 * RECORD.size


def test_a_last_record_with_a_bad_checksum_is_cut_off(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    data = bytearray(log.path.read_bytes())
    data[-1] ^= 0xFF
    log.path.write_bytes(bytes(data))
    assert [f.fill_sequence for f in FillLog(tmp_path, "always").replay()] == [1, 2]


def test_damage_before_the_end_stops_replay_naming_the_byte(tmp_path: Path) -> None:
    log = _log_with(tmp_path, 3)
    data = bytearray(log.path.read_bytes())
    second = LOG_HEADER.size + RECORD.size
    data[second + 10] ^= 0xFF
    log.path.write_bytes(bytes(data))
    with pytest.raises(LogCorruption, match=f"byte {second}: record checksum mismatch"):
        list(FillLog(tmp_path, "always").replay())


def test_a_file_that_is_not_a_fill_log_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fills.log").write_bytes(b"something else entirely")
    with pytest.raises(LogCorruption, match="byte 0"):
        list(FillLog(tmp_path, "always").replay())


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_every_fsync_policy_writes_before_acknowledging(tmp_path: Path, policy: str) -> None:
    log = FillLog(tmp_path, policy)
    list(log.replay())
    log.open()
    log.append([fill(1, SELL, 3, 100)])
    # Acknowledged means at least in the page cache: visible to a fresh reader right away.
    assert [f.quantity for f in FillLog(tmp_path, policy).replay()] == [3]
    assert log.dirty is (policy != "always")
    log.sync()
    assert not log.dirty
    log.close()
