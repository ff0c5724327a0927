"""Order entry: the order lifecycle, a risk check before routing, cancel/replace, cancel on disconnect.

Lifecycle (OrderStatus): PENDING_NEW while risk decides; NEW once acknowledged (ExecutionReport NEW) and
routed to execution; PARTIALLY_FILLED / FILLED as trades arrive; CANCELED or REJECTED. Client order ids
are unique per session for the session's life, the ids of cancels and replaces included (FIX style: a
replace gives the order a new client order id).

`OrderManager` holds the rules and talks through three callables (to the client session, to risk, to the
venue), so it runs without sockets in unit tests; `OrderService` wires it to connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tradeplane_services.config import ConfigError, Environment, RingAddress, parse_address
from tradeplane_services.eventlog import EventLog, partition_of
from tradeplane_services.partitions import LeaseTable, describe_owners
from tradeplane_services.protocol import (
    CancelOrder,
    CancelRoute,
    ExecType,
    ExecutionReport,
    KillSwitchState,
    KillSwitchStatus,
    NewOrder,
    OrderStatus,
    Reason,
    ReplaceOrder,
    ReplaceRoute,
    RiskCheck,
    RiskResult,
    RiskUpdate,
    RouteOrder,
    VenueReport,
)
from tradeplane_services.ringtransport import ring_serves
from tradeplane_services.runtime import (
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

PENDING_NEW, NEW, PARTIALLY_FILLED, FILLED, CANCELED, REJECTED = (int(s) for s in OrderStatus)
OK, RISK_UNAVAILABLE = int(Reason.OK), int(Reason.RISK_UNAVAILABLE)
PARTITION_TAKEOVER = int(Reason.PARTITION_TAKEOVER)
E_NEW, E_REJECTED, E_TRADE, E_CANCELED, E_REPLACED, E_CANCEL_REJECTED = (int(e) for e in ExecType)
OPEN = frozenset((NEW, PARTIALLY_FILLED))


class Session:
    """A client connection's orders: every client order id it used, and its orders still alive."""

    __slots__ = ("connection", "live", "used")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.used: set[int] = set()
        self.live: dict[int, Order] = {}


class Change:
    """A cancel or replace waiting for the venue (or for risk, for a replace)."""

    __slots__ = ("client_order_id", "price", "quantity", "reason", "received_ns")

    def __init__(self, client_order_id: int, received_ns: int, quantity: int = 0, price: int = 0) -> None:
        self.client_order_id = client_order_id
        self.received_ns = received_ns
        self.quantity = quantity  # 0: a cancel
        self.price = price
        self.reason = int(Reason.OK)


class Order:
    __slots__ = (
        "account",
        "change",
        "client_order_id",
        "filled",
        "order_id",
        "order_type",
        "price",
        "quantity",
        "received_ns",
        "session",
        "side",
        "status",
        "symbol",
        "time_in_force",
    )

    def __init__(self, order_id: int, session: Session | None, message: NewOrder, received_ns: int) -> None:
        self.order_id = order_id
        self.session = session
        self.client_order_id = message.client_order_id
        self.account = message.account
        self.symbol = message.symbol
        self.side = message.side
        self.order_type = message.order_type
        self.time_in_force = message.time_in_force
        self.quantity = message.quantity
        self.price = message.price
        self.filled = 0
        self.status = PENDING_NEW
        self.received_ns = received_ns
        self.change: Change | None = None


Sink = Callable[[Any], bool]
# To risk: the message and the account it concerns (which picks the risk replica); OK or why it cannot go.
RiskSink = Callable[[RiskCheck | RiskUpdate, int], int]


def _risk_check(order: Order, quantity: int, price: int, is_replace: int) -> RiskCheck:
    """What risk is asked about `order`: a new order, or a replace (quantity: what may still trade)."""
    return RiskCheck(
        order.order_id, order.account, order.symbol, order.side, order.order_type, quantity, price, is_replace
    )


