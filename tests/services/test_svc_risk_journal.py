"""A risk replica's journal on a real nats-server: one replica still answers for a partition another has
claimed under a newer lease (the first paused, and its lease lapsed unnoticed). The claimant sealed the
first one's journal before claiming, so the first one's next append fails: it gives the partition up,
refuses what it had not logged for it, and logs what it took for its other partitions once. The claimant
replays every reservation the first one acknowledged, and none it refused.

Two RiskServices in this process; the first holds its leases in the bucket, the second takes the partition
over directly, as a replica that won the lapsed lease would. The first one's follower of the partition is
stopped before the claim, as a paused replica's would be, so only the journal can tell it.

Then a replica taking over every partition at once (its peer died) replays the log once for all of them,
each partition booking its own reservations from the shared journal and its own subject's releases; one
lost while claiming holds none of the others back, and won back, replays alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from support import risk_replica, until
from tradeplane_services.eventlog import JOURNALS, PARTITIONS, REFUSAL_KIND, partition_of, subject
from tradeplane_services.natsserver import NatsServers
from tradeplane_services.protocol import (
    FrameRun,
    OrderType,
    Reason,
    Refusal,
    Release,
    Reservation,
    RiskCheck,
    RiskResult,
    Side,
    StreamDecoder,
    encode,
    layout_of,
    price_units,
    symbol_bytes,
)
from tradeplane_services.risk import Reserved, RiskService

LEASE_MILLIS = 60_000  # nothing lapses by itself during the test
ACCOUNT, OTHER_ACCOUNT = 4242, 4243
PARTITION = partition_of(ACCOUNT)


class Session:
    """The answers risk sends one client (the part of a connection the journal uses)."""

    def __init__(self) -> None:
        self.connected = True
        self.received_ns = 0
        self.answers: dict[int, int] = {}
        self.runs = 0
        self.on_check: Callable[[Any, RiskCheck], None] | None = None  # what runs taken apart go to

    def send(self, message: Any) -> None:
        assert isinstance(message, RiskResult)
        self.answers[message.order_id] = message.reason

    def send_run(self, frames: np.ndarray[Any, Any]) -> None:
        assert (frames["type"] == layout_of(RiskResult).type_id).all()
        self.answers.update(zip(frames["order_id"].tolist(), frames["reason"].tolist(), strict=True))
        self.runs += 1

    def send_frames(self, frames: bytearray) -> None:
        for message, _ in StreamDecoder().feed(frames):
            self.send(message)

    def dispatch_one_by_one(self, run: FrameRun) -> None:
        """As a connection does it: each check decoded and handed to `on_check`."""
        assert self.on_check is not None
        for message, _ in StreamDecoder().feed(run.data):
            self.on_check(self, message)


def reservation(order_id: int, account: int) -> Reservation:
    return Reservation(order_id, account, symbol_bytes("AAPL"), int(Side.BUY), 100, price_units(190), 0)


def open_orders(service: RiskService, partition: int = PARTITION) -> list[int]:
    return sorted(order[0] for order in service.engine.partition_state(partition)["orders"])


@contextlib.asynccontextmanager
async def two_replicas(servers: NatsServers, workdir: Path) -> AsyncIterator[tuple[RiskService, RiskService]]:
    """The first replica serving every partition, and an heir on the same log holding none."""
    first = risk_replica(servers, workdir, "risk-a", LEASE_MILLIS)
    heir = risk_replica(servers, workdir, "risk-b", LEASE_MILLIS)
    await first.start()
    assert heir.event_log is not None
    try:
        await until(lambda: all(first.serving(partition) for partition in range(PARTITIONS)), 30)
        await heir.event_log.open()
        heir.snapshots = await heir.event_log.snapshots()
        yield first, heir
    finally:
        await first.drain()
        await first.stop()
        for ledger in heir.ledgers.values():
            ledger.stop()
        await heir.stop()


async def sealed_out(servers: NatsServers, workdir: Path) -> None:
    async with two_replicas(servers, workdir) as (first, heir):
        assert heir.event_log is not None
        session = Session()
        first.journal.reserve(Reserved.one(first.ledgers[PARTITION], reservation(1, ACCOUNT), session))  # type: ignore[arg-type]
        await until(lambda: 1 in session.answers, 5)
        assert session.answers[1] == Reason.OK

        # The first replica is slow to read the partition: its follower stops short of the heir's claim.
        first.ledgers[PARTITION].task.cancel()
        heir.take_over(PARTITION, first.ledgers[PARTITION].lease_revision + 1)
        await until(lambda: heir.serving(PARTITION), 10)
        assert open_orders(heir) == [1], "the heir replays what the first replica acknowledged"
        assert first.serving(PARTITION), "the first replica has not noticed yet"

        # One turn of the first replica's loop: an order of the lost partition and one of another.
        first.journal.reserve(Reserved.one(first.ledgers[PARTITION], reservation(2, ACCOUNT), session))  # type: ignore[arg-type]
        other = first.ledgers[partition_of(OTHER_ACCOUNT)]
        first.journal.reserve(Reserved.one(other, reservation(3, OTHER_ACCOUNT), session))  # type: ignore[arg-type]
        await until(lambda: {2, 3} <= set(session.answers), 5)
        assert session.answers == {1: Reason.OK, 2: Reason.PARTITION_TAKEOVER, 3: Reason.OK}
        assert not first.serving(PARTITION) and first.serving(partition_of(OTHER_ACCOUNT))
        assert first.journal.seals == 1

        logged = [
            message.order_id
            async for event in heir.event_log.read(JOURNALS)
            for message in event.messages
            if isinstance(message, Reservation)
        ]
        assert logged == [1, 3], "the refused order is not in the log, the retried one is there once"
        assert open_orders(heir) == [1]


def test_a_replica_sealed_out_of_a_partition_refuses_what_it_had_not_logged_and_keeps_the_rest(
    nats_server: NatsServers, tmp_path: Path
) -> None:
    asyncio.run(sealed_out(nats_server, tmp_path))


async def taken_over_together(servers: NatsServers, workdir: Path) -> None:
    async with two_replicas(servers, workdir) as (first, heir):
        session, accepted = Session(), dict[int, list[int]]()
        for turn in range(3):  # three journal events, each with a reservation of every partition
            for account in range(ACCOUNT, ACCOUNT + PARTITIONS):
                order_id = turn * PARTITIONS + account - ACCOUNT + 1
                accepted.setdefault(partition_of(account), []).append(order_id)
                ledger = first.ledgers[partition_of(account)]
                first.journal.reserve(Reserved.one(ledger, reservation(order_id, account), session))  # type: ignore[arg-type]
            answered = (turn + 1) * PARTITIONS
            await until(lambda: len(session.answers) == answered, 5)  # noqa: B023 (awaited here)
        first.ledgers[PARTITION].release(Release(1, ACCOUNT))  # on the partition's own subject
        await until(lambda: not first.ledgers[PARTITION].busy, 5)
        accepted[PARTITION].remove(1)

        revisions = {partition: first.ledgers[partition].lease_revision for partition in range(PARTITIONS)}
        for partition in range(PARTITIONS):
            heir.take_over(partition, revisions[partition] + 1)
        lost = (PARTITION + 1) % PARTITIONS
        heir.give_up(lost)  # its lease lapsed while it was claiming: the others do not wait for it
        kept = [partition for partition in range(PARTITIONS) if partition != lost]
        await until(lambda: all(heir.serving(partition) for partition in kept), 10)
        assert heir.replays.status() == {"reads": 1, "partitions": PARTITIONS - 1}
        assert not heir.serving(lost)

        heir.take_over(lost, revisions[lost] + 2)  # won back: a read of its own
        await until(lambda: heir.serving(lost), 10)
        assert heir.replays.status() == {"reads": 2, "partitions": PARTITIONS}
        assert {partition: open_orders(heir, partition) for partition in range(PARTITIONS)} == accepted


def test_partitions_taken_over_together_replay_the_journals_once_each_booking_its_own(
    nats_server: NatsServers, tmp_path: Path
) -> None:
    asyncio.run(taken_over_together(nats_server, tmp_path))


def checks(*orders: tuple[int, int, int]) -> FrameRun:
    """(order id, account, quantity) as a run of RiskCheck frames, as one read of order's brings them."""
    frames = [
        encode(
            RiskCheck(
                order_id,
                account,
                symbol_bytes("AAPL"),
                Side.BUY,
                OrderType.LIMIT,
                quantity,
                price_units(190),
                0,
            ),
            sequence,
        )
        for sequence, (order_id, account, quantity) in enumerate(orders, 1)
    ]
    return FrameRun(layout_of(RiskCheck).type_id, b"".join(frames), len(frames))


