"""`tradeplane-svc log ...`: what a desk asks of the event log.

    tradeplane-svc log info                         the stream: events, sequences, replicas; the snapshot
    tradeplane-svc log dump --account N             every fill of an account, with its log sequence
    tradeplane-svc log replay --to-sequence N       positions as they stood at sequence N
    tradeplane-svc log partitions                   risk's account partitions, their owners and members

The log is TRADEPLANE_EVENT_LOG (or --event-log); the commands only read it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import nats.errors
import nats.js.errors

from tradeplane_services.client import describe
from tradeplane_services.config import ConfigError, parse_event_log
from tradeplane_services.eventlog import LEASE_BUCKET, STREAM, EventLog, partition_of, subject_filter
from tradeplane_services.partitions import MEMBER_PREFIX, LeaseTable
from tradeplane_services.position import FILLS, SNAPSHOT_KEYS, PositionBook
from tradeplane_services.protocol import Fill, ProtocolError, Side, price_value, symbol_text

DEFAULT_EVENT_LOG = "nats://127.0.0.1:4222"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event-log",
        default=os.environ.get("TRADEPLANE_EVENT_LOG") or DEFAULT_EVENT_LOG,
        help="nats:// URLs, comma-separated (default $TRADEPLANE_EVENT_LOG or %(default)s)",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("info", help="the stream's events, sequences and replicas, and the latest snapshot")
    dump = actions.add_parser("dump", help="every fill of one account, with its log sequence")
    dump.add_argument("--account", type=int, required=True)
    dump.add_argument("--from-sequence", type=int, default=1)
    dump.add_argument("--to-sequence", type=int)
    replay = actions.add_parser("replay", help="positions as they stood at a log sequence")
    replay.add_argument("--to-sequence", type=int, required=True)
    replay.add_argument("--account", type=int, default=0, help="only this account (default: all)")
    actions.add_parser("partitions", help="risk's account partitions, who owns each, and the risk replicas")


def describe_fill(sequence: int, fill: Fill) -> str:
    return (
        f"{sequence:>10} fill {fill.source}/{fill.fill_sequence} account={fill.account} "
        f"{symbol_text(fill.symbol):<6} {Side(fill.side).name:<4} "
        f"{fill.quantity}@{price_value(fill.price):.2f} order={fill.order_id}"
    )


async def info(log: EventLog) -> None:
    assert log.js is not None
    stream = await log.js.stream_info(STREAM)
    state = stream.state
    print(
        f"stream {STREAM}: {state.messages} events, sequences {state.first_seq}-{state.last_seq}, "
        f"replicas {stream.config.num_replicas}, subjects {stream.config.subjects}"
    )
    snapshots = await log.snapshots()
    for method, key in SNAPSHOT_KEYS.items():
        snapshot = await snapshots.load(key)
        if snapshot is None:
            print(f"position snapshot ({method}): none (replay starts at sequence 1)")
        else:
            print(
                f"position snapshot ({method}): at sequence {snapshot['sequence']}, {snapshot['fills']} fills"
            )


async def dump(log: EventLog, account: int, start: int, stop: int | None) -> None:
    count = 0
    async for event in log.read(subject_filter("*", partition_of(account)), start, stop):
        for message in event.messages:
            if isinstance(message, Fill) and message.account == account:
                print(describe_fill(event.sequence, message))
                count += 1
    print(f"{count} fills of account {account}")


async def replay(log: EventLog, stop: int, account: int) -> None:
    book = PositionBook()
    async for event in log.read(FILLS, 1, stop):
        for message in event.messages:
            book.apply(message)
        book.advance(event.sequence)
    print(f"positions at sequence {book.sequence} ({book.fills} fills):")
    for report in book.reports(account):
        print("  " + describe(report))


async def partitions(log: EventLog) -> None:
    """The lease bucket as it is: a line per partition, then the members."""
    bucket = await log.bucket(LEASE_BUCKET)
    table = LeaseTable()
    # Every key's last entry, until the one nothing is pending after. Not `bucket.keys()`: nats-py ends
    # that at a marker it can queue before the entries when the server delivers them fast, and then
    # says the bucket is empty.
    watcher = await bucket.watchall()
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                break  # an empty bucket sends nothing
            if entry is None:
                continue
            deleted = entry.operation in ("DEL", "PURGE")
            table.apply(entry.key, entry.value, entry.revision or 0, deleted)
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    print(f"{'partition':<10} {'owner':<24} {'state':<10} address")
    for partition, lease in table.owners().items():
        if lease is None:
            print(f"{partition:<10} {'-':<24} {'free':<10} -")
        else:
            state = "serving" if lease.serving else "replaying"
            print(f"{partition:<10} {lease.owner:<24} {state:<10} {lease.address}")
    members = sorted(key.removeprefix(MEMBER_PREFIX) for key in table.leases if key.startswith(MEMBER_PREFIX))
    print(f"members: {', '.join(members) or 'none'}")


async def run_async(arguments: argparse.Namespace) -> None:
    log = EventLog(parse_event_log(arguments.event_log), name="tradeplane-svc log")
    await log.connect(attempts=2)  # a person waits for an answer, not for ever
    try:
        if arguments.action == "info":
            await info(log)
        elif arguments.action == "dump":
            await dump(log, arguments.account, arguments.from_sequence, arguments.to_sequence)
        elif arguments.action == "partitions":
            await partitions(log)
        else:
            await replay(log, arguments.to_sequence, arguments.account)
    finally:
        await log.close()


def main(arguments: argparse.Namespace) -> int:
    try:
        asyncio.run(run_async(arguments))
    except (ConfigError, ProtocolError) as error:
        print(f"tradeplane-svc log: {error}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError, nats.errors.Error) as error:
        print(f"tradeplane-svc log: event log {arguments.event_log}: {error!r}", file=sys.stderr)
        return 1
    return 0
