"""The Rust order book (core/src/orders.rs) through its Python API: each call one message's transition,
answered with its outcomes (kind, target, message) in order."""

from __future__ import annotations

from typing import Any

import pytest

from tradeplane_services import protocol
from tradeplane_services._wire import (
    ORDER_CHECK,
    ORDER_RECORD,
    ORDER_REPORT,
    ORDER_ROUTE,
    ORDER_UPDATE,
    ORDER_VENUE,
    OrderBook,
)
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
    StreamDecoder,
    VenueReport,
)

AAPL = b"AAPL\0\0\0\0"
MS = 1_000_000
ALICE, BOB = 1, 2
Outcomes = list[tuple[int, int, Any]]


def new(client_order_id: int, quantity: int = 100, account: int = 7) -> NewOrder:
    return NewOrder(client_order_id, account, AAPL, 1, 1, 1, quantity, 1_900_000)


def reports(outcomes: Outcomes) -> list[ExecutionReport]:
    return [message for kind, _, message in outcomes if kind == ORDER_REPORT]


def routed(book: OrderBook, client_order_id: int, quantity: int = 100) -> int:
    """A new order of ALICE's, accepted by risk; its order id."""
    (check,) = book.new_order(ALICE, new(client_order_id, quantity), 0)
    order_id: int = check[2].order_id
    assert book.risk_result(RiskResult(order_id, 0))[0][0] == ORDER_ROUTE
    return order_id


@pytest.fixture
def book() -> OrderBook:
    return OrderBook(protocol, 100 * MS, 0)


def test_the_codes_are_protocol_pys() -> None:
    """The book reads its codes from protocol.py; the Rust tests' copy (orders.rs, protocol_codes) must
    be the same."""
    assert [int(s) for s in OrderStatus] == [1, 2, 3, 4, 5, 6]  # PENDING_NEW .. REJECTED
    assert [int(e) for e in ExecType] == [1, 2, 3, 4, 5, 6]  # NEW .. CANCEL_REJECTED
    lifecycle = (
        Reason.DUPLICATE_CLIENT_ORDER_ID,
        Reason.UNKNOWN_ORDER,
        Reason.ORDER_NOT_OPEN,
        Reason.CHANGE_PENDING,
        Reason.RISK_UNAVAILABLE,
        Reason.VENUE_UNAVAILABLE,
        Reason.SHUTTING_DOWN,
        Reason.CANCELED_ON_DISCONNECT,
        Reason.CANCELED_BY_KILL_SWITCH,
    )
    assert [int(r) for r in lifecycle] == list(range(10, 19))
    assert (KillSwitchState.ACTIVE, KillSwitchState.HALTED) == (1, 3)


def test_new_order_risk_ok_route_and_fills(book: OrderBook) -> None:
    outcomes = book.new_order(ALICE, new(1), 5)
    assert outcomes == [(ORDER_CHECK, 7, RiskCheck(1, 7, AAPL, 1, 1, 100, 1_900_000, 0))]
    assert type(outcomes[0][2]) is RiskCheck
    assert book.orders() == {1: OrderStatus.PENDING_NEW} and book.live(ALICE) == {1: 1}
    kinds = [kind for kind, _, _ in book.risk_result(RiskResult(1, 0))]
    assert kinds == [ORDER_ROUTE, ORDER_REPORT, ORDER_RECORD]
    outcomes = book.risk_result(RiskResult(1, 0))
    assert outcomes == [], "a second answer changes nothing"
    outcomes = book.venue_report(VenueReport(1, int(ExecType.TRADE), 0, 40, 1_900_000, 60))
    assert outcomes[0] == (ORDER_UPDATE, 7, RiskUpdate(1, 40, 1_900_000, 0))
    (report,) = reports(outcomes)
    assert report == ExecutionReport(
        1, 1, ExecType.TRADE, OrderStatus.PARTIALLY_FILLED, 0, AAPL, 1, 40, 1_900_000, 40, 60, 1_900_000
    )
    outcomes = book.venue_report(VenueReport(1, int(ExecType.TRADE), 0, 60, 1_900_000, 0))
    assert outcomes[0] == (ORDER_UPDATE, 7, RiskUpdate(1, 60, 1_900_000, 1))
    assert reports(outcomes)[0].order_status == OrderStatus.FILLED
    assert len(book) == 0 and 1 not in book and book.live(ALICE) == {}


