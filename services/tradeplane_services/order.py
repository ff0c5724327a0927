"""Order entry: the order lifecycle, a risk check before routing, cancel/replace, cancel on disconnect.

Lifecycle (OrderStatus): PENDING_NEW while risk decides; NEW once acknowledged (ExecutionReport NEW) and
routed to execution; PARTIALLY_FILLED / FILLED as trades arrive; CANCELED or REJECTED. Client order ids
are unique per session for the session's life, the ids of cancels and replaces included (FIX style: a
replace gives the order a new client order id).

The orders and the rules are the Rust core's `OrderBook` (core/src/orders.rs): each message is one call
that returns what to send. `OrderManager` sends it through three callables (to the client session, to
risk, to the venue), so it runs without sockets in unit tests; `OrderService` wires it to connections.
Under load a read's NewOrders, and a read of risk's answers, are one call each (`OrderService.on_run`,
`on_risk_results`): the book builds their checks, routes and reports as frames, one write a destination.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tradeplane_services import protocol
from tradeplane_services._wire import (
    ORDER_CHECK,
    ORDER_REPORT,
    ORDER_ROUTE,
    ORDER_UPDATE,
    ORDER_VENUE,
    OrderBook,
)
from tradeplane_services.config import ConfigError, Environment, RingAddress, parse_address
from tradeplane_services.eventlog import PARTITIONS, EventLog, partition_of
from tradeplane_services.partitions import LeaseTable, describe_owners
from tradeplane_services.protocol import (
    CancelOrder,
    ExecutionReport,
    FrameRun,
    KillSwitchState,
    KillSwitchStatus,
    NewOrder,
    OrderStatus,
    Reason,
    ReplaceOrder,
    RiskCheck,
    RiskResult,
    RiskUpdate,
    VenueReport,
    layout_of,
)
from tradeplane_services.ringtransport import ring_serves
from tradeplane_services.runtime import (
    RUN_MINIMUM,
    Connection,
    PeerLink,
    RequestMetrics,
    Service,
    cancel_and_wait,
    fields,
    log,
    run_for_life,
    wait_until,
)
from tradeplane_services.settings import OrderSettings
from tradeplane_services.split import AccountSplit, routing_route

PENDING_NEW = int(OrderStatus.PENDING_NEW)
OK, RISK_UNAVAILABLE = int(Reason.OK), int(Reason.RISK_UNAVAILABLE)
UNBOUNDED = sys.maxsize  # maxChecksInFlight unset
PARTITION_TAKEOVER = int(Reason.PARTITION_TAKEOVER)
CHECK_DTYPE, CHECK_SIZE = layout_of(RiskCheck).dtype, layout_of(RiskCheck).size


class Session:
    """A client connection; the order book knows it by `id` once it sent its first request."""

    __slots__ = ("book", "connection", "id")
    _ids = itertools.count(1)

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.id = next(Session._ids)
        self.book: OrderBook | None = None

    @property
    def live(self) -> dict[int, int]:
        """Client order id -> order id of the session's orders still alive."""
        return self.book.live(self.id) if self.book is not None else {}


Sink = Callable[[Any], bool]
# To risk: the message and the account it concerns (which picks the risk replica); OK or why it cannot go.
RiskSink = Callable[[RiskCheck | RiskUpdate, int], int]


