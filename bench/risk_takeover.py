"""Takeover time of a risk partition: kill -9 its owner, time until an order of it is accepted again.

Each run starts a fresh local stack with two order and two risk replicas (partitions spread over both),
after writing --history synthetic events into the partition (reservations and releases of a past
session: the partition's first owner replays them and, past --snapshot-every events, snapshots the
result), then kills -9 the risk replica owning the partition of account 9001 while a probe session sends
that account's 1-lot orders every 5 ms, and reports:
- takeover: kill -9 to the first probe order accepted (what a client sees: lease expiry, claim, replay,
  the lease saying "serving", order's view of it);
- claim to serving: the heir's own part (fence in the log, replay of the partition), from its /status;
- the refusals seen meanwhile (PARTITION_TAKEOVER while no replica serves the partition).
The lease duration (--lease-ms) bounds the detection part; the median of --runs runs is printed.

    python bench/risk_takeover.py
    python bench/risk_takeover.py --runs 9 --lease-ms 500 --history 100000
    python bench/risk_takeover.py --history 20000 --snapshot-every 1000000   # the heir replays it all
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tradeplane_services.client import OrderSession
from tradeplane_services.drills import start_partitioned, time_takeover
from tradeplane_services.eventlog import RELEASE_KIND, Append, Entry, EventLog, journal_subject, partition_of
from tradeplane_services.protocol import Reason, Release, Reservation, Side, price_units, symbol_bytes
from tradeplane_services.stack import Stack

ACCOUNT = 9001
PER_EVENT = 32


async def write_history(url: str, events: int) -> None:
    """`events` events of the account's partition: reservations of a past day in a past replica's journal,
    each later released."""
    log = EventLog(url.split(","))
    await log.open()
    partition, aapl, price = partition_of(ACCOUNT), symbol_bytes("AAPL"), price_units(190)
    journal = journal_subject("history")
    try:
        for n in range(0, events, 2):
            orders = range(n * PER_EVENT, (n + 1) * PER_EVENT)
            reservations = [Reservation(o, ACCOUNT, aapl, int(Side.BUY), 1, price, 0) for o in orders]
            releases = [Release(o, ACCOUNT) for o in orders]
            await log.append(
                [
                    Entry(journal, reservations, f"h-{n}"),
                    Append(RELEASE_KIND, partition, releases, f"h-{n}-r"),
                ]
            )
    finally:
        await log.close()


Run = tuple[float, float, int, dict[str, int]]  # takeover s, claim to serving s, events replayed, refusals


def one_run(workdir: Path, host: str, lease_ms: int, history: int, snapshot_every: int) -> Run:
    settings = {"risk": {"partitionLeaseMillis": lease_ms, "snapshotEveryEvents": snapshot_every}}
    stack = Stack(host, workdir, settings)
    os.environ["TRADEPLANE_KEYS_DIR"] = str(stack.keys_dir)
    try:
        stack.workdir.mkdir(parents=True, exist_ok=True)
        stack.events.start()
        stack.events.wait_ready()
        asyncio.run(write_history(stack.events.url, history))
        start_partitioned(stack)
        time.sleep(2 * lease_ms / 1000)  # leases settled: nothing but the kill moves partitions
        with OrderSession(stack.address("order-1")) as probe:
            takeover = time_takeover(stack, probe, ACCOUNT, "AAPL", 185.0)
    finally:
        stack.stop()
    refused = {Reason(reason).name: count for reason, count in takeover.refused.items()}
    return takeover.seconds, takeover.replay_seconds, takeover.replayed_events, refused


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lease-ms", type=int, default=1000, help="risk's partitionLeaseMillis")
    parser.add_argument("--history", type=int, default=2000, help="synthetic events in the partition's log")
    parser.add_argument("--snapshot-every", type=int, default=1000, help="risk's snapshotEveryEvents")
    arguments = parser.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    takeovers, replays = [], []
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
        for run in range(arguments.runs):
            seconds, replay, replayed, refused = one_run(
                Path(scratch) / f"run-{run}",
                f"127.77.252.{run + 1}",
                arguments.lease_ms,
                arguments.history,
                arguments.snapshot_every,
            )
            takeovers.append(seconds)
            replays.append(replay)
            print(
                f"run {run + 1}: takeover {seconds * 1000:7.1f} ms   claim to serving {replay * 1000:6.1f} ms"
                f" ({replayed} events replayed)   refused meanwhile {refused}",
                flush=True,
            )
    print(
        f"median of {arguments.runs} runs, lease {arguments.lease_ms} ms: takeover "
        f"{statistics.median(takeovers) * 1000:.1f} ms (min {min(takeovers) * 1000:.1f}, max "
        f"{max(takeovers) * 1000:.1f}); claim to serving {statistics.median(replays) * 1000:.1f} ms"
    )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
