"""The simulated venue's price-time priority matching engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tradeplane_services.matching import MatchingEngine, VenueEvent
from tradeplane_services.protocol import (
    ExecType,
    OrderType,
    Reason,
    RouteOrder,
    Side,
    TimeInForce,
    encode,
    layout_of,
)

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


# --- the specification, checked on random order flow ----------------------------------------------
# The checker below follows each order from the events alone (what it rests at, what it has left, when
# it joined its level) and holds every call to the module's rules: each trade is against the best-priced,
# then oldest, resting order, at its price; a limit never trades through its price; an order stops
# trading only when nothing crosses it; remainders rest (DAY limit) or are canceled (IOC, market);
# and the book's depth is what the open orders leave.

OWNERS = ("a", "b")


@dataclass
class Open:
    side: int
    price: int
    leaves: int
    filled: int
    joined: int  # when it joined its level's queue (time priority)
    opened: int  # when its (owner, order id) first opened (disconnect cancel order)


class Checker:
    def __init__(self) -> None:
        self.open: dict[tuple[str, int], Open] = {}
        self.clock = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def first_in_line(self, side: int) -> tuple[str, int] | None:
        """The resting order on `side` an incoming order must trade with first."""
        queued = [(key, o) for key, o in self.open.items() if o.side == side]
        if not queued:
            return None
        best = (max if side == BUY else min)(o.price for _, o in queued)
        return min((o.joined, key) for key, o in queued if o.price == best)[1]

    def crosses(self, side: int, price: int, market: bool) -> bool:
        first = self.first_in_line(SELL if side == BUY else BUY)
        if first is None:
            return False
        resting = self.open[first].price
        return market or (resting <= price if side == BUY else resting >= price)

    def trades(
        self, events: list[VenueEvent], owner: str, side: int, quantity: int, price: int, market: bool
    ) -> int:
        """Checks the trade pairs starting `events`; returns what the incoming order has left."""
        leaves = quantity
        while events and events[0].exec_type == ExecType.TRADE:
            resting, incoming, *events = events
            expected = self.first_in_line(SELL if side == BUY else BUY)
            assert expected is not None and (resting.owner, resting.order_id) == expected
            book = self.open[expected]
            traded = resting.last_quantity
            assert traded == incoming.last_quantity == min(leaves, book.leaves)
            assert resting.last_price == incoming.last_price == book.price
            assert market or (book.price <= price if side == BUY else book.price >= price)
            book.leaves -= traded
            book.filled += traded
            leaves -= traded
            assert (resting.leaves_quantity, incoming.leaves_quantity) == (book.leaves, leaves)
            assert incoming.owner == owner
            if book.leaves == 0:
                del self.open[expected]
        assert not events, events
        return leaves

    def rest_or_cancel(
        self, tail: list[VenueEvent], key: tuple[str, int], order: Open, immediate: bool, market: bool
    ) -> None:
        """What is left once trading stopped (which it may only when nothing crosses it)."""
        assert bool(tail) == (immediate and order.leaves > 0)
        if not order.leaves:
            return
        assert not self.crosses(order.side, order.price, market)
        if immediate:
            assert [(e.exec_type, e.reason, e.leaves_quantity) for e in tail] == [
                (ExecType.CANCELED, Reason.NO_LIQUIDITY, 0)
            ]
        else:
            order.joined = self.tick()
            self.open[key] = order

    def submit(self, venue: MatchingEngine, owner: str, order_id: int, side: int, kind: int, quantity: int,
               price: int) -> None:  # fmt: skip
        order_type, time_in_force = ((LIMIT, DAY), (LIMIT, IOC), (MARKET, DAY))[kind]
        events = submit(venue, order_id, side, quantity, price, owner, order_type, time_in_force)
        key = (owner, order_id)
        if key in self.open:
            assert [(e.exec_type, e.reason) for e in events] == [
                (ExecType.REJECTED, Reason.DUPLICATE_CLIENT_ORDER_ID)
            ]
            return
        assert (events[0].exec_type, events[0].leaves_quantity) == (ExecType.NEW, quantity)
        market = order_type == MARKET
        immediate = market or time_in_force == IOC
        order = Open(side, price, quantity, 0, 0, self.tick())
        self.trades_then_rest(events[1:], key, order, quantity, immediate, market)

    def trades_then_rest(self, events: list[VenueEvent], key: tuple[str, int], order: Open, quantity: int,
                         immediate: bool, market: bool) -> None:  # fmt: skip
        # The last event may be the remainder's cancel: the trades come before it.
        tail = events[-1:] if events and events[-1].exec_type == ExecType.CANCELED else []
        trades = events[: len(events) - len(tail)]
        order.leaves = self.trades(trades, key[0], order.side, quantity, order.price, market)
        order.filled += quantity - order.leaves
        self.rest_or_cancel(tail, key, order, immediate, market)

    def cancel(self, venue: MatchingEngine, owner: str, order_id: int) -> None:
        events = venue.cancel(owner, order_id)
        if self.open.pop((owner, order_id), None) is None:
            assert [(e.exec_type, e.reason) for e in events] == [
                (ExecType.CANCEL_REJECTED, Reason.ORDER_NOT_OPEN)
            ]
        else:
            assert [(e.exec_type, e.leaves_quantity) for e in events] == [(ExecType.CANCELED, 0)]

    def replace(self, venue: MatchingEngine, owner: str, order_id: int, quantity: int, price: int) -> None:
        events = venue.replace(owner, order_id, quantity, price)
        key = (owner, order_id)
        order = self.open.get(key)
        if order is None:
            assert [(e.exec_type, e.reason) for e in events] == [
                (ExecType.CANCEL_REJECTED, Reason.ORDER_NOT_OPEN)
            ]
            return
        leaves = quantity - order.filled
        assert events[0].exec_type == ExecType.REPLACED and events[0].leaves_quantity == max(leaves, 0)
        if leaves <= 0 or (price == order.price and leaves <= order.leaves):
            assert len(events) == 1
            if leaves <= 0:
                del self.open[key]
            order.leaves = leaves
            return
        del self.open[key]
        replacement = Open(order.side, price, leaves, order.filled, 0, order.opened)
        self.trades_then_rest(events[1:], key, replacement, leaves, immediate=False, market=False)

    def cancel_owner(self, venue: MatchingEngine, owner: str) -> None:
        events = venue.cancel_owner(owner, int(Reason.CANCELED_ON_DISCONNECT))
        owned = sorted((o.opened, key) for key, o in self.open.items() if key[0] == owner)
        assert [(e.owner, e.order_id) for e in events] == [key for _, key in owned]
        assert all(e.reason == Reason.CANCELED_ON_DISCONNECT for e in events)
        for _, key in owned:
            del self.open[key]

    def depth_matches(self, venue: MatchingEngine) -> None:
        levels: dict[int, dict[int, int]] = {BUY: {}, SELL: {}}
        for order in self.open.values():
            levels[order.side][order.price] = levels[order.side].get(order.price, 0) + order.leaves
        bids, asks = venue.depth(SYMBOL)
        assert bids == sorted(levels[BUY].items(), reverse=True)
        assert asks == sorted(levels[SELL].items())
        assert not bids or not asks or bids[0][0] < asks[0][0]


owners = st.sampled_from(OWNERS)
order_ids = st.integers(1, 8)
prices = st.integers(99, 101)  # few prices, so that orders cross often
submits = st.tuples(
    st.just("submit"), owners, order_ids, st.sampled_from((BUY, SELL)), st.sampled_from((0, 0, 1, 2)),
    st.integers(1, 6), prices,
)  # fmt: skip
calls = st.one_of(
    submits,
    submits,
    st.tuples(st.just("cancel"), owners, order_ids),
    st.tuples(st.just("replace"), owners, order_ids, st.integers(1, 10), prices),
    st.tuples(st.just("cancel_owner"), owners),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(calls, min_size=20, max_size=80))
def test_random_order_flow_follows_price_time_priority(flow: list[tuple[Any, ...]]) -> None:
    venue, checker = MatchingEngine(), Checker()
    for name, *arguments in flow:
        getattr(checker, name)(venue, *arguments)
        checker.depth_matches(venue)


def test_a_run_of_routes_trades_as_one_by_one_and_leaves_the_acknowledgements_out() -> None:
    """RouteOrder frames submitted as a run give the events `submit` gives one at a time, but NEW."""
    flow = [
        (1, SELL, 10, 101, DAY),
        (2, SELL, 10, 100, DAY),
        (3, BUY, 15, 101, DAY),
        (4, BUY, 5, 99, IOC),
        (1, BUY, 1, 1, DAY),
    ]
    routes = [
        RouteOrder(order_id, 1, SYMBOL, side, LIMIT, tif, qty, price)
        for order_id, side, qty, price, tif in flow
    ]
    run_venue, twin = MatchingEngine(), MatchingEngine()
    events = run_venue.submit_run("a", b"".join(encode(route) for route in routes))
    one_by_one = [event for route in routes for event in twin.submit("a", *route)]
    assert events == [event for event in one_by_one if event.exec_type != ExecType.NEW]
    assert (ExecType.REJECTED, int(Reason.DUPLICATE_CLIENT_ORDER_ID)) in [
        (e.exec_type, e.reason) for e in events
    ]
    assert run_venue.depth(SYMBOL) == twin.depth(SYMBOL) == ([], [(101, 5)])
    bad = bytearray(encode(routes[0]._replace(order_id=9)))
    bad[layout_of(RouteOrder).offsets["side"]] = 7
    assert run_venue.submit_run("a", bytes(bad)) is None
    assert run_venue.depth(SYMBOL) == ([], [(101, 5)])