def test_the_route_carries_the_order_and_the_ack_follows_it(book: OrderBook) -> None:
    book.new_order(ALICE, new(1), 5)
    route, ack, record = book.risk_result(RiskResult(1, 0))
    assert route == (ORDER_ROUTE, ALICE, RouteOrder(1, 7, AAPL, 1, 1, 1, 100, 1_900_000))
    assert ack[:2] == (ORDER_REPORT, ALICE) and ack[2].exec_type == ExecType.NEW
    assert record == (ORDER_RECORD, 5, True)


def test_a_duplicate_client_order_id_is_refused_for_the_sessions_life(book: OrderBook) -> None:
    order_id = routed(book, 1)
    book.venue_report(VenueReport(order_id, int(ExecType.TRADE), 0, 100, 1_900_000, 0))
    for outcomes in (book.new_order(ALICE, new(1), 0), book.cancel(ALICE, CancelOrder(1, 1), 0)):
        (report,) = reports(outcomes)
        assert report.reason == Reason.DUPLICATE_CLIENT_ORDER_ID
        assert outcomes[-1][0] == ORDER_RECORD
    assert reports(book.new_order(ALICE, new(1), 0))[0].symbol == AAPL, "the request's symbol"
    assert book.new_order(BOB, new(1), 0)[0][0] == ORDER_CHECK, "another session may use the id"


def test_cancel_and_replace_of_unknown_or_closed_orders(book: OrderBook) -> None:
    (report,) = reports(book.cancel(ALICE, CancelOrder(2, 99), 0))
    assert (report.exec_type, report.order_status, report.reason, report.symbol) == (
        ExecType.CANCEL_REJECTED,
        OrderStatus.REJECTED,
        Reason.UNKNOWN_ORDER,
        b"\0" * 8,
    )
    order_id = routed(book, 3)
    book.venue_report(VenueReport(order_id, int(ExecType.CANCELED), 0, 0, 0, 0))
    (report,) = reports(book.replace(ALICE, ReplaceOrder(4, 3, 50, 1_900_000), 0))
    assert (report.exec_type, report.reason) == (ExecType.CANCEL_REJECTED, Reason.ORDER_NOT_OPEN)


def test_cancel_and_replace_of_open_orders(book: OrderBook) -> None:
    order_id = routed(book, 1)
    assert book.replace(ALICE, ReplaceOrder(2, 1, 40, 1_910_000), 0)[0][2] == RiskCheck(
        order_id, 7, AAPL, 1, 1, 40, 1_910_000, 1
    )
    (report,) = reports(book.cancel(ALICE, CancelOrder(3, 1), 0))
    assert report.reason == Reason.CHANGE_PENDING
    assert book.risk_result(RiskResult(order_id, 0)) == [
        (ORDER_VENUE, 0, ReplaceRoute(order_id, 40, 1_910_000))
    ]
    book.venue_report(VenueReport(order_id, int(ExecType.REPLACED), 0, 0, 0, 40))
    assert book.live(ALICE) == {2: order_id}
    assert book.cancel(ALICE, CancelOrder(4, 2), 0) == [(ORDER_VENUE, 0, CancelRoute(order_id))]
    outcomes = book.venue_report(VenueReport(order_id, int(ExecType.CANCELED), 0, 0, 0, 0))
    assert outcomes[0] == (ORDER_UPDATE, 7, RiskUpdate(order_id, 0, 0, 1))
    (report,) = reports(outcomes)
    assert (report.client_order_id, report.order_status) == (4, OrderStatus.CANCELED)


def test_unsent_messages(book: OrderBook) -> None:
    book.new_order(ALICE, new(1), 3)
    outcomes = book.risk_unsent(1, int(Reason.PARTITION_TAKEOVER))
    (report,) = reports(outcomes)
    assert (report.order_id, report.reason) == (0, Reason.PARTITION_TAKEOVER)
    assert outcomes[-1] == (ORDER_RECORD, 3, False) and len(book) == 0
    order_id = routed(book, 2)
    outcomes = book.venue_unsent(order_id)
    assert [kind for kind, _, _ in outcomes] == [ORDER_UPDATE, ORDER_REPORT, ORDER_RECORD]
    assert reports(outcomes)[0].reason == Reason.VENUE_UNAVAILABLE