class OrderManager:
    """The order book (core/src/orders.rs holds the orders and rules) and the I/O of its decisions:
    `report(session, ExecutionReport)`, `to_risk(msg, account)`, `to_venue(msg)`. to_risk answers OK or
    the Reason the message cannot reach risk, to_venue False when the venue is unreachable."""

    def __init__(
        self,
        report: Callable[[Session, ExecutionReport], None],
        to_risk: RiskSink,
        to_venue: Sink,
        metrics: RequestMetrics,
        risk_timeout_ns: int,
        id_prefix: int | None = None,
    ) -> None:
        self.report = report
        self.to_risk = to_risk
        self.to_venue = to_venue
        self.metrics = metrics
        # Unique across replicas and restarts: a random 24-bit prefix, a 40-bit counter.
        prefix = id_prefix if id_prefix is not None else int.from_bytes(os.urandom(3), "little")
        self.book = OrderBook(protocol, risk_timeout_ns, prefix << 40)
        self.sessions: dict[int, Session] = {}  # by id: those the book may report to

    @property
    def risk_timeout_ns(self) -> int:
        return self.book.risk_timeout_ns

    @risk_timeout_ns.setter
    def risk_timeout_ns(self, value: int) -> None:
        self.book.risk_timeout_ns = value

    @property
    def accepting(self) -> bool:
        return self.book.accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self.book.accepting = value

    @property
    def kill_switch(self) -> int:
        return self.book.kill_switch

    @property
    def orders(self) -> dict[int, int]:
        """Order id -> status of every order not yet terminal."""
        return self.book.orders()

    def _register(self, session: Session) -> None:
        """A session's first request: the book may report to it from now on."""
        session.book = self.book
        self.sessions[session.id] = session

    def _apply(self, outcomes: list[tuple[int, int, Any]]) -> int:
        """Does what the book decided, in order; the number of cancels and replaces sent to the venue."""
        sent = 0
        for kind, target, message in outcomes:
            if kind == ORDER_REPORT:
                self.report(self.sessions[target], message)
            elif kind == ORDER_UPDATE:
                self.to_risk(message, target)
            elif kind == ORDER_CHECK:
                unreachable = self.to_risk(message, target)
                if unreachable:
                    self._apply(self.book.risk_unsent(message.order_id, unreachable))
            elif kind == ORDER_ROUTE:
                if not self.to_venue(message):
                    self._apply(self.book.venue_unsent(message.order_id))
                    break  # the acknowledgement after the route did not happen
            elif kind == ORDER_VENUE:
                if self.to_venue(message):
                    sent += 1
                else:
                    self._apply(self.book.venue_unsent(message.order_id))
            else:
                self.metrics.record(target, 1, message)
        return sent

    # --- client requests --------------------------------------------------------------------------

    def new_order(self, session: Session, message: NewOrder, received_ns: int) -> None:
        if session.book is None:
            self._register(session)
        self._apply(self.book.new_order(session.id, message, received_ns))

    def new_orders(
        self, session: Session, frames: bytes, received_ns: int, routes: list[int], unrouted: int
    ) -> list[bytearray] | None:
        """A run of NewOrder frames at once: the checks' frames per route (`OrderBook.new_order_run`),
        the rest done here; None, with nothing done, when a frame breaks a field rule."""
        if session.book is None:
            self._register(session)
        decided = self.book.new_order_run(session.id, frames, received_ns, routes, unrouted)
        if decided is None:
            return None
        checks, outcomes = decided
        self._apply(outcomes)
        return checks

    def checks_unsent(self, frames: bytearray, reason: int) -> None:
        """RiskCheck frames `new_orders` built could not be sent: their orders end as unsent checks do."""
        for order_id in np.frombuffer(frames, dtype=CHECK_DTYPE)["order_id"].tolist():
            self._apply(self.book.risk_unsent(order_id, reason))

    def cancel(self, session: Session, message: CancelOrder, received_ns: int) -> None:
        if session.book is None:
            self._register(session)
        self._apply(self.book.cancel(session.id, message, received_ns))

    def replace(self, session: Session, message: ReplaceOrder, received_ns: int) -> None:
        if session.book is None:
            self._register(session)
        self._apply(self.book.replace(session.id, message, received_ns))

    # --- risk answers -----------------------------------------------------------------------------

    def risk_result(self, message: RiskResult) -> None:
        self._apply(self.book.risk_result(message))

    def risk_results(self, frames: bytes) -> tuple[bytearray, list[tuple[Session, bytearray]]] | None:
        """A run of RiskResult frames at once: the frames for the venue and for each session
        (`OrderBook.risk_result_run`), the rest done here; None, with nothing done, when a frame breaks a
        field rule. Only while the venue is connected: a route that cannot be sent ends its order."""
        decided = self.book.risk_result_run(frames)
        if decided is None:
            return None
        venue, reports, outcomes = decided
        self._apply(outcomes)
        return venue, [(self.sessions[session], frames) for session, frames in reports]

    def expire_risk_checks(self, now_ns: int) -> None:
        """Orders risk did not answer in time are rejected: fail closed."""
        self._apply(self.book.expire_risk_checks(now_ns))

    def risk_lost(self, served: Callable[[int], bool] | None = None) -> None:
        """A risk replica went away: the orders it was deciding for (by account) are rejected."""
        self._apply(self.book.risk_lost(served))

    # --- venue reports ----------------------------------------------------------------------------

    def venue_report(self, message: VenueReport) -> None:
        self._apply(self.book.venue_report(message))

    def venue_lost(self) -> None:
        """The venue cancels the orders of a connection it lost; say so to their owners."""
        self._apply(self.book.venue_lost())

    # --- bulk cancels -----------------------------------------------------------------------------

    def session_lost(self, session: Session) -> None:
        """Cancel on disconnect: every open order of the session goes; its reports go nowhere."""
        if self.sessions.pop(session.id, None) is not None:
            session.book = None
            self._apply(self.book.session_lost(session.id, time.perf_counter_ns()))

    def cancel_all(self, reason: Reason) -> int:
        """Cancel every open order (kill switch HALTED, shutdown); the number of cancels sent."""
        return self._apply(self.book.cancel_all(int(reason), time.perf_counter_ns()))

    def set_kill_switch(self, state: int) -> None:
        cancels = self.book.set_kill_switch(state, time.perf_counter_ns())
        if cancels is not None:
            sent = self._apply(cancels)
            log.warning("kill switch HALTED: canceling open orders", extra=fields(cancels=sent))


