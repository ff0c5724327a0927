"""The simulated feed's ticks (core/src/feed.rs through marketdata.SimulatedFeed): valid quotes around each
symbol's reference, round-robin over the symbols, reproducible from the seed, and a clear error for a
record layout the compiled walk cannot write."""

from __future__ import annotations

import numpy as np
import pytest

from tradeplane_services._wire import TickWalk
from tradeplane_services.marketdata import PRICE_CENT, TICK_RECORD, SimulatedFeed
from tradeplane_services.protocol import TICK_DTYPE, price_units, symbol_bytes

SYMBOLS = {"AAPL": 190.0, "MSFT": 420.0, "BRK.B": 410.5}


def test_ticks_are_quotes_a_cent_either_side_of_a_price_near_the_reference() -> None:
    feed = SimulatedFeed(SYMBOLS)
    for step in range(200):
        ticks = feed.take(300, 1_000 + step)
        assert ticks.dtype == TICK_DTYPE and len(ticks) == 300
        assert (ticks["timestamp_ns"] == 1_000 + step).all()
        assert (ticks["bid_price"] == ticks["last_price"] - PRICE_CENT).all()
        assert (ticks["ask_price"] == ticks["last_price"] + PRICE_CENT).all()
        assert (ticks["last_price"] % PRICE_CENT == 0).all()
        for quantity in (ticks["bid_quantity"], ticks["ask_quantity"]):
            assert set(np.unique(quantity)) <= {100 * lots for lots in range(1, 10)}
        for name, reference in SYMBOLS.items():
            prices = ticks["last_price"][ticks["symbol"] == symbol_bytes(name).rstrip(b"\x00")]
            assert len(np.unique(prices)) == 1  # one step of the walk per call
            assert abs(prices[0] / price_units(reference) - 1) < 0.01


def test_symbols_follow_each_other_round_robin_across_calls() -> None:
    feed = SimulatedFeed(SYMBOLS)
    names = np.concatenate([feed.take(count, 0)["symbol"] for count in (1, 2, 4, 5)])
    expected = [symbol_bytes(name).rstrip(b"\x00") for name in SYMBOLS] * 4
    assert names.tolist() == expected


def test_the_same_seed_gives_the_same_ticks_and_another_seed_others() -> None:
    first, again, other = SimulatedFeed(SYMBOLS, 7), SimulatedFeed(SYMBOLS, 7), SimulatedFeed(SYMBOLS, 8)
    for _ in range(5):
        ticks = first.take(64, 9)
        assert ticks.tobytes() == again.take(64, 9).tobytes()
        assert ticks.tobytes() != other.take(64, 9).tobytes()


def test_a_record_layout_the_walk_cannot_write_is_refused_by_name() -> None:
    names, prices = [symbol_bytes("AAPL")], [price_units(190.0)]
    with pytest.raises(KeyError, match="timestamp_ns"):
        TickWalk(names, prices, PRICE_CENT, 1, {k: v for k, v in TICK_RECORD.items() if k != "timestamp_ns"})
    with pytest.raises(ValueError, match="timestamp_ns ends past the record size 44"):
        TickWalk(names, prices, PRICE_CENT, 1, {**TICK_RECORD, "size": 44})
    with pytest.raises(ValueError, match="one reference price per symbol"):
        TickWalk(names, [], PRICE_CENT, 1, TICK_RECORD)
    with pytest.raises(ValueError, match="not 8 bytes"):
        TickWalk([b"AAPL"], prices, PRICE_CENT, 1, TICK_RECORD)