def test_a_risk_timeout_rejects_what_risk_did_not_answer(book: OrderBook) -> None:
    book.new_order(ALICE, new(1), 0)
    book.new_order(ALICE, new(2), 50 * MS)
    assert book.expire_risk_checks(99 * MS) == []
    outcomes = book.expire_risk_checks(120 * MS)
    (report,) = reports(outcomes)
    assert (report.client_order_id, report.reason) == (1, Reason.RISK_UNAVAILABLE)
    assert outcomes[-1] == (ORDER_UPDATE, 7, RiskUpdate(1, 0, 0, 1)), "risk may have booked it"
    book.risk_timeout_ns = 0
    assert book.risk_timeout_ns == 0


def test_risk_lost_rejects_the_pending_orders_of_the_accounts_it_served(book: OrderBook) -> None:
    book.new_order(ALICE, new(1, account=7), 0)
    book.new_order(ALICE, new(2, account=8), 0)
    (report,) = reports(book.risk_lost(lambda account: account == 8))
    assert (report.client_order_id, report.reason) == (2, Reason.RISK_UNAVAILABLE)
    with pytest.raises(ZeroDivisionError):
        book.risk_lost(lambda account: 1 // 0 == 0)
    assert list(book.orders()) == [1], "a predicate that fails changes nothing"
    assert len(reports(book.risk_lost())) == 1


def test_session_lost_cancels_its_live_orders(book: OrderBook) -> None:
    first = routed(book, 1)
    second = routed(book, 2)
    book.new_order(ALICE, new(3), 0)
    book.new_order(BOB, new(1), 0)
    outcomes = book.session_lost(ALICE, 77)
    assert outcomes == [(ORDER_VENUE, 0, CancelRoute(first)), (ORDER_VENUE, 0, CancelRoute(second))]
    assert book.live(ALICE) == {}
    outcomes = book.venue_report(VenueReport(first, int(ExecType.CANCELED), 0, 0, 0, 0))
    assert reports(outcomes) == [] and outcomes[-1] == (ORDER_RECORD, 77, True)
    assert book.session_lost(ALICE, 0) == [], "once"


def test_the_kill_switch_halts_once(book: OrderBook) -> None:
    order_id = routed(book, 1)
    assert book.kill_switch == KillSwitchState.ACTIVE
    assert book.set_kill_switch(int(KillSwitchState.HALTED), 0) == [(ORDER_VENUE, 0, CancelRoute(order_id))]
    assert book.set_kill_switch(int(KillSwitchState.HALTED), 0) is None
    assert book.kill_switch == KillSwitchState.HALTED
    (report,) = reports(book.venue_report(VenueReport(order_id, int(ExecType.CANCELED), 0, 0, 0, 0)))
    assert report.reason == Reason.CANCELED_BY_KILL_SWITCH


def test_shutting_down_and_cancel_all(book: OrderBook) -> None:
    order_id = routed(book, 1)
    book.accepting = False
    assert reports(book.new_order(ALICE, new(2), 0))[0].reason == Reason.SHUTTING_DOWN
    assert book.cancel_all(int(Reason.CANCELED_ON_DISCONNECT), 0) == [(ORDER_VENUE, 0, CancelRoute(order_id))]
    assert book.cancel_all(int(Reason.CANCELED_ON_DISCONNECT), 0) == [], "a cancel is pending"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda book: book.new_order(ALICE, new(1)._replace(quantity="lots"), 0), "NewOrder.quantity"),
        (lambda book: book.new_order(ALICE, new(1)._replace(client_order_id=-1), 0), "client_order_id"),
        (lambda book: book.new_order(ALICE, new(1)._replace(symbol="AAPL"), 0), "NewOrder.symbol"),
        (lambda book: book.cancel(ALICE, CancelOrder(1, None), 0), "CancelOrder.orig_client_order_id"),
        (lambda book: book.replace(ALICE, (1, 2), 0), "ReplaceOrder"),
        (lambda book: book.risk_result(RiskResult(1.5, 0)), "RiskResult.order_id"),
        (lambda book: book.venue_report(VenueReport(1, 3, 0, 1, 1, "x")), "VenueReport.leaves_quantity"),
        (lambda book: book.session_lost("alice", 0), "session"),
    ],
)
def test_a_bad_argument_is_an_error_naming_the_field(book: OrderBook, call: Any, field: str) -> None:
    with pytest.raises((TypeError, ValueError), match=field):
        call(book)
    assert len(book) == 0


