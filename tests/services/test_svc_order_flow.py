"""Order-flow canaries with real processes: order splits its risk checks by account between a stable and
a canary risk as the pushed routing says, falls back to the stable when the lease lapses, and answers
every order in flight when the routing switches; in shadow mode the canary only gets copies, and order
compares its decisions with the stable's without a client ever seeing one or waiting for it."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import wait_for
from tradeplane.routing import RoutingPushes
from tradeplane_services.client import OrderSession
from tradeplane_services.eventlog import PARTITIONS
from tradeplane_services.orderflow import RoutingTable, bucket
from tradeplane_services.protocol import ExecType, ExecutionReport, Reason, Side, price_units
from tradeplane_services.stack import Stack

StackFactory = Callable[..., Stack]
CANARY_QUANTITY_LIMIT = 50  # the canary refuses these orders as MAX_QUANTITY, the stable never does
QUANTITY = 100
FAR_PRICE = price_units(1)  # outside any collar: the stable refuses without booking anything


def push(stack: Stack, document: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        stack.metrics_url("order", "/routing"), json.dumps(document).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def push_held(stack: Stack, document: dict[str, Any]) -> None:
    """Push, then wait until order holds the share: it does once a canary pod has logged on."""
    assert push(stack, document)[0] == 200
    wait_for(lambda: held_weight(stack) == document["weightBasisPoints"], 10, what="order holding the share")


def held_weight(stack: Stack) -> int:
    return int(json.loads(http_get(stack, "/routing"))["risk"]["weightInForce"])


def routing(
    canary: Stack, weight: int, lease: float = 30, salt: str = "trading/risk/v2", mode: str = "live"
) -> dict[str, Any]:
    return {
        "mode": mode,
        "peer": "risk",
        "stableRevision": "v1",
        "canaryRevision": "v2",
        "canary": [str(canary.address("risk"))],
        "weightBasisPoints": weight,
        "salt": salt,
        "leaseSeconds": lease,
    }


def answered_by_canary(report: ExecutionReport) -> bool:
    return report.exec_type == ExecType.REJECTED and report.reason == Reason.MAX_QUANTITY


def send_orders(session: OrderSession, accounts: list[int]) -> dict[int, ExecutionReport]:
    """One order per account, all sent before any answer is read; every answer, by account."""
    sent = {
        session.new_order(Side.BUY, "AAPL", QUANTITY, FAR_PRICE, account): account for account in accounts
    }
    reports = {}
    for client_order_id, account in sent.items():
        reports[account] = session.report_for(client_order_id, timeout=10)
    return reports


@pytest.fixture
def stacks(make_stack: StackFactory) -> tuple[Stack, Stack]:
    """The whole stack with risk at v1, and a second risk at v2 (with market data of its own)."""
    stable = make_stack({"order": {"riskTimeoutMillis": 3000}}, revision="v1")
    canary = make_stack(
        {"risk": {"maxOrderQuantity": CANARY_QUANTITY_LIMIT, "latencyInjectionMicros": 20_000}},
        components=("market-data", "risk"),
        revision="v2",
    )
    wait_for(lambda: serving_every_partition(canary), 30, what="the canary risk serving every partition")
    return stable, canary


def serving_every_partition(risk: Stack) -> bool:
    """A risk just started refuses the accounts of partitions it has not taken yet (PARTITION_TAKEOVER)."""
    with urllib.request.urlopen(risk.metrics_url("risk", "/status"), timeout=5) as response:
        status = json.loads(response.read())
    partitions = status["partitions"]
    return status["replica"] is None or (
        len(partitions) == PARTITIONS and all(partition["serving"] for partition in partitions.values())
    )


def test_orders_follow_their_accounts_bucket_and_the_counters_say_so(stacks: tuple[Stack, Stack]) -> None:
    stable, canary = stacks
    status, answer = push(stable, routing(canary, 1000))
    assert status == 200 and answer["weightBasisPoints"] == 0, "held only once the canary is connected"
    wait_for(
        lambda: held_weight(stable) == 1000,
        10,
        what="order's session to the canary risk, and the share in force",
    )
    accounts = list(range(1, 201))
    with OrderSession(stable.address("order")) as session:
        reports = send_orders(session, accounts)
    expected = {account for account in accounts if bucket(account, b"trading/risk/v2") < 1000}
    by_canary = {account for account, report in reports.items() if answered_by_canary(report)}
    assert by_canary == expected, "each account's orders went where its bucket says"
    assert 5 <= len(expected) <= 40
    document = json.loads(http_get(stable, "/routing"))["risk"]
    assert document["routed"] == {"v2": len(expected), "v1": len(accounts) - len(expected)}
    assert document["ordersOnCanary"] == 0, "orders the canary refused are not remembered"
    counters = {
        (sample.labels["service"], sample.labels["peer_revision"]): sample.value
        for family in text_string_to_metric_families(http_get(stable, "/metrics"))
        for sample in family.samples
        if sample.name == "tradeplane_routed_orders_total"
    }
    assert counters == {("order", "v2"): len(expected), ("order", "v1"): len(accounts) - len(expected)}


def test_the_share_falls_to_zero_when_the_lease_lapses(stacks: tuple[Stack, Stack]) -> None:
    stable, canary = stacks
    push_held(stable, routing(canary, 10_000, lease=1.5))
    with OrderSession(stable.address("order")) as session:
        wait_for(
            lambda: answered_by_canary(send_orders(session, [7])[7]), 10, what="orders reaching the canary"
        )
        wait_for(lambda: held_weight(stable) == 0, 5)
        reports = send_orders(session, list(range(1, 51)))
    assert not any(answered_by_canary(report) for report in reports.values()), "no canary after the lease"


def test_an_unready_caller_is_told_of_a_rollback_and_not_of_a_canary(stacks: tuple[Stack, Stack]) -> None:
    """The operator's best-effort push to callers out of the Service: a table without the canary is
    delivered at once (not left to the lease), one with a canary share is not sent at all."""
    stable, canary = stacks
    push_held(stable, routing(canary, 10_000, lease=30))
    endpoint = stable.metrics_url("order", "").removeprefix("http://")

    def withdraw(weight: int) -> int:
        table = RoutingTable.from_document(routing(canary, weight))
        pushes = RoutingPushes()

        async def send() -> None:
            await pushes.withdraw(("trading", "risk"), table, [endpoint])
            await pushes.close()

        asyncio.run(send())
        return held_weight(stable)

    assert withdraw(5_000) == 10_000, "a canary share never goes to an unready caller"
    assert withdraw(0) == 0


def test_a_canary_out_of_reach_keeps_its_accounts_refused_not_moved_to_the_stable(
    stacks: tuple[Stack, Stack],
) -> None:
    """Sticky: once the share is in force, the canary's accounts stay with its revision. With no canary
    pod reachable (killed; then no ready pod in the routing) their orders are refused; the stable never
    checks them, and the other accounts are untouched. Only the end of the rollout moves them back."""
    stable, canary = stacks
    push_held(stable, routing(canary, 5_000))
    accounts = list(range(1, 41))
    on_canary = {account for account in accounts if bucket(account, b"trading/risk/v2") < 5_000}
    canary.kill("risk", signal.SIGKILL)
    for table in (routing(canary, 5_000), {**routing(canary, 5_000), "canary": []}):
        assert push(stable, table)[1]["weightBasisPoints"] == 5_000, "still held for its revision"
        with OrderSession(stable.address("order")) as session:
            reports = send_orders(session, accounts)
        refused = {account for account, report in reports.items() if report.reason == Reason.RISK_UNAVAILABLE}
        assert refused == on_canary
        assert not any(answered_by_canary(report) for report in reports.values())
    assert push(stable, {**routing(canary, 0), "canary": []})[1]["weightBasisPoints"] == 0
    with OrderSession(stable.address("order")) as session:
        reports = send_orders(session, accounts)
    assert not any(report.reason == Reason.RISK_UNAVAILABLE for report in reports.values())


def test_a_new_canary_revision_at_an_old_pods_address_gets_a_session_of_its_own(
    stacks: tuple[Stack, Stack],
) -> None:
    """Pod addresses are reused: a new revision's pod may have the address of the last canary's, whose
    process may still be running. Order logs on to it anew rather than keep the old revision's session."""
    stable, canary = stacks
    push_held(stable, routing(canary, 5_000))

    def risk_sessions() -> int:
        with urllib.request.urlopen(canary.metrics_url("risk", "/status"), timeout=5) as response:
            return int(json.loads(response.read())["sessions"])

    before = risk_sessions()
    push(stable, {**routing(canary, 5_000, salt="trading/risk/v3"), "canaryRevision": "v3"})
    wait_for(lambda: risk_sessions() == before + 1, 10, what="a session logged on for the new revision")
    wait_for(lambda: held_weight(stable) == 5_000, 10, what="the new revision's share in force")
    # The old revision's session closes once what was sent on it had time to be answered.
    wait_for(lambda: risk_sessions() == before, 15, what="the old revision's session retired")


