"""Execution: routes orders to a venue behind the `Venue` interface and hands every fill to position.

The shipped venue is simulated (`matching.MatchingEngine`, price-time priority), so the stack trades end
to end. Orders are scoped by the order-service connection that routed them; when that connection drops,
its resting orders are canceled. Fills carry (source, fill_sequence): source is this process's start
time, the sequence counts its fills. A fill stays buffered until position acknowledges it as durable and is
sent again after a reconnect, so a position restart loses nothing (position ignores what it already has).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable
from typing import Any, Protocol

from tradeplane_services.config import Environment, ExecutionSettings, Settings
from tradeplane_services.matching import MatchingEngine, VenueEvent
from tradeplane_services.protocol import (
    CancelRoute,
    ExecType,
    Fill,
    FillAck,
    Reason,
    ReplaceRoute,
    RouteOrder,
    VenueReport,
)
from tradeplane_services.runtime import Connection, PeerLink, Service, fields, log, wait_until

NEW, TRADE = int(ExecType.NEW), int(ExecType.TRADE)


class Venue(Protocol):
    """Venue connectivity: each call returns the events it caused (acks, trades, cancels), in order."""

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
    ) -> list[VenueEvent]: ...

    def cancel(self, owner: Hashable, order_id: int, reason: int = 0) -> list[VenueEvent]: ...

    def replace(self, owner: Hashable, order_id: int, quantity: int, price: int) -> list[VenueEvent]: ...

    def cancel_owner(self, owner: Hashable, reason: int) -> list[VenueEvent]: ...


VENUES: dict[str, type[Venue]] = {"simulated": MatchingEngine}


class ExecutionService(Service):
    name = "execution"

    def __init__(self, environment: Environment, settings: Settings) -> None:
        super().__init__(environment, settings)
        assert isinstance(settings, ExecutionSettings)
        self.venue: Venue = VENUES[settings.venue]()
        self.handlers = {
            RouteOrder: self.on_route,
            CancelRoute: self.on_cancel,
            ReplaceRoute: self.on_replace,
        }
        self.source = time.time_ns()
        self.fill_sequence = 0
        self.unacked: deque[Fill] = deque()
        self.position: PeerLink | None = None
        if environment.peer("position") is not None:
            self.position = self.link("position", {FillAck: self.on_fill_ack}, on_up=self.on_position_up)
        else:
            log.warning("TRADEPLANE_POSITION_ADDR is not set: fills go to order sessions only")

    def ready(self) -> bool:
        return self.position is None or self.position.connected

    def on_route(self, connection: Connection, message: RouteOrder) -> None:
        self.inject_latency()
        self.publish(self.venue.submit(connection, *message))
        self.metrics.record(connection.received_ns)

    def on_cancel(self, connection: Connection, message: CancelRoute) -> None:
        self.inject_latency()
        self.publish(self.venue.cancel(connection, message.order_id))
        self.metrics.record(connection.received_ns)

    def on_replace(self, connection: Connection, message: ReplaceRoute) -> None:
        self.inject_latency()
        self.publish(self.venue.replace(connection, message.order_id, message.quantity, message.price))
        self.metrics.record(connection.received_ns)

    def publish(self, events: list[VenueEvent]) -> None:
        now = time.time_ns()
        for event in events:
            if event.exec_type == NEW:
                continue  # order acknowledged its client already; the venue's ack adds nothing
            owner = event.owner
            if isinstance(owner, Connection) and owner.connected:
                owner.send(
                    VenueReport(
                        event.order_id,
                        event.exec_type,
                        event.reason,
                        event.last_quantity,
                        event.last_price,
                        event.leaves_quantity,
                    )
                )
            if event.exec_type == TRADE:
                self.fill_sequence += 1
                fill = Fill(
                    self.source,
                    self.fill_sequence,
                    event.account,
                    event.symbol,
                    event.side,
                    event.last_quantity,
                    event.last_price,
                    event.order_id,
                    now,
                )
                self.unacked.append(fill)
                if self.position is not None:
                    self.position.send_later(fill)

    def on_fill_ack(self, connection: Connection, ack: FillAck) -> None:
        if ack.source != self.source:
            return
        unacked = self.unacked
        while unacked and unacked[0].fill_sequence <= ack.fill_sequence:
            unacked.popleft()

    def on_position_up(self, connection: Connection) -> None:
        if self.unacked:
            log.info("resending unacknowledged fills", extra=fields(fills=len(self.unacked)))
        for fill in self.unacked:
            connection.send(fill)

    def session_lost(self, connection: Connection) -> None:
        events = self.venue.cancel_owner(connection, int(Reason.CANCELED_ON_DISCONNECT))
        if events:
            log.info("canceled the orders of a lost session", extra=fields(orders=len(events)))

    async def drain(self) -> None:
        for session in list(self.sessions):
            self.publish(self.venue.cancel_owner(session, int(Reason.CANCELED_ON_DISCONNECT)))
        if self.position is not None:
            await wait_until(lambda: not self.unacked, self.settings.drainTimeoutSeconds)
            if self.unacked:
                log.error(
                    "stopping with fills position has not acknowledged", extra=fields(fills=len(self.unacked))
                )

    def status(self) -> dict[str, Any]:
        return {"fills": self.fill_sequence, "unackedFills": len(self.unacked), "source": self.source}
