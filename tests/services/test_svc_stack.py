"""The five services as real processes over real loopback sockets: orders flow, fail safe, drain."""

from __future__ import annotations

import json
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from support import wait_for
from tradeplane_services.client import OrderSession, WireClient, positions, set_kill_switch
from tradeplane_services.loadgen import run_load
from tradeplane_services.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    ExecType,
    ExecutionReport,
    KillSwitchState,
    NewOrder,
    OrderStatus,
    Reason,
    RiskResult,
    SessionReject,
    Side,
    TimeInForce,
    encode,
    layout_of,
    price_units,
    symbol_bytes,
)
from tradeplane_services.stack import Stack

AAPL = price_units(190)
StackFactory = Callable[..., Stack]


def http(stack: Stack, component: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(stack.metrics_url(component, path), timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def histogram(stack: Stack, component: str) -> dict[float, float]:
    """Cumulative bucket counts of tradeplane_request_duration_seconds, by upper bound."""
    _, text = http(stack, component, "/metrics")
    buckets = {}
    for line in text.splitlines():
        if line.startswith("tradeplane_request_duration_seconds_bucket"):
            labels, value = line.rsplit(" ", 1)
            bound = labels.split('le="')[1].split('"')[0]
            assert f'service="{component}"' in labels and 'revision="' in labels
            buckets[float(bound)] = float(value)
    return buckets


def test_an_order_is_acknowledged_matched_and_booked(stack: Stack) -> None:
    with OrderSession(stack.address("order")) as buyer, OrderSession(stack.address("order")) as seller:
        buy = buyer.new_order(Side.BUY, "AAPL", 300, AAPL, account=11)
        ack = buyer.report_for(buy)
        assert (ack.exec_type, ack.order_status, ack.leaves_quantity) == (ExecType.NEW, OrderStatus.NEW, 300)
        sell = seller.new_order(Side.SELL, "AAPL", 200, AAPL, account=12)
        trade = seller.report_for(sell, ExecType.TRADE)
        assert (trade.last_quantity, trade.last_price, trade.order_status) == (200, AAPL, OrderStatus.FILLED)
        partial = buyer.report_for(buy, ExecType.TRADE)
        assert (partial.order_status, partial.cumulative_quantity, partial.leaves_quantity) == (
            OrderStatus.PARTIALLY_FILLED,
            200,
            100,
        )

    def booked() -> dict[int, int]:
        return {r.account: r.quantity for r in positions(stack.address("position"), 0)}

    wait_for(lambda: booked() == {11: 200, 12: -200}, timeout=5, what="positions of both accounts")
    long = positions(stack.address("position"), 11)[0]
    assert (long.bought_quantity, long.open_cost) == (200, 200 * AAPL)
    status, body = http(stack, "position", "/positions?account=12")
    assert status == 200 and '"quantity": -200' in body


def test_health_readiness_and_metrics_carry_service_and_revision(stack: Stack) -> None:
    with OrderSession(stack.address("order")) as session:
        session.report_for(session.new_order(Side.BUY, "MSFT", 5, price_units(420)))
    for component in ("order", "risk", "market-data", "execution", "position"):
        assert http(stack, component, "/healthz")[0] == 200
        assert http(stack, component, "/readyz")[0] == 200
        _, text = http(stack, component, "/metrics")
        assert f'tradeplane_requests_total{{outcome="ok",revision="dev",service="{component}"}}' in text
    buckets = histogram(stack, "order")
    assert buckets[float("inf")] >= 1
    assert {1e-06, 5e-06, 0.002, 0.1} <= set(buckets), "microsecond buckets from 1us to 100ms"
    assert stack.status("order")["requests"] == buckets[float("inf")], "/status counts what /metrics does"


def counter(stack: Stack, component: str, name: str, **labels: str) -> float:
    """A counter's value in the component's /metrics, 0 when the sample is absent."""
    _, text = http(stack, component, "/metrics")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                assert sample.labels["service"] == component and sample.labels["revision"] == "dev"
                return float(sample.value)
    return 0.0


def test_the_trading_gates_counters_count_decisions_by_reason_orders_and_fills(stack: Stack) -> None:
    with OrderSession(stack.address("order")) as buyer, OrderSession(stack.address("order")) as seller:
        buyer.report_for(buyer.new_order(Side.BUY, "AAPL", 1_000_000, AAPL, account=21))  # MAX_QUANTITY
        buy = buyer.new_order(Side.BUY, "AAPL", 100, AAPL, account=21)
        buyer.report_for(buy)
        sell = seller.new_order(Side.SELL, "AAPL", 100, AAPL, account=22)
        seller.report_for(sell, ExecType.TRADE)
        buyer.report_for(buy, ExecType.TRADE)
    decisions = "tradeplane_decisions_total"
    assert counter(stack, "risk", decisions, reason="MAX_QUANTITY") == 1
    assert counter(stack, "risk", decisions, reason="OK") == 2
    assert counter(stack, "execution", "tradeplane_orders_total") == 2
    # One trade, reported for each side of it.
    wait_for(lambda: counter(stack, "execution", "tradeplane_fills_total") == 2, timeout=5, what="fills")
    assert counter(stack, "order", "tradeplane_orders_total") == 0  # only execution routes orders


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        ({"symbol": "IBM"}, Reason.UNKNOWN_SYMBOL),
        ({"quantity": 1_000_000}, Reason.MAX_QUANTITY),
        ({"price": price_units(250)}, Reason.PRICE_COLLAR),
    ],
)
def test_risk_refusals_reach_the_client_with_their_reason(
    stack: Stack, order: dict[str, Any], reason: Reason
) -> None:
    arguments = {"side": Side.BUY, "symbol": "AAPL", "quantity": 10, "price": AAPL, **order}
    with OrderSession(stack.address("order")) as session:
        report = session.report_for(session.new_order(**arguments))
    assert (report.exec_type, report.order_status, report.reason) == (
        ExecType.REJECTED,
        OrderStatus.REJECTED,
        reason,
    )


