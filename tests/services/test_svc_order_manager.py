"""The order lifecycle rules, driven message by message without sockets."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from tradeplane_services.order import OrderManager, Session
from tradeplane_services.protocol import (
    CancelOrder,
    CancelRoute,
    ExecType,
    ExecutionReport,
    KillSwitchState,
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
from tradeplane_services.runtime import RequestMetrics

AAPL = b"AAPL\0\0\0\0"
MS = 1_000_000


class Harness:
    def __init__(self) -> None:
        self.reports: list[tuple[Session, ExecutionReport]] = []
        self.to_risk: list[Any] = []
        self.to_venue: list[Any] = []
        self.risk_up = self.venue_up = True
        self.metrics = RequestMetrics(CollectorRegistry(), "order", "test")
        self.manager = OrderManager(
            lambda session, report: self.reports.append((session, report)),
            lambda m, account: (
                0 if self.risk_up and (self.to_risk.append(m) or True) else int(Reason.RISK_UNAVAILABLE)
            ),
            lambda m: self.venue_up and (self.to_venue.append(m) or True),
            self.metrics,
            risk_timeout_ns=100 * MS,
            id_prefix=0,
        )
        self.session = Session("client")

    def new(self, client_order_id: int, quantity: int = 100, now: int = 0) -> None:
        message = NewOrder(client_order_id, 7, AAPL, 1, 1, 1, quantity, 1_900_000)
        self.manager.new_order(self.session, message, now)

    def last(self) -> ExecutionReport:
        return self.reports[-1][1]

    def exec_types(self) -> list[int]:
        return [report.exec_type for _, report in self.reports]


def test_new_order_goes_to_risk_then_is_acked_and_routed() -> None:
    h = Harness()
    h.new(1)
    check = h.to_risk[-1]
    assert isinstance(check, RiskCheck) and check.quantity == 100 and not check.is_replace
    assert h.reports == []
    h.manager.risk_result(RiskResult(check.order_id, 0))
    assert (h.last().exec_type, h.last().order_status, h.last().leaves_quantity) == (ExecType.NEW, 2, 100)
    assert isinstance(h.to_venue[-1], RouteOrder) and h.to_venue[-1].order_id == check.order_id
    assert h.metrics.ok == 1


def test_a_risk_refusal_is_a_reject_with_the_reason() -> None:
    h = Harness()
    h.new(1)
    h.manager.risk_result(RiskResult(h.to_risk[-1].order_id, int(Reason.PRICE_COLLAR)))
    assert (h.last().exec_type, h.last().reason) == (ExecType.REJECTED, Reason.PRICE_COLLAR)
    assert h.to_venue == [] and h.manager.orders == {}


def test_fills_move_status_and_tell_risk_and_the_last_fill_retires_the_order() -> None:
    h = Harness()
    h.new(1)
    order_id = h.to_risk[-1].order_id
    h.manager.risk_result(RiskResult(order_id, 0))
    h.manager.venue_report(VenueReport(order_id, int(ExecType.TRADE), 0, 40, 1_900_000, 60))
    assert (h.last().order_status, h.last().cumulative_quantity, h.last().last_quantity) == (
        OrderStatus.PARTIALLY_FILLED,
        40,
        40,
    )
    assert h.to_risk[-1] == RiskUpdate(order_id, 40, 1_900_000, 0)
    h.manager.venue_report(VenueReport(order_id, int(ExecType.TRADE), 0, 60, 1_900_100, 0))
    assert h.last().order_status == OrderStatus.FILLED
    assert h.to_risk[-1] == RiskUpdate(order_id, 60, 1_900_100, 1)
    assert h.manager.orders == {} and h.session.live == {}


def test_client_order_ids_are_unique_per_session_for_every_request() -> None:
    h = Harness()
    h.new(1)
    h.new(1)
    assert (h.last().client_order_id, h.last().reason) == (1, Reason.DUPLICATE_CLIENT_ORDER_ID)
    other = Session("other")
    h.manager.new_order(other, NewOrder(1, 7, AAPL, 1, 1, 1, 10, 1_900_000), 0)
    assert len(h.to_risk) == 2, "another session may reuse the id"
    h.manager.risk_result(RiskResult(h.to_risk[0].order_id, 0))
    h.manager.cancel(h.session, CancelOrder(1, 1), 0)
    assert (h.last().exec_type, h.last().reason) == (
        ExecType.CANCEL_REJECTED,
        Reason.DUPLICATE_CLIENT_ORDER_ID,
    )


def test_replace_is_risk_checked_for_the_open_quantity_then_renames_the_order() -> None:
    h = Harness()
    h.new(1)
    order_id = h.to_risk[-1].order_id
    h.manager.risk_result(RiskResult(order_id, 0))
    h.manager.venue_report(VenueReport(order_id, int(ExecType.TRADE), 0, 30, 1_900_000, 70))
    h.manager.replace(h.session, ReplaceOrder(2, 1, 150, 1_910_000), 0)
    check = h.to_risk[-1]
    assert isinstance(check, RiskCheck) and (check.quantity, check.price, check.is_replace) == (
        120,
        1_910_000,
        1,
    )
    h.manager.cancel(h.session, CancelOrder(3, 1), 0)
    assert h.last().reason == Reason.CHANGE_PENDING
    h.manager.risk_result(RiskResult(order_id, 0))
    assert h.to_venue[-1] == ReplaceRoute(order_id, 150, 1_910_000)
    h.manager.venue_report(VenueReport(order_id, int(ExecType.REPLACED), 0, 0, 0, 120))
    assert (h.last().client_order_id, h.last().leaves_quantity, h.last().price) == (2, 120, 1_910_000)
    assert set(h.session.live) == {2}


def test_a_refused_replace_leaves_the_order_as_it_was() -> None:
    h = Harness()
    h.new(1)
    order_id = h.to_risk[-1].order_id
    h.manager.risk_result(RiskResult(order_id, 0))
    h.manager.replace(h.session, ReplaceOrder(2, 1, 500, 1_900_000), 0)
    h.manager.risk_result(RiskResult(order_id, int(Reason.POSITION_LIMIT)))
    assert (h.last().exec_type, h.last().client_order_id, h.last().reason) == (
        ExecType.CANCEL_REJECTED,
        2,
        Reason.POSITION_LIMIT,
    )
    h.manager.cancel(h.session, CancelOrder(3, 1), 0)
    assert h.to_venue[-1] == CancelRoute(order_id)


def test_unanswered_risk_checks_fail_closed() -> None:
    h = Harness()
    h.new(1, now=0)
    h.new(2, now=50 * MS)
    h.manager.expire_risk_checks(120 * MS)
    assert [(r.client_order_id, r.reason) for _, r in h.reports] == [(1, Reason.RISK_UNAVAILABLE)]
    assert h.to_risk[-1] == RiskUpdate(h.to_risk[0].order_id, 0, 0, 1), "risk may have booked it"
    h.risk_up = False
    h.new(3)
    assert h.last().reason == Reason.RISK_UNAVAILABLE
    assert h.metrics.errors == 2


def test_disconnect_cancels_open_orders_and_reports_go_nowhere() -> None:
    h = Harness()
    h.new(1)
    h.new(2)
    first, second = (c.order_id for c in h.to_risk)
    h.manager.risk_result(RiskResult(first, 0))
    h.manager.session_lost(h.session)
    assert h.to_venue[-1] == CancelRoute(first)
    h.manager.risk_result(RiskResult(second, 0))  # decided after the client left: never routed
    assert h.to_risk[-1] == RiskUpdate(second, 0, 0, 1)
    before = len(h.reports)
    h.manager.venue_report(VenueReport(first, int(ExecType.CANCELED), 0, 0, 0, 0))
    assert len(h.reports) == before and h.manager.orders == {}


def test_halted_kill_switch_cancels_every_open_order_once() -> None:
    h = Harness()
    for client_order_id in (1, 2):
        h.new(client_order_id)
        h.manager.risk_result(RiskResult(h.to_risk[-1].order_id, 0))
    h.manager.set_kill_switch(int(KillSwitchState.HALTED))
    h.manager.set_kill_switch(int(KillSwitchState.HALTED))
    assert [type(m) for m in h.to_venue].count(CancelRoute) == 2
    order_id = h.to_venue[-1].order_id
    h.manager.venue_report(VenueReport(order_id, int(ExecType.CANCELED), 0, 0, 0, 0))
    assert (h.last().order_status, h.last().reason) == (OrderStatus.CANCELED, Reason.CANCELED_BY_KILL_SWITCH)


def test_losing_the_venue_cancels_routed_orders() -> None:
    h = Harness()
    h.new(1)
    h.manager.risk_result(RiskResult(h.to_risk[-1].order_id, 0))
    h.manager.venue_lost()
    assert (h.last().exec_type, h.last().reason) == (ExecType.CANCELED, Reason.VENUE_UNAVAILABLE)
    h.venue_up = False
    h.new(2)
    h.manager.risk_result(RiskResult(h.to_risk[-1].order_id, 0))
    assert (h.last().exec_type, h.last().reason) == (ExecType.REJECTED, Reason.VENUE_UNAVAILABLE)


def test_shutting_down_refuses_new_orders() -> None:
    h = Harness()
    h.manager.accepting = False
    h.new(1)
    assert h.last().reason == Reason.SHUTTING_DOWN and h.to_risk == []