async def checked_in_runs(servers: NatsServers, workdir: Path) -> None:
    async with two_replicas(servers, workdir) as (first, heir):
        assert heir.event_log is not None
        first.engine.set_reference(symbol_bytes("AAPL"), price_units(190))
        session = Session()
        session.on_check = first.on_check
        first.on_run(session, checks((1, ACCOUNT, 100), (2, OTHER_ACCOUNT, 100), (3, ACCOUNT, 200_000)))
        assert session.answers == {3: Reason.MAX_QUANTITY}, "a refusal waits for nothing"
        assert session.runs == 1, "the run was decided at once"
        await until(lambda: len(session.answers) == 3, 5)
        assert session.answers == {1: Reason.OK, 2: Reason.OK, 3: Reason.MAX_QUANTITY}
        await until(lambda: not first.ledgers[PARTITION].busy, 5)

        # Another replica holds the other account's partition now: the run is checked frame by frame.
        first.give_up(partition_of(OTHER_ACCOUNT))
        first.on_run(session, checks((4, OTHER_ACCOUNT, 100), (5, ACCOUNT, 101)))
        await until(lambda: 5 in session.answers, 5)
        assert session.answers[4] == Reason.PARTITION_TAKEOVER and session.answers[5] == Reason.OK

        # A partition lost after a run was decided, before its append: its order is refused, never logged;
        # the rest of the run is logged and accepted.
        third_account = ACCOUNT + 2
        first.on_run(session, checks((6, ACCOUNT, 102), (7, third_account, 100)))
        first.give_up(partition_of(third_account))
        await until(lambda: 6 in session.answers and 7 in session.answers, 5)
        assert session.answers[6] == Reason.OK and session.answers[7] == Reason.PARTITION_TAKEOVER

        journal = [m async for event in heir.event_log.read(JOURNALS) for m in event.messages]
        aapl, bought = symbol_bytes("AAPL"), int(Side.BUY)
        assert journal == [
            Reservation(1, ACCOUNT, aapl, bought, 100, price_units(190), 0),
            Reservation(2, OTHER_ACCOUNT, aapl, bought, 100, price_units(190), 0),
            Reservation(5, ACCOUNT, aapl, bought, 101, price_units(190), 0),
            Reservation(6, ACCOUNT, aapl, bought, 102, price_units(190), 0),
        ]
        refusals = [
            m async for event in heir.event_log.read(subject(REFUSAL_KIND, PARTITION)) for m in event.messages
        ]
        assert refusals == [Refusal(3, ACCOUNT, Reason.MAX_QUANTITY)]
        assert open_orders(first) == [1, 5, 6]


def test_a_run_of_checks_is_decided_at_once_and_each_acceptance_waits_for_the_journal(
    nats_server: NatsServers, tmp_path: Path
) -> None:
    asyncio.run(checked_in_runs(nats_server, tmp_path))