def test_orders_in_flight_at_a_switch_are_answered_by_the_revision_that_took_them(
    stacks: tuple[Stack, Stack],
) -> None:
    stable, canary = stacks
    push_held(stable, routing(canary, 10_000))
    with OrderSession(stable.address("order")) as session:
        wait_for(
            lambda: answered_by_canary(send_orders(session, [7])[7]), 10, what="orders reaching the canary"
        )
        # 30 checks at 20 ms each: the canary is still working through them when the routing drops it.
        routed_before = routed_to_canary(stable)
        in_flight = {session.new_order(Side.BUY, "AAPL", QUANTITY, FAR_PRICE, a): a for a in range(1, 31)}
        # Dropped only once order has sent all 30 there (on a loaded machine that takes a while).
        wait_for(
            lambda: routed_to_canary(stable) >= routed_before + 30,
            10,
            what="the 30 orders routed to the canary",
        )
        dropped = {**routing(canary, 0), "canary": []}
        assert push(stable, dropped)[1]["weightBasisPoints"] == 0
        after = send_orders(session, list(range(31, 61)))
        reports = [session.report_for(client_order_id, timeout=10) for client_order_id in in_flight]
    assert all(answered_by_canary(report) for report in reports), "every order in flight answered"
    assert not any(answered_by_canary(report) for report in after.values()), "new orders go to the stable"