class RiskRoutes:
    """With an event log, risk is partitioned (partitions.py): a session per risk replica, and every message
    about an account goes to the holder of its partition's lease, as the watched lease bucket says.

    A partition without a serving owner, or whose owner this replica cannot reach, is in takeover: its
    checks are refused with PARTITION_TAKEOVER, never sent elsewhere. A release that cannot go waits for
    the partition's next owner, so no reservation outlives its order."""

    def __init__(self, service: OrderService, event_log: EventLog) -> None:
        self.service = service
        self.event_log = event_log
        self.table = LeaseTable()
        self.links: dict[str, PeerLink] = {}  # by the address a lease names
        self.deferred: list[tuple[RiskUpdate, int]] = []
        self.task: asyncio.Task[None] | None = None
        self.closing: set[asyncio.Task[None]] = set()  # links being stopped (kept referenced until done)
        self._check_routes: tuple[int, list[PeerLink], list[int]] = (-1, [], [])  # lease table version, ...

    async def start(self) -> None:
        await self.event_log.open()
        self.task = run_for_life(self.table.follow(self.event_log), "watching the partition leases")

    @property
    def ready(self) -> bool:
        """Every partition has a serving owner this replica has a session to: a takeover makes order
        unready for its second or two, as it cannot take the orders of every account meanwhile."""
        if not self.table.synced.is_set():
            return False
        for lease in self.table.owners().values():
            link = None if lease is None or not lease.serving else self.links.get(lease.address)
            if link is None or not link.connected:
                return False
        return True

    def send(self, message: RiskCheck | RiskUpdate, account: int) -> int:
        if type(message) is RiskUpdate and not message.done:
            return OK  # a fill: risk reads fills from the log, where execution put them first
        lease = self.table.partition(partition_of(account))
        link = None if lease is None or not lease.serving else self._link(lease.address)
        if link is None:
            sent = False
        elif type(message) is RiskUpdate:
            sent = link.send_later(message)  # a release can share the next write
        else:
            sent = link.send(message)
        if sent:
            return OK
        if type(message) is RiskUpdate:
            self.deferred.append((message, account))
        return PARTITION_TAKEOVER

    def check_routes(self) -> tuple[list[PeerLink], list[int]]:
        """The links that take checks now, and each partition's index among them (-1: in takeover): what
        `send` decides for a check, for every account at once; derived again once the leases change."""
        if self._check_routes[0] != self.table.version:
            self._check_routes = (self.table.version, *self._derive_check_routes())
        return self._check_routes[1], self._check_routes[2]

    def _derive_check_routes(self) -> tuple[list[PeerLink], list[int]]:
        links: list[PeerLink] = []
        routes: list[int] = []
        for partition in range(PARTITIONS):
            lease = self.table.partition(partition)
            link = None if lease is None or not lease.serving else self._link(lease.address)
            if link is None:
                routes.append(-1)
                continue
            if link not in links:
                links.append(link)
            routes.append(links.index(link))
        return links, routes

    def sweep(self) -> None:
        """Sessions to every owner before its first order (a session takes a logon), none to addresses no
        lease names any more (replicas gone), and the releases that waited for an owner."""
        named = {lease.address for lease in self.table.owners().values() if lease is not None}
        for address in named:
            self._link(address)
        stable = self.service.risk.stable
        gone = [a for a, link in self.links.items() if a not in named and not link.connected]
        for address in [a for a in gone if self.links[a] is not stable]:
            link = self.links.pop(address)
            self.service.links.remove(link)
            closing = asyncio.get_running_loop().create_task(link.stop())
            self.closing.add(closing)
            closing.add_done_callback(self.closing.discard)
        deferred, self.deferred = self.deferred, []
        for message, account in deferred:
            self.send(message, account)

    def reachable(self) -> dict[str, Any]:
        """Partition -> owner, whether it serves, whether this replica has a session to it."""
        owners = describe_owners(self.table.owners())
        for partition, lease in self.table.owners().items():
            if lease is not None:
                link = self.links.get(lease.address)
                owners[str(partition)]["connected"] = link is not None and link.connected
        return owners

    def _link(self, address_text: str) -> PeerLink | None:
        link = self.links.get(address_text)
        if link is None and address_text == self.service.co_located_risk():
            link = self.links[address_text] = self.service.risk.stable  # its session over the rings
        if link is None:
            try:
                address = parse_address(address_text, "risk partition lease address")
            except ConfigError as error:
                log.error("lease names a bad address", extra=fields(error=str(error)))
                return None
            service = self.service
            link = PeerLink(
                f"risk {address_text}",
                address,
                {RiskResult: service.on_risk_result, KillSwitchStatus: service.on_kill_switch},
                service.metrics,
                service.credentials,
                on_down=lambda: self._lost(address_text),
                source=service.environment.bind,
                runs={RiskResult: service.on_risk_results},
            )
            self.links[address_text] = link
            service.links.append(link)  # stopped with the service's own links
            link.start()
        return link

    def _lost(self, address: str) -> None:
        def served_there(account: int) -> bool:
            lease = self.table.partition(partition_of(account))
            return lease is not None and lease.address == address

        self.service.manager.risk_lost(served_there)

    async def stop(self) -> None:
        await cancel_and_wait(self.task)
        await self.event_log.close()


