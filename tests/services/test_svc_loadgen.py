"""The load generator's own arithmetic: the orders it builds, and how it counts the answers of a read, which
may hold other frames and end inside one."""

from __future__ import annotations

from tradeplane_services.loadgen import Answers, default_plan
from tradeplane_services.protocol import (
    ExecType,
    ExecutionReport,
    NewOrder,
    OrderStatus,
    OrderType,
    Reason,
    SessionReject,
    Side,
    TimeInForce,
    decode,
    encode,
)

BASE = 100  # the first client order id


def report(index: int, exec_type: ExecType, reason: Reason = Reason.OK, quantity: int = 0) -> bytes:
    order = default_plan(crossing=True).order(index)
    status = OrderStatus.REJECTED if exec_type is ExecType.REJECTED else OrderStatus.NEW
    fields = (order[1], order[2], quantity, order[4], quantity, 0, order[4])
    return encode(ExecutionReport(BASE + index, index, exec_type, status, reason, *fields), index + 1)


def test_built_orders_are_pairs_that_trade_or_rest_apart() -> None:
    for crossing in (True, False):
        plan = default_plan(crossing=crossing)
        frames = plan.frames(400, BASE)
        orders = [decode(frame.tobytes())[0] for frame in frames]
        assert all(isinstance(order, NewOrder) for order in orders)
        assert [order.client_order_id for order in orders] == list(range(BASE, BASE + 400))
        for index, order in enumerate(orders):
            assert plan.order(index) == (order.account, order.symbol, order.side, order.quantity, order.price)
            assert (order.order_type, order.time_in_force) == (OrderType.LIMIT, TimeInForce.DAY)
        for buy, sell in zip(orders[::2], orders[1::2], strict=True):
            assert (buy.side, sell.side, buy.symbol, buy.quantity) == (
                Side.BUY,
                Side.SELL,
                sell.symbol,
                sell.quantity,
            )
            assert (buy.price == sell.price) is crossing


def test_answers_are_counted_once_across_reads_and_other_frames() -> None:
    plan = default_plan(crossing=True)
    answers = Answers(plan, total=4, first_client_order_id=BASE, echo=False)
    first = report(0, ExecType.NEW) + report(1, ExecType.REJECTED, Reason.MAX_QUANTITY)
    assert answers.take(first, received_ns=10) == len(first)

    reject = encode(SessionReject(7, 10, int(Reason.INTERNAL_ERROR), 0, b"x"), 3)
    trade = report(0, ExecType.TRADE, quantity=5)
    again = report(0, ExecType.NEW)  # an order answered twice counts once, at its first answer
    cut = report(2, ExecType.NEW)
    second = reject + trade + again + cut[:20]
    assert answers.take(second, received_ns=20) == len(second) - 20  # the cut frame waits for the rest
    assert answers.take(cut, received_ns=30) == len(cut)

    assert answers.answered == 3 and answers.answered_at.tolist() == [10, 10, 30, 0]
    assert answers.accepted.tolist() == [True, False, True, False]
    assert answers.rejects == {int(Reason.MAX_QUANTITY): 1}
    account, symbol, _, _, _ = plan.order(0)
    assert answers.trades == 1 and answers.net_fills == {(account, symbol): 5}
