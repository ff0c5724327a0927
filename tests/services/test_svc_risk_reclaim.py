"""A risk replica whose own partition lease lapsed claims the partition again while the follower of its
old lease still reads the log, its cancellation lost (in Python 3.11 asyncio.wait_for can drop one that
races a message). The new lease's ledger serves and keeps serving: the old follower neither fences it with
the replica's own new claim nor folds the log's events into its exposure a second time.

One RiskService in this process, on a real nats-server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support import risk_replica, until
from tradeplane_services.eventlog import PARTITIONS, Append, partition_of
from tradeplane_services.natsserver import NatsServers
from tradeplane_services.protocol import Fill, Side, price_units, symbol_bytes
from tradeplane_services.risk import PartitionLedger

LEASE_MILLIS = 500
ACCOUNT = 4242
PARTITION = partition_of(ACCOUNT)


class LostCancellation:
    """A ledger's task as it behaves when its cancellation is lost: cancel() changes nothing."""

    def cancel(self) -> bool:
        return False


def positions(ledger: PartitionLedger) -> list[object]:
    """The partition's accounts as its ledger's engine holds them."""
    accounts: list[object] = ledger.engine.partition_state(PARTITION)["accounts"]
    return accounts


async def reclaim(servers: NatsServers, workdir: Path) -> None:
    service = risk_replica(servers, workdir, "risk-a", LEASE_MILLIS)
    await service.start()
    try:
        await until(lambda: all(service.serving(partition) for partition in range(PARTITIONS)), 30)
        old = service.ledgers[PARTITION]
        follower = old.task
        old.task = LostCancellation()  # type: ignore[assignment]
        service.lose(PARTITION)  # its lease lost: the old ledger stops, its follower reads on
        assert not service.serving(PARTITION)

        # The lease, unrenewed, lapses; the replica is the partition's preferred owner and claims it again.
        await until(lambda: service.serving(PARTITION), 10 * LEASE_MILLIS / 1000)
        new = service.ledgers[PARTITION]
        assert new is not old and new.lease_revision > old.lease_revision
        await until(follower.done, 5)
        assert follower.exception() is None, "the old follower ends quietly at the next event it reads"

        # A fill reaches the exposure once, through the new ledger only.
        assert service.event_log is not None
        fill = Fill(7, 1, ACCOUNT, symbol_bytes("AAPL"), Side.BUY, 100, price_units(190), 99, time.time_ns())
        await service.event_log.append([Append("fill", PARTITION, [fill], "fill-7-1")])
        await until(lambda: bool(positions(new)), 5)
        (account,) = positions(new)
        assert account[0] == ACCOUNT and account[2]["AAPL"][0] == 100, account  # type: ignore[index]

        # Three lease durations on, the same lease still serves: nothing fenced it.
        await asyncio.sleep(3 * LEASE_MILLIS / 1000)
        assert service.ledgers[PARTITION] is new and new.serving
        assert service.owner.owned.get(PARTITION) is not None
    finally:
        await service.drain()
        await service.stop()


def test_a_lapsed_lease_claimed_again_is_not_fenced_by_its_own_old_follower(
    nats_server: NatsServers, tmp_path: Path
) -> None:
    asyncio.run(reclaim(nats_server, tmp_path))