def test_a_bad_routing_is_refused_naming_the_field(stacks: tuple[Stack, Stack]) -> None:
    stable, canary = stacks
    status, text = push(stable, {**routing(canary, 100), "weightBasisPoints": 20_000})
    assert status == 400 and "weightBasisPoints" in text
    status, text = push(stable, {**routing(canary, 100), "peer": "position"})
    assert status == 400 and "splits no orders to position" in text


def routed_to_canary(stack: Stack) -> int:
    return int(json.loads(http_get(stack, "/routing"))["risk"]["routed"].get("v2", 0))


def http_get(stack: Stack, path: str) -> str:
    with urllib.request.urlopen(stack.metrics_url("order", path), timeout=5) as response:
        return str(response.read().decode())


RESTRICTED = "AAPL"  # the shadow canary wrongly refuses it; the stable trades it
SLOW_CANARY_MICROS = 1_000_000


@pytest.fixture
def shadow_stacks(make_stack: StackFactory) -> tuple[Stack, Stack]:
    """The whole stack with risk at v1, and a v2 risk that refuses AAPL as a restricted symbol."""
    stable = make_stack({"order": {"riskTimeoutMillis": 3000}}, revision="v1")
    canary = make_stack(
        {"risk": {"restrictedSymbols": [RESTRICTED]}}, components=("market-data", "risk"), revision="v2"
    )
    wait_for(lambda: serving_every_partition(canary), 30, what="the canary risk serving every partition")
    return stable, canary