def test_cancel_replace_and_client_order_id_rules(stack: Stack) -> None:
    with OrderSession(stack.address("order")) as session:
        first = session.new_order(Side.BUY, "NVDA", 100, price_units(119))
        session.report_for(first, ExecType.NEW)
        replaced = session.replace(first, 150, price_units(119.5))
        report = session.report_for(replaced, ExecType.REPLACED)
        assert (report.leaves_quantity, report.price) == (150, price_units(119.5))
        stale = session.cancel(first)
        assert session.report_for(stale).reason == Reason.ORDER_NOT_OPEN
        canceled = session.cancel(replaced)
        assert session.report_for(canceled).order_status == OrderStatus.CANCELED
        unknown = session.cancel(999_999)
        assert session.report_for(unknown).reason == Reason.UNKNOWN_ORDER
        session.send(NewOrder(first, 1, symbol_bytes("NVDA"), 1, 1, 1, 10, price_units(119)))
        assert session.report_for(first).reason == Reason.DUPLICATE_CLIENT_ORDER_ID


def test_malformed_frames_are_refused_with_reason_and_byte_and_the_service_lives_on(stack: Stack) -> None:
    valid = encode(NewOrder(1, 1, symbol_bytes("AAPL"), 1, 1, 1, 10, AAPL))
    wrong_version = valid[:3] + bytes([PROTOCOL_VERSION + 1]) + valid[4:]
    unknown_type = valid[:2] + bytes([222]) + valid[3:]
    bad_side = bytearray(valid)
    bad_side[layout_of(NewOrder).offsets["side"]] = 7
    oversized = struct.pack("<H", len(valid) + 3) + valid[2:] + b"xyz"
    expected = [
        (Reason.WRONG_VERSION, 3),
        (Reason.UNKNOWN_TYPE, 2),
        (Reason.INVALID_FIELD, layout_of(NewOrder).offsets["side"]),
        (Reason.OVERSIZED, len(valid)),
        (Reason.UNEXPECTED_MESSAGE, 2),
    ]
    with WireClient(stack.address("order")) as client:
        for frame in (wrong_version, unknown_type, bytes(bad_side), oversized, encode(RiskResult(1, 0))):
            client.send_raw(frame)
        rejects = [client.wait_for(lambda m: isinstance(m, SessionReject)) for _ in expected]
        assert [(r.reason, r.offset) for r in rejects] == expected
        assert b"side=7" in rejects[2].text
        client.send_raw(encode(NewOrder(2, 1, symbol_bytes("AAPL"), 1, 1, 1, 10, AAPL)))
        ack = client.wait_for(lambda m: isinstance(m, ExecutionReport))
        assert ack.exec_type == ExecType.NEW
        # A length shorter than a header cannot be resynchronised: refused, then the connection closes.
        client.send_raw(HEADER.pack(4, 10, PROTOCOL_VERSION, 9))
        fatal = client.wait_for(lambda m: isinstance(m, SessionReject))
        assert fatal.reason == Reason.MALFORMED_FRAME
        with pytest.raises(ConnectionError):
            client.wait_for(lambda m: False, timeout=3)
    with OrderSession(stack.address("order")) as session:
        assert session.report_for(session.new_order(Side.BUY, "AAPL", 1, AAPL)).exec_type == ExecType.NEW


