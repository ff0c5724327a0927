"""A price-time priority limit order book: the simulated venue behind the execution service.

The book is compiled (core/src/matching.rs). Per symbol, each side keeps price levels of FIFO queues of
resting orders. An incoming order trades against the best opposite levels while prices cross, at the
resting order's price, oldest order first; a DAY limit remainder rests, an IOC or market remainder is
canceled (NO_LIQUIDITY). A replace keeps time priority only when the price is unchanged and the quantity
does not grow. A cancel takes the order off its level at once (a level with no active order left goes);
a disconnect cancels the owner's orders oldest first. Owners (the connections routing the orders) are
told apart by identity. Every call returns the VenueEvents it caused, in order.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple, Self

from tradeplane_services._wire import MatchingBook
from tradeplane_services.protocol import ExecType, OrderType, Reason, Side, TimeInForce

CODES = {
    "BUY": int(Side.BUY),
    "MARKET": int(OrderType.MARKET),
    "IOC": int(TimeInForce.IOC),
    **{member.name: int(member) for member in ExecType},
    **{name: int(Reason[name]) for name in ("NO_LIQUIDITY", "DUPLICATE_CLIENT_ORDER_ID", "ORDER_NOT_OPEN")},
}
"""The protocol's codes the compiled book uses."""


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


class MatchingEngine(MatchingBook):
    """All books of the venue: submit, cancel, replace, cancel_owner and depth (see the module's text)."""

    def __new__(cls) -> Self:
        return super().__new__(cls, VenueEvent, CODES)