class OrderManager:
    """Order state and rules. `report(session, ExecutionReport)`, `to_risk(msg, account)`, `to_venue(msg)`
    do I/O; to_risk answers OK or the Reason the message cannot reach risk, to_venue False when the venue
    is unreachable."""

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
        self.risk_timeout_ns = risk_timeout_ns
        # Unique across replicas and restarts: a random 24-bit prefix, a 40-bit counter.
        prefix = id_prefix if id_prefix is not None else int.from_bytes(os.urandom(3), "little")
        self.next_order_id = prefix << 40
        self.orders: dict[int, Order] = {}  # order_id -> every order not yet terminal
        self.awaiting_risk: deque[tuple[int, int]] = deque()  # (deadline ns, order_id), FIFO
        self.accepting = True
        self.kill_switch = int(KillSwitchState.ACTIVE)

    # --- client requests --------------------------------------------------------------------------

    def new_order(self, session: Session, message: NewOrder, received_ns: int) -> None:
        client_order_id = message.client_order_id
        if client_order_id in session.used:
            self._refuse(session, message, Reason.DUPLICATE_CLIENT_ORDER_ID, received_ns)
            return
        session.used.add(client_order_id)
        if not self.accepting:
            self._refuse(session, message, Reason.SHUTTING_DOWN, received_ns)
            return
        self.next_order_id += 1
        order = Order(self.next_order_id, session, message, received_ns)
        unreachable = self.to_risk(
            _risk_check(order, order.quantity, order.price, is_replace=0), order.account
        )
        if unreachable:
            self._refuse(session, message, Reason(unreachable), received_ns, ok=False)
            return
        self.orders[order.order_id] = order
        session.live[client_order_id] = order
        self.awaiting_risk.append((received_ns + self.risk_timeout_ns, order.order_id))

    def cancel(self, session: Session, message: CancelOrder, received_ns: int) -> None:
        order = self._changeable(session, message.client_order_id, message.orig_client_order_id, received_ns)
        if order is None:
            return
        order.change = Change(message.client_order_id, received_ns)
        if not self.to_venue(CancelRoute(order.order_id)):
            self._venue_lost_order(order)

    def replace(self, session: Session, message: ReplaceOrder, received_ns: int) -> None:
        order = self._changeable(session, message.client_order_id, message.orig_client_order_id, received_ns)
        if order is None:
            return
        order.change = Change(message.client_order_id, received_ns, message.quantity, message.price)
        if message.quantity <= order.filled:
            # Down to what already traded: only less exposure, nothing for risk to check.
            self._route_replace(order)
            return
        check = _risk_check(order, message.quantity - order.filled, message.price, is_replace=1)
        unreachable = self.to_risk(check, order.account)
        if unreachable:
            self._reject_change(order, Reason(unreachable))
            self.metrics.record(received_ns, ok=False)

    def _changeable(
        self, session: Session, client_order_id: int, original: int, received_ns: int
    ) -> Order | None:
        reason = None
        order = session.live.get(original)
        if client_order_id in session.used:
            reason = Reason.DUPLICATE_CLIENT_ORDER_ID
        elif order is None:
            reason = Reason.ORDER_NOT_OPEN if original in session.used else Reason.UNKNOWN_ORDER
        elif order.change is not None or order.status == PENDING_NEW:
            reason = Reason.CHANGE_PENDING
        session.used.add(client_order_id)
        if reason is None:
            return order
        self.report(
            session,
            ExecutionReport(
                client_order_id,
                order.order_id if order else 0,
                E_CANCEL_REJECTED,
                order.status if order else REJECTED,
                int(reason),
                order.symbol if order else b"\0" * 8,
                order.side if order else 0,
                0,
                0,
                order.filled if order else 0,
                order.quantity - order.filled if order else 0,
                order.price if order else 0,
            ),
        )
        self.metrics.record(received_ns)
        return None

    # --- risk answers -----------------------------------------------------------------------------

    def risk_result(self, message: RiskResult) -> None:
        order = self.orders.get(message.order_id)
        if order is None:
            return
        if order.status == PENDING_NEW:
            self._risk_decided_new(order, message.reason)
        elif order.change is not None and order.change.quantity:
            if message.reason:
                received_ns = order.change.received_ns
                self._reject_change(order, Reason(message.reason))
                self.metrics.record(received_ns)
            else:
                self._route_replace(order)

    def _risk_decided_new(self, order: Order, reason: int) -> None:
        session = order.session
        if reason:
            order.status = REJECTED
            self._retire(order)
            if session is not None:
                self.report(session, self._execution_report(order, E_REJECTED, reason))
            self.metrics.record(order.received_ns)
            return
        if session is None:  # the client left while risk was deciding
            self._release(order)
            return
        route = RouteOrder(
            order.order_id,
            order.account,
            order.symbol,
            order.side,
            order.order_type,
            order.time_in_force,
            order.quantity,
            order.price,
        )
        if not self.to_venue(route):
            order.status = REJECTED
            self._release(order)
            self.report(session, self._execution_report(order, E_REJECTED, Reason.VENUE_UNAVAILABLE))
            self.metrics.record(order.received_ns, ok=False)
            return
        order.status = NEW
        self.report(session, self._execution_report(order, E_NEW))
        self.metrics.record(order.received_ns)

    def expire_risk_checks(self, now_ns: int) -> None:
        """Orders risk did not answer in time are rejected: fail closed."""
        waiting = self.awaiting_risk
        while waiting and waiting[0][0] <= now_ns:
            _, order_id = waiting.popleft()
            order = self.orders.get(order_id)
            if order is not None and order.status == PENDING_NEW:
                self._risk_unanswered(order)

    def risk_lost(self, served: Callable[[int], bool] = lambda account: True) -> None:
        """A risk replica went away: the orders it was deciding for (by account) are rejected."""
        for order in [o for o in self.orders.values() if o.status == PENDING_NEW and served(o.account)]:
            self._risk_unanswered(order)

    def _risk_unanswered(self, order: Order) -> None:
        order.status = REJECTED
        self._retire(order)
        if order.session is not None:
            self.report(order.session, self._execution_report(order, E_REJECTED, Reason.RISK_UNAVAILABLE))
        self.metrics.record(order.received_ns, ok=False)
        # Risk may have booked it before going quiet.
        self.to_risk(RiskUpdate(order.order_id, 0, 0, 1), order.account)

    # --- venue reports ----------------------------------------------------------------------------

    def venue_report(self, message: VenueReport) -> None:
        order = self.orders.get(message.order_id)
        if order is None:
            return
        exec_type = message.exec_type
        if exec_type == E_TRADE:
            order.filled += message.last_quantity
            done = order.filled >= order.quantity
            order.status = FILLED if done else PARTIALLY_FILLED
            update = RiskUpdate(order.order_id, message.last_quantity, message.last_price, int(done))
            self.to_risk(update, order.account)
            if order.session is not None:
                self.report(
                    order.session,
                    ExecutionReport(
                        order.client_order_id,
                        order.order_id,
                        E_TRADE,
                        order.status,
                        0,
                        order.symbol,
                        order.side,
                        message.last_quantity,
                        message.last_price,
                        order.filled,
                        order.quantity - order.filled,
                        order.price,
                    ),
                )
            if done:
                self._retire(order)
        elif exec_type == E_CANCELED:
            change = order.change
            order.status = CANCELED
            reason = message.reason or (change.reason if change else 0)
            if change is not None:
                self._rename(order, change.client_order_id)
            self._release(order)
            if order.session is not None:
                self.report(order.session, self._execution_report(order, E_CANCELED, reason))
            if change is not None:
                self.metrics.record(change.received_ns)
        elif exec_type == E_REPLACED:
            change = order.change
            if change is None:
                return
            self._rename(order, change.client_order_id)
            order.quantity = change.quantity
            order.price = change.price
            order.change = None
            done = message.leaves_quantity == 0
            if done:
                order.status = FILLED if order.filled >= order.quantity else CANCELED
                self._release(order)
            if order.session is not None:
                self.report(order.session, self._execution_report(order, E_REPLACED))
            self.metrics.record(change.received_ns)
        elif exec_type == E_CANCEL_REJECTED:
            if order.change is not None:
                self._reject_change(order, Reason(message.reason or Reason.ORDER_NOT_OPEN))
        elif exec_type == E_REJECTED:
            order.status = REJECTED
            self._release(order)
            if order.session is not None:
                self.report(order.session, self._execution_report(order, E_REJECTED, message.reason))

    def venue_lost(self) -> None:
        """The venue cancels the orders of a connection it lost; say so to their owners."""
        for order in [o for o in self.orders.values() if o.status in OPEN]:
            self._venue_lost_order(order)

    def _venue_lost_order(self, order: Order) -> None:
        order.status = CANCELED
        self._release(order)
        if order.session is not None:
            self.report(order.session, self._execution_report(order, E_CANCELED, Reason.VENUE_UNAVAILABLE))

    # --- bulk cancels -----------------------------------------------------------------------------

    def session_lost(self, session: Session) -> None:
        """Cancel on disconnect: every open order of the session goes; its reports go nowhere."""
        for order in list(session.live.values()):
            order.session = None
            if order.status in OPEN and order.change is None:
                order.change = Change(order.client_order_id, time.perf_counter_ns())
                order.change.reason = int(Reason.CANCELED_ON_DISCONNECT)
                if not self.to_venue(CancelRoute(order.order_id)):
                    self._venue_lost_order(order)
        session.live.clear()

    def cancel_all(self, reason: Reason) -> int:
        """Cancel every open order (kill switch HALTED, shutdown); the number of cancels sent."""
        sent = 0
        for order in list(self.orders.values()):
            if order.status in OPEN and order.change is None:
                order.change = Change(order.client_order_id, time.perf_counter_ns())
                order.change.reason = int(reason)
                if self.to_venue(CancelRoute(order.order_id)):
                    sent += 1
                else:
                    self._venue_lost_order(order)
        return sent

    def set_kill_switch(self, state: int) -> None:
        previous, self.kill_switch = self.kill_switch, state
        if state == KillSwitchState.HALTED and previous != state:
            sent = self.cancel_all(Reason.CANCELED_BY_KILL_SWITCH)
            log.warning("kill switch HALTED: canceling open orders", extra=fields(cancels=sent))

    # --- helpers ----------------------------------------------------------------------------------

    def _route_replace(self, order: Order) -> None:
        change = order.change
        assert change is not None
        if not self.to_venue(ReplaceRoute(order.order_id, change.quantity, change.price)):
            self._venue_lost_order(order)

    def _reject_change(self, order: Order, reason: Reason) -> None:
        change = order.change
        order.change = None
        if order.session is not None and change is not None:
            report = self._execution_report(order, E_CANCEL_REJECTED, reason)
            self.report(order.session, report._replace(client_order_id=change.client_order_id))

    def _release(self, order: Order) -> None:
        """The order can trade no more: forget it and free its risk exposure."""
        self._retire(order)
        self.to_risk(RiskUpdate(order.order_id, 0, 0, 1), order.account)

    def _retire(self, order: Order) -> None:
        self.orders.pop(order.order_id, None)
        if order.session is not None:
            order.session.live.pop(order.client_order_id, None)

    @staticmethod
    def _rename(order: Order, client_order_id: int) -> None:
        """A cancel or replace took effect: the order answers to the request's client order id now."""
        if order.session is not None and order.session.live.pop(order.client_order_id, None) is order:
            order.session.live[client_order_id] = order
        order.client_order_id = client_order_id

    def _refuse(
        self, session: Session, message: NewOrder, reason: Reason, received_ns: int, ok: bool = True
    ) -> None:
        self.report(
            session,
            ExecutionReport(
                message.client_order_id,
                0,
                E_REJECTED,
                REJECTED,
                int(reason),
                message.symbol,
                message.side,
                0,
                0,
                0,
                0,
                message.price,
            ),
        )
        self.metrics.record(received_ns, ok=ok)

    @staticmethod
    def _execution_report(order: Order, exec_type: int, reason: int = 0) -> ExecutionReport:
        leaves = order.quantity - order.filled if order.status in OPEN or order.status == PENDING_NEW else 0
        return ExecutionReport(
            order.client_order_id,
            order.order_id,
            exec_type,
            order.status,
            int(reason),
            order.symbol,
            order.side,
            0,
            0,
            order.filled,
            leaves,
            order.price,
        )


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

    def on_cancel(self, connection: Connection, message: CancelOrder) -> None:
        self.inject_latency()
        self.manager.cancel(connection.session, message, connection.received_ns)

    def on_replace(self, connection: Connection, message: ReplaceOrder) -> None:
        self.inject_latency()
        self.manager.replace(connection.session, message, connection.received_ns)

    def on_risk_result(self, connection: Connection, message: RiskResult) -> None:
        self.manager.risk_result(message)
        self.risk.decided(message.order_id, message.reason, message.order_id in self.manager.orders)

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
        await wait_until(lambda: not any(o.status == PENDING_NEW for o in manager.orders.values()), 5.0)
        sent = manager.cancel_all(Reason.CANCELED_ON_DISCONNECT)
        log.info("draining: canceling resting orders", extra=fields(cancels=sent))
        await wait_until(lambda: not manager.orders, self.settings.drainTimeoutSeconds)

    async def stop(self) -> None:
        await self.risk.stop()
        await cancel_and_wait(self._sweeper)
        if self.risk_routes is not None:
            await self.risk_routes.stop()

    def status(self) -> dict[str, Any]:
        manager = self.manager
        return {
            "openOrders": len(manager.orders),
            "killSwitch": KillSwitchState(manager.kill_switch).name,
            "riskPartitions": self.risk_routes.reachable() if self.risk_routes else None,
        }