def run_of(*orders: NewOrder) -> bytes:
    """The frames of a FrameRun of NewOrders."""
    return b"".join(protocol.encode(order) for order in orders)


def test_a_run_of_new_orders_writes_each_check_to_its_accounts_route_and_refuses_the_rest_as_one_by_one(
    book: OrderBook,
) -> None:
    """Accounts 7 and 9 go to routes 0 and 1 (account % 4), account 6 to none: its check cannot be sent. The
    duplicate is refused as `new_order` refuses it, and every order checked is pending in the book."""
    orders = [new(1, account=7), new(2, account=9), new(3, account=6), new(1, account=7), new(4, account=11)]
    routes = [-1, 1, -1, 0]
    decided = book.new_order_run(ALICE, run_of(*orders), 0, routes, int(Reason.PARTITION_TAKEOVER))
    assert decided is not None
    checks, outcomes = decided
    assert len(checks) == 2
    sent = [[message for message, _ in StreamDecoder().feed(frames)] for frames in checks]
    assert [[check.account for check in route] for route in sent] == [[7, 11], [9]]
    assert all(check.symbol == AAPL and check.is_replace == 0 for route in sent for check in route)
    assert [(r.client_order_id, r.reason) for r in reports(outcomes)] == [
        (3, Reason.PARTITION_TAKEOVER),
        (1, Reason.DUPLICATE_CLIENT_ORDER_ID),
    ]
    pending = {check.order_id for route in sent for check in route}
    assert book.orders() == dict.fromkeys(pending, OrderStatus.PENDING_NEW)
    assert book.checks_in_flight == 3
    # The same orders one by one give the same answers.
    one_by_one = OrderBook(protocol, 100 * MS, 0)
    alone = [one_by_one.new_order(ALICE, order, 0) for order in orders]
    assert [[m.account for k, _, m in o if k == ORDER_CHECK] for o in alone] == [[7], [9], [6], [], [11]]


def test_a_run_with_a_frame_that_breaks_a_field_rule_is_left_undone(book: OrderBook) -> None:
    """None, and nothing booked: the caller takes the frames one by one, so the bad one gets its error."""
    good = protocol.encode(new(1))
    bad = bytearray(protocol.encode(new(2)))
    bad[12 + 8 + 4 + 8] = 9  # side: no such Side
    assert book.new_order_run(ALICE, good + bytes(bad), 0, [0], 0) is None
    assert len(book) == 0
    assert book.new_order(ALICE, new(1), 0)[0][0] == ORDER_CHECK  # its client order id was not spent


def test_a_run_of_risk_results_gives_the_frames_one_by_one_would_send_apart_by_destination() -> None:
    """Two sessions' orders answered in one run: the routes in one buffer, each session's reports in its
    own, latencies as outcomes; the same messages, in the same order per destination, as `risk_result`
    gives one at a time on a twin book."""
    books = [OrderBook(protocol, 100 * MS, 0) for _ in range(2)]
    for book in books:
        for session, client_order_id, account in ((ALICE, 1, 7), (BOB, 1, 8), (BOB, 2, 9)):
            book.new_order(session, new(client_order_id, account=account), 0)
    run_book, twin = books
    results = [RiskResult(1, 0), RiskResult(2, int(Reason.MAX_QUANTITY)), RiskResult(3, 0), RiskResult(99, 0)]
    decided = run_book.risk_result_run(b"".join(protocol.encode(result) for result in results))
    assert decided is not None
    venue, by_session, outcomes = decided

    def messages(frames: bytearray) -> list[Any]:
        return [message for message, _ in StreamDecoder().feed(frames)]

    one_by_one = [outcome for result in results for outcome in twin.risk_result(result)]
    assert messages(venue) == [message for kind, _, message in one_by_one if kind == ORDER_ROUTE]
    assert [(session, messages(frames)) for session, frames in by_session] == [
        (session, [m for kind, target, m in one_by_one if kind == ORDER_REPORT and target == session])
        for session in (ALICE, BOB)
    ]
    assert [kind for kind, _, _ in outcomes] == [ORDER_RECORD] * 3
    assert run_book.orders() == twin.orders() == {1: OrderStatus.NEW, 3: OrderStatus.NEW}
