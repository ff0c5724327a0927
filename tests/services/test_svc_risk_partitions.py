"""Firm-wide risk limits with real processes: two order replicas, two risk replicas, one event log.

Each account partition is served by one risk replica at a time; an account's orders reach it whichever
order replica they arrive at, so its limit holds in aggregate; a risk replica killed mid-stream hands its
partitions to the other, which rebuilds their exposure from the log before it answers.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from support import wait_for
from tradeplane_services.client import OrderSession, positions, set_kill_switch
from tradeplane_services.drills import RISKS, partition_owners, start_partitioned, time_takeover, wait_served
from tradeplane_services.eventlog import (
    JOURNALS,
    KILL_SWITCH_KIND,
    REFUSAL_KIND,
    STREAM,
    EventLog,
    partition_of,
    subject_filter,
)
from tradeplane_services.protocol import (
    ExecType,
    ExecutionReport,
    KillSwitchState,
    Reason,
    Reservation,
    Side,
    price_units,
)
from tradeplane_services.stack import Stack

StackFactory = Callable[..., Stack]
MAX_POSITION = 1000
LOT = 100
BUYER = 9001
SELLERS = range(9100, 9130)  # 30 lots of supply: three times what the buyer may hold


def partitioned_stack(make_stack: StackFactory) -> Stack:
    settings = {
        # Snapshots every few events: the takeovers here start from one and replay the tail.
        "risk": {
            "maxPosition": MAX_POSITION,
            "duplicateWindowMillis": 0,
            "partitionLeaseMillis": 1000,
            "snapshotEveryEvents": 3,
        },
    }
    stack = make_stack(settings, components=())
    start_partitioned(stack)
    return stack


def offer_supply(stack: Stack) -> OrderSession:
    """Sell orders resting on the book for the buyer to take, while the session returned stays open."""
    seller = OrderSession(stack.address("order"))
    for account in SELLERS:
        client_order_id = seller.new_order(Side.SELL, "AAPL", LOT, price_units(190), account=account)
        assert seller.report_for(client_order_id).exec_type == ExecType.NEW
    return seller


def buy_lot(session: OrderSession, quantity: int = LOT) -> int:
    """One lot for the buyer; the reason it was refused, or OK once it traded in full."""
    client_order_id = session.new_order(Side.BUY, "AAPL", quantity, price_units(190), account=BUYER)
    report: ExecutionReport = session.report_for(client_order_id)
    if report.exec_type == ExecType.REJECTED:
        return int(report.reason)
    assert report.exec_type in (ExecType.NEW, ExecType.TRADE), report
    session.wait_for(
        lambda m: (
            isinstance(m, ExecutionReport) and m.client_order_id == client_order_id and m.leaves_quantity == 0
        )
    )
    return int(Reason.OK)


def net_position(stack: Stack, account: int) -> int:
    return sum(report.quantity for report in positions(stack.address("position"), account))


def test_an_account_buying_through_two_order_replicas_holds_one_limit(make_stack: StackFactory) -> None:
    stack = partitioned_stack(make_stack)
    owners = partition_owners(stack)
    assert set(owners.values()) == set(RISKS), "both risk replicas serve partitions"
    seller = offer_supply(stack)
    sessions = [OrderSession(stack.address("order")), OrderSession(stack.address("order-1"))]
    outcomes = [buy_lot(sessions[lot % 2]) for lot in range(20)]
    accepted = outcomes.count(Reason.OK)
    assert accepted == MAX_POSITION // LOT, outcomes
    assert set(outcomes[accepted:]) == {Reason.POSITION_LIMIT}, outcomes
    wait_for(lambda: net_position(stack, BUYER) == MAX_POSITION, timeout=10, what="the position service")
    seller.close()


def test_a_killed_risk_replica_hands_its_partitions_over_and_the_limit_still_holds(
    make_stack: StackFactory,
) -> None:
    stack = partitioned_stack(make_stack)
    seller = offer_supply(stack)
    sessions = [OrderSession(stack.address("order")), OrderSession(stack.address("order-1"))]
    before = [buy_lot(sessions[lot % 2]) for lot in range(4)]
    assert before == [Reason.OK] * 4

    probe = OrderSession(stack.address("order-1"))  # open to the end: its accepted 1-lot buy keeps resting
    takeover = time_takeover(stack, probe, BUYER, "AAPL", 185.0)
    print(
        f"takeover of partition {takeover.partition} after kill -9 of {takeover.victim}: "
        f"{takeover.seconds:.3f}s to the first accepted order (claim to serving "
        f"{takeover.replay_seconds:.4f}s, {takeover.replayed_events} events replayed); "
        f"refused meanwhile: {dict(takeover.refused)}"
    )
    assert takeover.refused[Reason.PARTITION_TAKEOVER] > 0, takeover.refused
    assert set(takeover.refused) <= {Reason.PARTITION_TAKEOVER, Reason.RISK_UNAVAILABLE}, takeover.refused
    assert takeover.seconds < 10, "the lease is 1 s: a takeover well inside this"
    heir = next(risk for risk in RISKS if risk != takeover.victim)
    wait_served(stack, (heir,), timeout=30)  # the victim's other partitions too

    # The heir knows the 400 bought and the 1 resting: exactly 5 more lots fit under 1000.
    after = [buy_lot(sessions[lot % 2]) for lot in range(8)]
    assert after == [Reason.OK] * 5 + [Reason.POSITION_LIMIT] * 3, after
    wait_for(lambda: net_position(stack, BUYER) == 900, timeout=10, what="the position service")
    seller.close()
    probe.close()


def test_the_desk_shows_partitions_and_their_owners(make_stack: StackFactory) -> None:
    stack = partitioned_stack(make_stack)
    desk = [sys.executable, "-m", "tradeplane_services", "log", "--event-log", stack.events.url]
    result = subprocess.run([*desk, "partitions"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    owner_of_buyer = partition_owners(stack)[partition_of(BUYER)]
    expected = [str(partition_of(BUYER)), str(owner_of_buyer), "serving"]
    assert any(line.split()[:3] == expected for line in lines), result.stdout
    assert "members: risk, risk-1" in result.stdout


def test_two_sessions_buying_across_a_kill_9_of_risk_end_exactly_at_the_limit(
    make_stack: StackFactory,
) -> None:
    """Both order replicas buy half lots for one account while its risk owner is killed -9: the account
    ends at exactly maxPosition: never above (the heir rebuilt the exposure), never below (no reservation
    of an order the kill cut short outlived it)."""
    stack = partitioned_stack(make_stack)
    seller = offer_supply(stack)
    victim = partition_owners(stack)[partition_of(BUYER)]
    assert victim is not None
    outcomes: list[list[int]] = [[], []]
    failures: list[BaseException] = []
    stop = threading.Event()

    def buy(index: int) -> None:
        try:
            with OrderSession(stack.address(("order", "order-1")[index])) as session:
                while not stop.is_set():
                    outcomes[index].append(buy_lot(session, LOT // 2))
                    time.sleep(0.2)
        except BaseException as error:  # reported by the test, not lost with the thread
            failures.append(error)
            raise

    buyers = [threading.Thread(target=buy, args=(index,)) for index in range(2)]
    for thread in buyers:
        thread.start()
    time.sleep(0.6)
    stack.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: failures or all(Reason.POSITION_LIMIT in each[-3:] for each in outcomes),
        timeout=60,
        what="both sessions to meet the limit",
    )
    stop.set()
    for thread in buyers:
        thread.join()
    assert not failures, failures
    every = outcomes[0] + outcomes[1]
    assert Reason.PARTITION_TAKEOVER in every, every
    assert set(every) <= {
        Reason.OK,
        Reason.POSITION_LIMIT,
        Reason.PARTITION_TAKEOVER,
        Reason.RISK_UNAVAILABLE,
    }
    assert every.count(Reason.OK) * LOT // 2 == MAX_POSITION, every
    wait_for(lambda: net_position(stack, BUYER) == MAX_POSITION, timeout=10, what="the position service")
    seller.close()


def logged(stack: Stack, on: str) -> list[tuple[str, int, Any]]:
    """(Nats-Msg-Id, log sequence, message) of every message on the subjects `on` names: the messages of one
    event share its id and sequence."""

    async def read() -> list[tuple[str, int, Any]]:
        log = EventLog(stack.events.url.split(","))
        await log.connect(attempts=3)
        try:
            assert log.js is not None
            found = []
            async for event in log.read(on):
                stored = await log.js.get_msg(STREAM, event.sequence)
                event_id = (stored.headers or {}).get("Nats-Msg-Id", "")
                found += [(event_id, event.sequence, message) for message in event.messages]
            return found
        finally:
            await log.close()

    return asyncio.run(read())


def test_risk_decisions_and_kill_switch_moves_are_in_the_log(make_stack: StackFactory) -> None:
    """Refusals go to the account's partition, reservations to the owner's journal; each kill-switch move
    of a replica to partition 0; every event under an id of its own (Nats-Msg-Id: only a retry is
    deduplicated)."""
    stack = partitioned_stack(make_stack)
    seller = offer_supply(stack)
    with OrderSession(stack.address("order")) as session:
        outcomes = [buy_lot(session) for _ in range(12)]
    assert outcomes.count(Reason.POSITION_LIMIT) == 2, outcomes
    partition = partition_of(BUYER)

    def refusals() -> list[tuple[str, int, Any]]:
        return [
            entry
            for entry in logged(stack, subject_filter(REFUSAL_KIND, partition))
            if entry[2].account == BUYER
        ]

    wait_for(lambda: len(refusals()) == 2, timeout=15, what="the two refusals in the log")
    assert {message.reason for _, _, message in refusals()} == {Reason.POSITION_LIMIT}
    reservations = [m for _, _, m in logged(stack, JOURNALS) if getattr(m, "account", 0) == BUYER]
    assert len([m for m in reservations if isinstance(m, Reservation)]) == 10

    risk = stack.address(partition_owners(stack)[partition] or "risk")
    assert set_kill_switch(risk, KillSwitchState.HALTED) == KillSwitchState.HALTED
    assert set_kill_switch(risk, KillSwitchState.ACTIVE) == KillSwitchState.ACTIVE
    wait_for(
        lambda: len(logged(stack, subject_filter(KILL_SWITCH_KIND, 0))) == 2,
        timeout=15,
        what="both moves logged",
    )
    moves = logged(stack, subject_filter(KILL_SWITCH_KIND, 0))
    assert [message.state for _, _, message in moves] == [KillSwitchState.HALTED, KillSwitchState.ACTIVE]
    movers = {message.by.rstrip(b"\0").decode() for _, _, message in moves}
    assert movers == {partition_owners(stack)[partition]}
    # Two refusals of one turn of the loop are one event: an id names an event, not a message.
    events = {(event_id, sequence) for event_id, sequence, _ in [*moves, *refusals()]}
    assert all(event_id for event_id, _ in events), events
    assert len({event_id for event_id, _ in events}) == len(events), events
    seller.close()
