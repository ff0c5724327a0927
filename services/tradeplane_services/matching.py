"""A price-time priority limit order book: the simulated venue behind the execution service.

Per symbol, each side keeps price levels (FIFO queues of resting orders) and a heap of level prices. An
incoming order trades against the best opposite levels while prices cross, at the resting order's price,
oldest order first; a DAY limit remainder rests, an IOC or market remainder is canceled (NO_LIQUIDITY).
A replace keeps time priority only when the price is unchanged and the quantity does not grow.
Cancels mark an order inactive; queues drop inactive orders when they reach the front, and a level with
no active order left is removed at once.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable
from typing import NamedTuple

from tradeplane_services.protocol import ExecType, OrderType, Reason, Side, TimeInForce

BUY = int(Side.BUY)
MARKET = int(OrderType.MARKET)
IOC = int(TimeInForce.IOC)


class VenueEvent(NamedTuple):
    """What happened to one order: exec_type NEW / TRADE / CANCELED / REPLACED / CANCEL_REJECTED."""

    owner: Hashable
    order_id: int
    account: int
    symbol: bytes
    side: int
    exec_type: int
    reason: int
    last_quantity: int
    last_price: int
    leaves_quantity: int


class RestingOrder:
    __slots__ = ("account", "active", "filled", "order_id", "owner", "price", "quantity", "side", "symbol")

    def __init__(
        self,
        owner: Hashable,
        order_id: int,
        account: int,
        symbol: bytes,
        side: int,
        quantity: int,
        price: int,
    ) -> None:
        self.owner = owner
        self.order_id = order_id
        self.account = account
        self.symbol = symbol
        self.side = side
        self.quantity = quantity  # leaves
        self.filled = 0
        self.price = price
        self.active = True

    def event(
        self, exec_type: ExecType, reason: int = 0, last_quantity: int = 0, last_price: int = 0
    ) -> VenueEvent:
        return VenueEvent(
            self.owner,
            self.order_id,
            self.account,
            self.symbol,
            self.side,
            int(exec_type),
            reason,
            last_quantity,
            last_price,
            self.quantity if self.active else 0,
        )


class Level:
    __slots__ = ("active", "orders")

    def __init__(self) -> None:
        self.orders: deque[RestingOrder] = deque()
        self.active = 0


class BookSide:
    """One side of a book: levels by price and a heap giving the best price first."""

    __slots__ = ("heap", "levels", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign  # -1 for bids (max-heap through negation), +1 for asks
        self.levels: dict[int, Level] = {}
        self.heap: list[int] = []

    def best(self) -> Level | None:
        heap, levels = self.heap, self.levels
        while heap:
            level = levels.get(heap[0] * self.sign)
            if level is not None:
                return level
            heapq.heappop(heap)
        return None

    def best_price(self) -> int:
        return self.heap[0] * self.sign

    def add(self, order: RestingOrder) -> None:
        level = self.levels.get(order.price)
        if level is None:
            level = self.levels[order.price] = Level()
            heapq.heappush(self.heap, order.price * self.sign)
        level.orders.append(order)
        level.active += 1

    def remove(self, order: RestingOrder) -> None:
        level = self.levels[order.price]
        order.active = False
        level.active -= 1
        if level.active == 0:
            del self.levels[order.price]


class MatchingEngine:
    """All books of the venue; every call returns the VenueEvents it caused, in order."""

    def __init__(self) -> None:
        self.books: dict[bytes, tuple[BookSide, BookSide]] = {}  # symbol -> (bids, asks)
        self.orders: dict[tuple[Hashable, int], RestingOrder] = {}

    def _book(self, symbol: bytes) -> tuple[BookSide, BookSide]:
        book = self.books.get(symbol)
        if book is None:
            book = self.books[symbol] = (BookSide(-1), BookSide(1))
        return book

    def submit(
        self,
        owner: Hashable,
        order_id: int,
        account: int,
        symbol: bytes,
        side: int,
        order_type: int,
        time_in_force: int,
        quantity: int,
        price: int,
    ) -> list[VenueEvent]:
        if (owner, order_id) in self.orders:
            order = RestingOrder(owner, order_id, account, symbol, side, 0, price)
            return [order.event(ExecType.REJECTED, Reason.DUPLICATE_CLIENT_ORDER_ID)]
        order = RestingOrder(owner, order_id, account, symbol, side, quantity, price)
        events = [order.event(ExecType.NEW)]
        self._match(order, order_type == MARKET, events)
        if order.quantity:
            if order_type == MARKET or time_in_force == IOC:
                order.active = False
                events.append(order.event(ExecType.CANCELED, Reason.NO_LIQUIDITY))
            else:
                bids, asks = self._book(symbol)
                (bids if side == BUY else asks).add(order)
                self.orders[owner, order_id] = order
        return events

    def _match(self, order: RestingOrder, market: bool, events: list[VenueEvent]) -> None:
        bids, asks = self._book(order.symbol)
        opposite = asks if order.side == BUY else bids
        buying = order.side == BUY
        while order.quantity:
            level = opposite.best()
            if level is None:
                return
            level_price = opposite.best_price()
            if not market and (level_price > order.price if buying else level_price < order.price):
                return
            queue = level.orders
            while order.quantity and queue:
                resting = queue[0]
                if not resting.active:
                    queue.popleft()
                    continue
                traded = min(order.quantity, resting.quantity)
                order.quantity -= traded
                order.filled += traded
                resting.quantity -= traded
                resting.filled += traded
                if resting.quantity == 0:
                    queue.popleft()
                    opposite.remove(resting)
                    del self.orders[resting.owner, resting.order_id]
                events.append(resting.event(ExecType.TRADE, 0, traded, level_price))
                events.append(order.event(ExecType.TRADE, 0, traded, level_price))

    def cancel(self, owner: Hashable, order_id: int, reason: int = 0) -> list[VenueEvent]:
        order = self.orders.pop((owner, order_id), None)
        if order is None:
            return [_not_open(owner, order_id)]
        bids, asks = self._book(order.symbol)
        (bids if order.side == BUY else asks).remove(order)
        return [order.event(ExecType.CANCELED, reason)]

    def replace(self, owner: Hashable, order_id: int, quantity: int, price: int) -> list[VenueEvent]:
        """A new total quantity and price for a resting order."""
        order = self.orders.get((owner, order_id))
        if order is None:
            return [_not_open(owner, order_id)]
        leaves = quantity - order.filled
        bids, asks = self._book(order.symbol)
        own_side = bids if order.side == BUY else asks
        if leaves <= 0:
            del self.orders[owner, order_id]
            own_side.remove(order)
            return [order.event(ExecType.REPLACED)]
        if price == order.price and leaves <= order.quantity:
            order.quantity = leaves
            return [order.event(ExecType.REPLACED)]
        own_side.remove(order)
        replacement = RestingOrder(owner, order_id, order.account, order.symbol, order.side, leaves, price)
        replacement.filled = order.filled
        events = [replacement.event(ExecType.REPLACED)]
        self._match(replacement, False, events)
        if replacement.quantity:
            own_side.add(replacement)
            self.orders[owner, order_id] = replacement
        else:
            del self.orders[owner, order_id]
        return events

    def cancel_owner(self, owner: Hashable, reason: int) -> list[VenueEvent]:
        """Cancel every resting order of one owner (its connection went away)."""
        events: list[VenueEvent] = []
        for key in [key for key in self.orders if key[0] is owner]:
            events.extend(self.cancel(owner, key[1], reason))
        return events

    def depth(self, symbol: bytes) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(bids, asks) as (price, active quantity), best first: for tests and the status page."""
        bids, asks = self._book(symbol)
        return _levels(bids, reverse=True), _levels(asks, reverse=False)


def _not_open(owner: Hashable, order_id: int) -> VenueEvent:
    return VenueEvent(
        owner, order_id, 0, b"\0" * 8, 0, int(ExecType.CANCEL_REJECTED), int(Reason.ORDER_NOT_OPEN), 0, 0, 0
    )


def _levels(side: BookSide, reverse: bool) -> list[tuple[int, int]]:
    return sorted(
        ((price, sum(o.quantity for o in level.orders if o.active)) for price, level in side.levels.items()),
        reverse=reverse,
    )