def shadow_counters(stack: Stack) -> dict[tuple[str, ...], float]:
    """order's shadow counters: (outcome,) -> decisions and (stable reason, canary reason) -> mismatches."""
    counters: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(http_get(stack, "/metrics")):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("peer") != "risk" or labels.get("peer_revision") != "v2":
                continue
            if sample.name == "tradeplane_shadow_decisions_total":
                counters[(labels["outcome"],)] = sample.value
            elif sample.name == "tradeplane_shadow_mismatches_total":
                counters[(labels["stable_reason"], labels["canary_reason"])] = sample.value
    return counters


def test_a_shadow_canary_is_compared_and_never_answers_a_client(shadow_stacks: tuple[Stack, Stack]) -> None:
    stable, canary = shadow_stacks
    push_held(stable, routing(canary, 10_000, mode="shadow"))
    accounts = list(range(1, 101))
    reports: list[ExecutionReport] = []
    with OrderSession(stable.address("order")) as session:
        for symbol in (RESTRICTED, "MSFT"):
            sent = [session.new_order(Side.BUY, symbol, QUANTITY, FAR_PRICE, a) for a in accounts]
            reports += [session.report_for(client_order_id, timeout=10) for client_order_id in sent]
    assert not any(report.reason == Reason.RESTRICTED_SYMBOL for report in reports), "a canary answer leaked"
    stable_reasons = {Reason(report.reason).name for report in reports[: len(accounts)]}
    assert len(stable_reasons) == 1, stable_reasons
    stable_reason = stable_reasons.pop()
    expected = {
        ("match",): len(accounts),
        ("mismatch",): len(accounts),
        ("unanswered",): 0,
        ("stable_unanswered",): 0,
        (stable_reason, "RESTRICTED_SYMBOL"): len(accounts),
    }
    wait_for(lambda: shadow_counters(stable) == expected, 10, what=f"order's comparisons {expected}")

    document = json.loads(http_get(stable, "/routing"))["risk"]
    assert document["routed"] == {"v2": 2 * len(accounts)}, "every order copied at 100%"
    assert document["ordersShadowed"] == 0 and document["comparisonsPending"] == 0, document


def test_a_shadow_canary_is_off_the_orders_path_and_unanswered_copies_are_counted(
    make_stack: StackFactory,
) -> None:
    """A canary that takes a second per check: clients are answered by the stable without waiting, and
    the copies it cannot answer within order's risk timeout are counted unanswered and forgotten."""
    stable = make_stack({"order": {"riskTimeoutMillis": 500}}, revision="v1")
    slow = make_stack(
        {"risk": {"latencyInjectionMicros": SLOW_CANARY_MICROS}},
        components=("market-data", "risk"),
        revision="v2",
    )
    wait_for(lambda: serving_every_partition(slow), 30, what="the canary risk serving every partition")
    push_held(stable, routing(slow, 10_000, mode="shadow"))
    with OrderSession(stable.address("order")) as session:
        started = time.monotonic()
        sent = [session.new_order(Side.BUY, "MSFT", QUANTITY, FAR_PRICE, a) for a in range(1, 21)]
        reports = [session.report_for(client_order_id, timeout=10) for client_order_id in sent]
        answered_in = time.monotonic() - started
    assert all(report.reason != Reason.RISK_UNAVAILABLE for report in reports), "the stable answered all"
    # The canary needs 20 s for these 20 copies; the stable's answers did not wait for one of them.
    assert answered_in < SLOW_CANARY_MICROS / 1e6, f"answers took {answered_in:.2f}s"
    wait_for(
        lambda: shadow_counters(stable).get(("unanswered",), 0) >= 18,
        10,
        what="the copies the slow canary did not answer in time counted unanswered",
    )
    wait_for(lambda: json.loads(http_get(stable, "/routing"))["risk"]["comparisonsPending"] == 0, 10)
