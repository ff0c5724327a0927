"""Partition leases on a real nats-server, two owners in one process: a joining replica is handed
partitions only once it has been live for a whole lease duration, so one that went quiet for a moment
and came back is not handed partitions it may lose again at once; ownership still spreads after that."""

from __future__ import annotations

import asyncio
import contextlib
import time

from support import until
from tradeplane_services.eventlog import LEASE_BUCKET, PARTITIONS, EventLog
from tradeplane_services.natsserver import NatsServers
from tradeplane_services.partitions import LeaseTable, PartitionOwner

LEASE_SECONDS = 1.0


class Replica:
    """One side of the leases with what happened to it: partitions claimed and lost, with times."""

    def __init__(self, identity: str, event_log: EventLog) -> None:
        self.event_log = event_log
        self.table = LeaseTable()
        self.owner = PartitionOwner(
            identity,
            f"{identity}:1",
            self.table,
            claimed=lambda partition, _: self.held.add(partition),
            lost=self.lose,
            serving=lambda partition: partition in self.held,
            duration=lambda: LEASE_SECONDS,
        )
        self.held: set[int] = set()
        self.lost_at: list[float] = []
        self.tasks: list[asyncio.Task[None]] = []

    def lose(self, partition: int) -> None:
        self.held.discard(partition)
        self.lost_at.append(time.monotonic())

    async def start(self) -> float:
        kv = await self.event_log.bucket(LEASE_BUCKET)
        self.tasks = [
            asyncio.create_task(self.table.follow(self.event_log)),
            asyncio.create_task(self.owner.run(kv)),
        ]
        return time.monotonic()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_a_joining_replica_gets_partitions_only_after_a_lease_duration_live(nats_server: NatsServers) -> None:
    async def scenario() -> None:
        event_log = EventLog(nats_server.url.split(","))
        await event_log.open()
        first, second = Replica("risk-a", event_log), Replica("risk-b", event_log)
        try:
            await first.start()
            await until(lambda: len(first.held) == PARTITIONS, timeout=10)
            joined = await second.start()
            await until(lambda: len(second.held) == PARTITIONS // 2, timeout=30)
            assert len(first.held) == PARTITIONS // 2
            assert first.held.isdisjoint(second.held)
            assert min(first.lost_at) - joined >= LEASE_SECONDS, "handed over before the joiner settled"
        finally:
            await second.stop()
            await first.stop()
            await event_log.close()

    asyncio.run(scenario())