def test_new_orders_in_one_write_are_each_answered_once_and_a_bad_frame_among_them_on_its_own(
    stack: Stack,
) -> None:
    """Order takes a read's NewOrders together (a run, one call to the book, one write to risk): each is
    answered exactly once, a duplicate in the run refused; a frame that breaks a field rule gets its own
    refusal, naming the byte and its sequence, and the frames around it are answered."""

    def answers(client: WireClient, count: int) -> list[Any]:
        received: list[Any] = []
        while len(received) < count:
            received += client.receive(5) or pytest.fail(f"{len(received)} of {count} answers")
        assert client.receive(0.5) == [], "answered once"
        return received

    symbol = symbol_bytes("AAPL")
    with WireClient(stack.address("order")) as client:
        orders = [NewOrder(100 + n, 1 + n % 7, symbol, 1, 1, 1, 10 + n, AAPL) for n in range(30)]
        orders.append(orders[4])  # a client order id used again
        client.send_raw(b"".join(encode(order, 2 + n) for n, order in enumerate(orders)))
        reports = answers(client, 31)
        assert sorted(r.client_order_id for r in reports if r.exec_type == ExecType.NEW) == list(
            range(100, 130)
        )
        assert [(r.client_order_id, r.reason) for r in reports if r.exec_type == ExecType.REJECTED] == [
            (104, Reason.DUPLICATE_CLIENT_ORDER_ID)
        ]
        frames = [
            bytearray(encode(NewOrder(200 + n, 1, symbol, 1, 1, 1, 10, AAPL), 40 + n)) for n in range(5)
        ]
        frames[2][layout_of(NewOrder).offsets["side"]] = 7
        client.send_raw(b"".join(frames))
        replies = answers(client, 5)
        (reject,) = [m for m in replies if isinstance(m, SessionReject)]
        assert (reject.reason, reject.offset, reject.ref_sequence) == (
            Reason.INVALID_FIELD,
            layout_of(NewOrder).offsets["side"],
            42,
        )
        acknowledged = [m.client_order_id for m in replies if isinstance(m, ExecutionReport)]
        assert sorted(acknowledged) == [200, 201, 203, 204]


def test_resting_orders_of_a_disconnected_session_are_canceled(stack: Stack) -> None:
    with OrderSession(stack.address("order")) as leaving:
        leaving.report_for(leaving.new_order(Side.SELL, "JPM", 50, price_units(200)), ExecType.NEW)
    time.sleep(0.3)
    with OrderSession(stack.address("order")) as taker:
        take = taker.new_order(Side.BUY, "JPM", 50, price_units(200), time_in_force=TimeInForce.IOC)
        report = taker.report_for(take, ExecType.CANCELED)
        assert (report.reason, report.cumulative_quantity) == (Reason.NO_LIQUIDITY, 0)