class OrderService(Service[OrderSettings]):
    """Client sessions in; risk and execution links out."""

    name = "order"

    def __init__(self, environment: Environment, settings: OrderSettings) -> None:
        super().__init__(environment, settings)
        # Risk is reached through its stable and, during an order-flow canary, its canary revision; with
        # an event log the stable's checks go to the owner of the account's partition (firm-wide limits).
        self.risk = AccountSplit(
            self,
            "risk",
            {RiskResult: self.on_risk_result, KillSwitchStatus: self.on_kill_switch},
            self.on_risk_down,
            self.risk_answer_seconds,
            lambda message: (message.order_id, message.reason) if isinstance(message, RiskResult) else None,
            lambda order_id: RiskUpdate(order_id, 0, 0, 1),
            {RiskResult: self.on_risk_results},
        )
        self.risk_routes: RiskRoutes | None = None
        if environment.event_log:
            log_client = EventLog(environment.event_log, environment.event_log_replicas, "order")
            self.risk_routes = RiskRoutes(self, log_client)
        self.execution = self.link(
            "execution", {VenueReport: self.on_venue_report}, on_down=self.on_venue_down
        )
        self.manager = OrderManager(
            self.report,
            self.to_risk,
            self.execution.send,
            self.metrics,
            settings.riskTimeoutMillis * 1_000_000,
        )
        self.manager.book.max_checks_in_flight = settings.maxChecksInFlight or UNBOUNDED
        self.batch_types = {layout_of(NewOrder).type_id: RUN_MINIMUM}
        self.handlers = {
            NewOrder: self.on_new_order,
            CancelOrder: self.on_cancel,
            ReplaceOrder: self.on_replace,
        }
        self._sweeper: asyncio.Task[None] | None = None
        self.post_routes["/routing"] = routing_route(self)
        self.routes["/routing"] = self.routing_document

    async def start(self) -> None:
        if self.risk_routes is not None:
            await self.risk_routes.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now = time.perf_counter_ns()
            self.manager.expire_risk_checks(now)
            self.risk.sweep(now)
            if self.risk_routes is not None:
                self.risk_routes.sweep()

    def ready(self) -> bool:
        risk_ready = self.risk_routes.ready if self.risk_routes is not None else self.risk.connected
        return risk_ready and self.execution.connected

    def reconfigure(self, settings: OrderSettings) -> None:
        super().reconfigure(settings)
        self.manager.risk_timeout_ns = settings.riskTimeoutMillis * 1_000_000
        self.manager.book.max_checks_in_flight = settings.maxChecksInFlight or UNBOUNDED

    def logged_on(self, connection: Connection) -> None:
        connection.session = Session(connection)

    def session_lost(self, connection: Connection) -> None:
        self.manager.session_lost(connection.session)

    @staticmethod
    def report(session: Session, report: ExecutionReport) -> None:
        session.connection.send(report)

    def to_risk(self, message: RiskCheck | RiskUpdate, account: int) -> int:
        # A check goes to the revision its account is routed to; an exposure update to the revision that
        # booked the order. The stable's share goes to the partition's owner when there is an event log.
        # In a shadow rollout the canary gets its copy after the stable's message is on its way.
        link: PeerLink | None
        if isinstance(message, RiskUpdate):
            done = bool(message.done)
            link = self.risk.update_link(message.order_id, done)
            new_check = False
        else:
            done = False
            new_check = not message.is_replace
            link = self.risk.route(account, message.order_id, new_check)
        if link is None:  # the account's canary revision has no reachable pod: refused, not rerouted
            reached = RISK_UNAVAILABLE
        elif link is self.risk.stable and self.risk_routes is not None:
            reached = self.risk_routes.send(message, account)
        else:
            # An exposure update can share the next write; a check holds an order up.
            sent = link.send(message) if isinstance(message, RiskCheck) else link.send_later(message)
            reached = OK if sent else RISK_UNAVAILABLE
        # A check that could not be sent ends its order: the canary hears nothing of it either.
        self.risk.copy(message.order_id, message, new_check, done or reached != OK, reached == OK)
        return reached

    def risk_answer_seconds(self) -> float:
        """How long a risk check can stay unanswered before the sweeper rejects it, with a margin."""
        settings = self.settings
        return settings.riskTimeoutMillis / 1000 + 0.1

    def routing_document(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        document = {peer: split.document() for peer, split in self.splits.items()}
        return 200, "application/json", json.dumps(document).encode()

    def on_new_order(self, connection: Connection, message: NewOrder) -> None:
        self.inject_latency()
        self.manager.new_order(connection.session, message, connection.received_ns)

    def on_run(self, connection: Connection, run: FrameRun) -> None:
        """A run of NewOrders (the only batched type) decided in one call to the book, their checks sent
        as one write per risk link; one by one while the risk split follows orders one by one (a canary's
        share), or when a frame breaks a field rule (each error answered on its own)."""
        if not self.risk.follows_no_order:
            connection.dispatch_one_by_one(run)
            return
        if self.risk_routes is None:
            links, routes, unrouted = [self.risk.stable], [0], RISK_UNAVAILABLE
        else:
            links, routes = self.risk_routes.check_routes()
            unrouted = PARTITION_TAKEOVER
        self.inject_latency(run.frames)
        checks = self.manager.new_orders(
            connection.session, run.data, connection.received_ns, routes, unrouted
        )
        if checks is None:
            connection.dispatch_one_by_one(run)
            return
        for link, frames in zip(links, checks, strict=True):
            if not frames:
                continue
            if link.send_frames(frames):
                self.risk.routed_to_stable(len(frames) // CHECK_SIZE)
            else:
                self.manager.checks_unsent(frames, unrouted)

    def on_cancel(self, connection: Connection, message: CancelOrder) -> None:
        self.inject_latency()
        self.manager.cancel(connection.session, message, connection.received_ns)

    def on_replace(self, connection: Connection, message: ReplaceOrder) -> None:
        self.inject_latency()
        self.manager.replace(connection.session, message, connection.received_ns)

    def on_risk_result(self, connection: Connection, message: RiskResult) -> None:
        self.manager.risk_result(message)
        self.risk.decided(message.order_id, message.reason, message.order_id in self.manager.book)

    def on_risk_results(self, connection: Connection, run: FrameRun) -> None:
        """A run of the stable risk's answers decided in one call to the book, the routes sent as one
        write, each session's reports as one; one by one while the split follows orders one by one, the
        venue is not connected (each unsent route ends its order), or a frame breaks a field rule."""
        decided = None
        if self.risk.follows_no_order and self.execution.connected:
            decided = self.manager.risk_results(run.data)
        if decided is None:
            connection.dispatch_one_by_one(run)
            return
        venue, reports = decided
        if venue:
            self.execution.send_frames(venue)
        for session, frames in reports:
            session.connection.send_frames(frames)

    def on_kill_switch(self, connection: Connection, message: KillSwitchStatus) -> None:
        self.manager.set_kill_switch(message.state)

    def on_venue_report(self, connection: Connection, message: VenueReport) -> None:
        self.manager.venue_report(message)

    def co_located_risk(self) -> str | None:
        """The TCP address of the risk replica this one reaches over shared-memory rings, if any."""
        address = self.environment.peer("risk")
        return ring_serves(address.directory) if isinstance(address, RingAddress) else None

    def on_risk_down(self) -> None:
        self.manager.risk_lost()

    def on_venue_down(self) -> None:
        self.manager.venue_lost()

    async def drain(self) -> None:
        manager = self.manager
        manager.accepting = False
        await wait_until(lambda: PENDING_NEW not in manager.orders.values(), 5.0)
        sent = manager.cancel_all(Reason.CANCELED_ON_DISCONNECT)
        log.info("draining: canceling resting orders", extra=fields(cancels=sent))
        await wait_until(lambda: not manager.book, self.settings.drainTimeoutSeconds)

    async def stop(self) -> None:
        await self.risk.stop()
        await cancel_and_wait(self._sweeper)
        if self.risk_routes is not None:
            await self.risk_routes.stop()

    def status(self) -> dict[str, Any]:
        manager = self.manager
        return {
            "openOrders": len(manager.book),
            "checksInFlight": manager.book.checks_in_flight,
            "killSwitch": KillSwitchState(manager.kill_switch).name,
            "riskPartitions": self.risk_routes.reachable() if self.risk_routes else None,
        }
