"""The simulated venue's price-time priority matching engine."""

from __future__ import annotations

from tradeplane_services.matching import MatchingEngine, VenueEvent
from tradeplane_services.protocol import ExecType, OrderType, Reason, Side, TimeInForce

SYMBOL = b"AAPL\0\0\0\0"
BUY, SELL = int(Side.BUY), int(Side.SELL)
LIMIT, MARKET = int(OrderType.LIMIT), int(OrderType.MARKET)
DAY, IOC = int(TimeInForce.DAY), int(TimeInForce.IOC)


def submit(
    venue: MatchingEngine,
    order_id: int,
    side: int,
    quantity: int,
    price: int,
    owner: str = "a",
    order_type: int = LIMIT,
    time_in_force: int = DAY,
) -> list[VenueEvent]:
    return venue.submit(owner, order_id, 1, SYMBOL, side, order_type, time_in_force, quantity, price)


def trades(events: list[VenueEvent]) -> list[tuple[int, int, int]]:
    return [(e.order_id, e.last_quantity, e.last_price) for e in events if e.exec_type == ExecType.TRADE]


def test_best_price_first_then_oldest_first_at_the_resting_price() -> None:
    venue = MatchingEngine()
    submit(venue, 1, SELL, 10, 101)
    submit(venue, 2, SELL, 10, 100)
    submit(venue, 3, SELL, 10, 100)
    events = submit(venue, 4, BUY, 25, 102)
    assert trades(events) == [
        (2, 10, 100),
        (4, 10, 100),
        (3, 10, 100),
        (4, 10, 100),
        (1, 5, 101),
        (4, 5, 101),
    ]
    assert venue.depth(SYMBOL) == ([], [(101, 5)])
    assert events[-1].leaves_quantity == 0


def test_no_trade_when_prices_do_not_cross_and_the_remainder_rests() -> None:
    venue = MatchingEngine()
    submit(venue, 1, SELL, 10, 101)
    events = submit(venue, 2, BUY, 10, 100)
    assert [e.exec_type for e in events] == [ExecType.NEW]
    assert venue.depth(SYMBOL) == ([(100, 10)], [(101, 10)])


def test_ioc_and_market_remainders_are_canceled_for_lack_of_liquidity() -> None:
    venue = MatchingEngine()
    submit(venue, 1, BUY, 5, 100)
    ioc = submit(venue, 2, SELL, 8, 99, time_in_force=IOC)
    assert trades(ioc) == [(1, 5, 100), (2, 5, 100)]
    assert (ioc[-1].exec_type, ioc[-1].reason) == (ExecType.CANCELED, Reason.NO_LIQUIDITY)
    market = submit(venue, 3, SELL, 1, 0, order_type=MARKET)
    assert market[-1].exec_type == ExecType.CANCELED
    assert venue.depth(SYMBOL) == ([], [])


def test_a_market_order_takes_any_price() -> None:
    venue = MatchingEngine()
    submit(venue, 1, SELL, 5, 150)
    assert trades(submit(venue, 2, BUY, 5, 0, order_type=MARKET)) == [(1, 5, 150), (2, 5, 150)]


def test_replace_keeps_priority_only_when_shrinking_at_the_same_price() -> None:
    venue = MatchingEngine()
    submit(venue, 1, SELL, 10, 100)
    submit(venue, 2, SELL, 10, 100)
    venue.replace("a", 1, 6, 100)  # shrink: still first
    assert trades(submit(venue, 3, BUY, 1, 100))[0][0] == 1
    venue.replace("a", 1, 20, 100)  # grow: to the back of the queue
    assert trades(submit(venue, 4, BUY, 1, 100))[0][0] == 2


def test_replace_that_crosses_trades_and_replace_below_filled_finishes_the_order() -> None:
    venue = MatchingEngine()
    submit(venue, 1, BUY, 10, 99)
    submit(venue, 2, SELL, 4, 100)
    events = venue.replace("a", 1, 10, 100)
    assert events[0].exec_type == ExecType.REPLACED
    assert trades(events) == [(2, 4, 100), (1, 4, 100)]
    done = venue.replace("a", 1, 4, 100)  # 4 already filled
    assert (done[0].exec_type, done[0].leaves_quantity) == (ExecType.REPLACED, 0)
    assert venue.depth(SYMBOL) == ([], [])


def test_cancel_and_cancel_of_an_unknown_order() -> None:
    venue = MatchingEngine()
    submit(venue, 1, BUY, 10, 99)
    assert venue.cancel("a", 1)[0].exec_type == ExecType.CANCELED
    rejected = venue.cancel("a", 1)[0]
    assert (rejected.exec_type, rejected.reason) == (ExecType.CANCEL_REJECTED, Reason.ORDER_NOT_OPEN)
    assert venue.depth(SYMBOL) == ([], [])
    assert submit(venue, 5, SELL, 1, 99) and venue.depth(SYMBOL) == ([], [(99, 1)])


def test_orders_are_scoped_by_owner_and_canceled_with_it() -> None:
    venue = MatchingEngine()
    submit(venue, 1, BUY, 10, 99, owner="a")
    submit(venue, 1, BUY, 7, 98, owner="b")
    canceled = venue.cancel_owner("a", int(Reason.CANCELED_ON_DISCONNECT))
    assert [(e.owner, e.reason) for e in canceled] == [("a", Reason.CANCELED_ON_DISCONNECT)]
    assert venue.depth(SYMBOL) == ([(98, 7)], [])


def test_many_price_levels_stay_in_order() -> None:
    venue = MatchingEngine()
    for order_id, price in enumerate([105, 101, 109, 103, 101, 107], start=1):
        submit(venue, order_id, SELL, 1, price)
    venue.cancel("a", 4)  # 103
    events = submit(venue, 99, BUY, 6, 200)
    assert [price for _, _, price in trades(events)][::2] == [101, 101, 105, 107, 109]