def test_kill_switch_halts_new_orders_and_cancels_open_ones(stack: Stack) -> None:
    with OrderSession(stack.address("order")) as session:
        resting = session.new_order(Side.BUY, "TSLA", 10, price_units(249))
        session.report_for(resting, ExecType.NEW)
        assert set_kill_switch(stack.address("risk"), KillSwitchState.HALTED) is KillSwitchState.HALTED
        canceled = session.report_for(resting, ExecType.CANCELED)
        assert canceled.reason == Reason.CANCELED_BY_KILL_SWITCH
        refused = session.report_for(session.new_order(Side.BUY, "TSLA", 10, price_units(249)))
        assert refused.reason == Reason.KILL_SWITCH_HALTED
        set_kill_switch(stack.address("risk"), KillSwitchState.ACTIVE)
        accepted = session.report_for(session.new_order(Side.BUY, "TSLA", 11, price_units(249)))
        assert accepted.exec_type == ExecType.NEW


def test_limits_and_latency_injection_change_without_a_restart(stack: Stack) -> None:
    risk_pid = stack.processes["risk"].pid
    (stack.workdir / "risk.yaml").write_text(yaml.safe_dump({"maxOrderQuantity": 5}))
    (stack.workdir / "order.yaml").write_text(yaml.safe_dump({"latencyInjectionMicros": 3000}))
    with OrderSession(stack.address("order")) as session:

        def refused_for_quantity() -> bool:
            report = session.report_for(session.new_order(Side.BUY, "AMZN", 6, price_units(185)))
            return report.reason == Reason.MAX_QUANTITY

        wait_for(refused_for_quantity, timeout=5, what="risk to reload maxOrderQuantity")
        wait_for(
            lambda: stack.status("order")["settings"]["latencyInjectionMicros"] == 3000,
            timeout=5,
            what="order to reload latencyInjectionMicros",
        )
        before = histogram(stack, "order")
        for _ in range(20):
            session.report_for(session.new_order(Side.BUY, "AMZN", 1, price_units(185)))
    after = histogram(stack, "order")
    slow = (after[float("inf")] - after[0.003]) - (before[float("inf")] - before[0.003])
    assert slow >= 20, "every order after the reload took longer than the injected 3 ms"
    latency = stack.status("order")["latencyMicros"]
    assert latency["max"] >= 3000 and latency["p50"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert stack.processes["risk"].pid == risk_pid


def test_sigterm_finishes_in_flight_cancels_resting_orders_and_exits_zero(make_stack: StackFactory) -> None:
    stack = make_stack({"order": {"riskTimeoutMillis": 10_000}})
    with OrderSession(stack.address("order")) as session:
        resting = session.new_order(Side.SELL, "GOOG", 40, price_units(171))
        session.report_for(resting, ExecType.NEW)
        stack.processes["risk"].send_signal(signal.SIGSTOP)  # the next order stays in flight
        in_flight = session.new_order(Side.SELL, "GOOG", 41, price_units(171))
        time.sleep(0.2)
        order = stack.processes["order"]
        order.send_signal(signal.SIGTERM)
        wait_for(lambda: http(stack, "order", "/readyz")[0] == 503, timeout=5, what="/readyz to turn 503")
        with pytest.raises(OSError):
            socket.create_connection((stack.host, stack.address("order").port), timeout=1).close()
        stack.processes["risk"].send_signal(signal.SIGCONT)
        assert session.report_for(in_flight, ExecType.NEW).order_status == OrderStatus.NEW
        reports = [session.report_for(c, ExecType.CANCELED) for c in (resting, in_flight)]
        assert {r.reason for r in reports} == {Reason.CANCELED_ON_DISCONNECT}
        assert order.wait(10) == 0
    del stack.processes["order"]


def test_new_orders_past_the_checks_in_flight_are_refused_at_once_and_the_waiting_ones_answered(
    make_stack: StackFactory,
) -> None:
    stack = make_stack({"order": {"riskTimeoutMillis": 10_000, "maxChecksInFlight": 3}})
    risk = stack.processes["risk"]
    with OrderSession(stack.address("order")) as session:
        risk.send_signal(signal.SIGSTOP)  # overloaded: nothing comes back
        try:
            waiting = [session.new_order(Side.BUY, "AAPL", 10 + n, AAPL) for n in range(3)]
            time.sleep(0.1)
            asked = time.monotonic()
            shed = session.report_for(session.new_order(Side.BUY, "AAPL", 20, AAPL), timeout=1)
            assert time.monotonic() - asked < 0.5
            assert (shed.exec_type, shed.reason) == (ExecType.REJECTED, Reason.RISK_UNAVAILABLE)
            assert json.loads(http(stack, "order", "/status")[1])["checksInFlight"] == 3
        finally:
            risk.send_signal(signal.SIGCONT)
        assert [session.report_for(order).exec_type for order in waiting] == [ExecType.NEW] * 3
        assert session.report_for(session.new_order(Side.BUY, "AAPL", 30, AAPL)).exec_type == ExecType.NEW


def test_every_service_exits_zero_within_seconds_of_sigterm_while_ticks_flow(stack: Stack) -> None:
    """Analytics once went on storing the ticks still arriving while it drained, past its drain timeout,
    then waited out nats-py's 30 s drain of a follower nobody read: killed, every time."""
    time.sleep(1)  # the feed reaches risk and analytics
    started = time.monotonic()
    codes = stack.stop()
    assert codes == dict.fromkeys(codes, 0)
    assert time.monotonic() - started < 10


def test_a_bad_config_file_stops_the_service_with_the_key_named(tmp_path: Any) -> None:
    import subprocess
    import sys

    config = tmp_path / "risk.yaml"
    config.write_text(yaml.safe_dump({"maxOrderQuantity": -1, "colar": 3}))
    result = subprocess.run(
        [sys.executable, "-m", "tradeplane_services", "risk", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "maxOrderQuantity" in result.stderr and "colar" in result.stderr


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(garbage=st.lists(st.binary(min_size=1, max_size=120), min_size=150, max_size=150))
def test_every_service_survives_random_bytes(make_stack: StackFactory, garbage: list[bytes]) -> None:
    stack = make_stack()
    for component in ("order", "risk", "market-data", "execution", "position"):
        with socket.create_connection((stack.host, stack.address(component).port), timeout=5) as sock:
            for chunk in garbage:
                try:
                    sock.sendall(chunk)
                except OSError:
                    break  # a length that cannot be trusted closes the connection: that is the answer
        assert http(stack, component, "/healthz")[0] == 200, f"{component} died of random bytes"
    with OrderSession(stack.address("order")) as session:
        assert (
            session.report_for(session.new_order(Side.BUY, "META", 3, price_units(500))).exec_type
            == ExecType.NEW
        )
    assert len(positions(stack.address("position"))) >= 0
    assert all(process.poll() is None for process in stack.processes.values())


def test_the_client_demo_and_the_load_generator_run_against_the_stack(make_stack: StackFactory) -> None:
    import subprocess
    import sys

    # An acceptance waits for an fsync of the log: on a loaded machine that outlasts the 500 ms default.
    stack = make_stack({"order": {"riskTimeoutMillis": 5000}})

    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "tradeplane_services",
            "client",
            "--order",
            str(stack.address("order")),
            "--position",
            str(stack.address("position")),
            "demo",
            "--orders",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.count("TRADE") == 4 and "positions:" in demo.stdout
    result = run_load(stack.address("order"), rate=2000, seconds=1.0, warmup=0.2, settle_seconds=0.5)
    assert (result.sent, result.answered, result.unanswered) == (2000, 2000, 0)
    # Each account partition commits its acceptances to the log on its own, so orders of different
    # accounts may reach the venue in another order than sent, and an order may trade in more than one piece.
    assert not result.rejects, result.rejects
    assert result.trades >= 2000, result.trades
    assert sum(result.net_fills.values()) == 0, "every buy met a sell"
    assert result.percentiles_us["p50"] > 0 and result.measured == 1600
