"""Execution: routes orders to a venue behind the `Venue` interface and appends every fill to the event log.

The shipped venue is simulated (`matching.MatchingEngine`, price-time priority), so the stack trades end
to end. Orders are scoped by the order-service connection that routed them; when that connection drops,
its resting orders are canceled. Fills carry (source, fill_sequence): source is this process's start
time, the sequence counts its fills.

A trade is reported to the order service only once the event log has its fills: the fills of one loop
turn are appended as one event per partition (group commit), and every report to the same order
connection queued after them waits too, so reports keep their order. Retries carry the same event id, so
a lost acknowledgement never stores a fill twice. Without TRADEPLANE_EVENT_LOG, fills are reported at once
and kept nowhere.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Hashable
from typing import Any, Protocol

from tradeplane_services.config import Environment
from tradeplane_services.eventlog import Append, EventLog, partition_of
from tradeplane_services.matching import MatchingEngine, VenueEvent
from tradeplane_services.protocol import (
    CancelRoute,
    ExecType,
    Fill,
    FrameRun,
    Reason,
    ReplaceRoute,
    RouteOrder,
    VenueReport,
    layout_of,
)
from tradeplane_services.runtime import (
    RUN_MINIMUM,
    Connection,
    Service,
    cancel_and_wait,
    fields,
    log,
    wait_until,
)
from tradeplane_services.settings import ExecutionSettings

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

    def submit_run(self, owner: Hashable, frames: bytes) -> list[VenueEvent] | None:
        """RouteOrder frames each submitted as `submit` would, and the events they caused but the
        acknowledgements (the router acknowledged them); None, nothing done, when a frame breaks a rule."""
        ...

    def cancel(self, owner: Hashable, order_id: int, reason: int = 0) -> list[VenueEvent]: ...

    def replace(self, owner: Hashable, order_id: int, quantity: int, price: int) -> list[VenueEvent]: ...

    def cancel_owner(self, owner: Hashable, reason: int) -> list[VenueEvent]: ...


VENUES: dict[str, type[Venue]] = {"simulated": MatchingEngine}


class ExecutionService(Service[ExecutionSettings]):
    name = "execution"

    def __init__(self, environment: Environment, settings: ExecutionSettings) -> None:
        super().__init__(environment, settings)
        self.venue: Venue = VENUES[settings.venue]()
        self.batch_types = {layout_of(RouteOrder).type_id: RUN_MINIMUM}
        self.handlers = {
            RouteOrder: self.on_route,
            CancelRoute: self.on_cancel,
            ReplaceRoute: self.on_replace,
        }
        self.source = time.time_ns()
        self.fill_sequence = 0
        self.stored_fills = 0
        self.metrics.orders = self.metrics.fills = 0  # exported from the start: a fill ratio's inputs
        self.event_log: EventLog | None = None
        self.fills: list[Fill] = []  # this turn's fills, not yet handed to the log
        self.held: list[tuple[Connection, VenueReport]] = []  # reports waiting for fills before them
        self.committing: asyncio.Task[None] | None = None
        if environment.event_log:
            self.event_log = EventLog(
                environment.event_log, environment.event_log_replicas, "execution", environment.revision
            )
        else:
            log.warning("TRADEPLANE_EVENT_LOG is not set: fills are reported but kept nowhere")

    async def start(self) -> None:
        if self.event_log is not None:
            await self.event_log.open()

    def ready(self) -> bool:
        return self.event_log is None or self.event_log.connected

    def on_route(self, connection: Connection, message: RouteOrder) -> None:
        self.inject_latency()
        self.metrics.orders = (self.metrics.orders or 0) + 1
        self.publish(self.venue.submit(connection, *message))
        self.metrics.record(connection.received_ns)

    def on_run(self, connection: Connection, run: FrameRun) -> None:
        """A read's RouteOrders (the only batched type) submitted in one call to the venue."""
        events = self.venue.submit_run(connection, run.data)
        if events is None:
            connection.dispatch_one_by_one(run)
            return
        self.inject_latency(run.frames)
        self.metrics.orders = (self.metrics.orders or 0) + run.frames
        self.publish(events)
        self.metrics.record(connection.received_ns, run.frames)

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
            if event.exec_type == TRADE:
                self.fill_sequence += 1
                self.metrics.fills = (self.metrics.fills or 0) + 1
                if self.event_log is not None:
                    self.fills.append(
                        Fill(
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
                    )
            owner = event.owner
            if not isinstance(owner, Connection):
                continue
            report = VenueReport(
                event.order_id,
                event.exec_type,
                event.reason,
                event.last_quantity,
                event.last_price,
                event.leaves_quantity,
            )
            if self.committing is not None or self.fills:
                self.held.append((owner, report))
            elif owner.connected:
                owner.send(report)
        if self.fills and self.committing is None:
            self.committing = asyncio.get_running_loop().create_task(self._commit())

    async def _commit(self) -> None:
        """Append the fills queued so far, then release the reports queued with them; again while more
        came in meanwhile."""
        assert self.event_log is not None
        while self.fills:
            fills, self.fills = self.fills, []
            reports, self.held = self.held, []
            await self.event_log.append(self._events(fills))
            self.stored_fills += len(fills)
            for owner, report in reports:
                if owner.connected:
                    owner.send(report)
        reports, self.held = self.held, []
        for owner, report in reports:
            if owner.connected:
                owner.send(report)
        self.committing = None

    def _events(self, fills: list[Fill]) -> list[Append]:
        """One event per partition; its id names the source and its first fill, which no other event has."""
        by_partition: dict[int, list[Fill]] = defaultdict(list)
        for fill in fills:
            by_partition[partition_of(fill.account)].append(fill)
        return [
            Append("fill", partition, group, f"fill-{self.source}-{group[0].fill_sequence}")
            for partition, group in by_partition.items()
        ]

    def session_lost(self, connection: Connection) -> None:
        events = self.venue.cancel_owner(connection, int(Reason.CANCELED_ON_DISCONNECT))
        if events:
            log.info("canceled the orders of a lost session", extra=fields(orders=len(events)))

    async def drain(self) -> None:
        for session in list(self.sessions):
            self.publish(self.venue.cancel_owner(session, int(Reason.CANCELED_ON_DISCONNECT)))
        await wait_until(lambda: self.committing is None, self.settings.drainTimeoutSeconds)
        if self.committing is not None:
            log.error("stopping with fills the event log has not stored", extra=fields(fills=self.unstored))

    async def stop(self) -> None:
        await cancel_and_wait(self.committing)
        if self.event_log is not None:
            await self.event_log.close()

    @property
    def unstored(self) -> int:
        return self.fill_sequence - self.stored_fills if self.event_log is not None else 0

    def status(self) -> dict[str, Any]:
        return {"fills": self.fill_sequence, "unstoredFills": self.unstored, "source": self.source}
