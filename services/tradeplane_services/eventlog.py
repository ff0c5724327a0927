"""The event log: a NATS JetStream stream every state change that matters is appended to.

Subjects carry the accounts' partition: `tradeplane.events.<partition>.<kind>` (kind `fill`, ...), so a
consumer can read one partition, one kind, or everything. An event holds one or more wire-protocol frames
(the same versioned little-endian layouts as on the wire, header sequence 0) of one partition: a writer
commits what one turn of its loop produced as one event per partition, because a durable append costs an
fsync on the server, and one fsync per message would cap the log at the disk's sync rate.

Risk's reservations are the exception: a risk replica writes those of every partition it holds to a
journal of its own, `tradeplane.events.journal.<writer>.risk`, one event per turn of its loop, because they
are the one event an answer waits for, and one fenced append per partition per turn was what capped the
order path (risk.py: Journal). Each frame names its partition through its account.

Durability is explicit at each step:
- the servers tradeplane starts fsync every write before acknowledging it (`sync_interval: always`,
  natsserver.py); on real clusters the stream is replicated (`replicas`, R3);
- every append carries a `Nats-Msg-Id`, so a retry after a lost acknowledgement is stored once
  (the stream's duplicate window), and the caller waits for the acknowledgement, retrying until it comes;
- every consumer acknowledges explicitly what it has applied.

Snapshots of projections live in a JetStream key-value bucket; a snapshot is replaced only by one that
reflects a later sequence, with revision-checked updates so two replicas never overwrite each other
blindly.

A single writer per subject (a risk replica's journal, a partition's claims) appends with `append_fenced`:
the event is stored only if the subject's last event is still the one the writer saw, so a writer that
lost its partition to another finds out at its next append instead of writing beside the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from tradeplane_services.protocol import HEADER_SIZE, ProtocolError, Reason, decode, encode
from tradeplane_services.runtime import fields, log

STREAM = "TRADEPLANE_EVENTS"
SUBJECT_ROOT = "tradeplane.events"
PARTITIONS = 16
RISK_KIND = "risk"  # reservations and claims: one writer per partition, fenced
RELEASE_KIND = "release"  # orders that can trade no more
REFUSAL_KIND = "refusal"  # checks risk refused, with the reason
KILL_SWITCH_KIND = "killswitch"  # the kill switch's moves, on partition 0 (it is firm-wide)
SNAPSHOT_BUCKET = "tradeplane-snapshots"
LEASE_BUCKET = "tradeplane-risk-leases"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code: the expected last sequence on the subject differs
DUPLICATE_WINDOW_SECONDS = 120.0
APPEND_TIMEOUT_SECONDS = 2.0
FETCH_BATCH = 512
FOLLOW_HEARTBEAT_SECONDS = 0.5
"""A follower's consumer that sends no heartbeat for two of these is recreated."""
STALLED_FETCHES = 3
"""Fetches in a row that time out with events pending before the consumer is taken for stuck."""
FRAME_LENGTH = struct.Struct("<H")
REVISION_HEADER = "Tradeplane-Revision"  # the writer's pod-template revision: KPIs per canary revision


def partition_of(account: int) -> int:
    return account % PARTITIONS


def subject(kind: str, partition: int) -> str:
    return f"{SUBJECT_ROOT}.{partition}.{kind}"


def subject_filter(kind: str = "*", partition: int | None = None) -> str:
    return f"{SUBJECT_ROOT}.{'*' if partition is None else partition}.{kind}"


JOURNALS = f"{SUBJECT_ROOT}.journal.*.{RISK_KIND}"
"""Every risk replica's journal: what a partition's next owner replays beside the partition's subjects."""


def journal_subject(writer: str) -> str:
    return f"{SUBJECT_ROOT}.journal.{writer}.{RISK_KIND}"


def partition_of_subject(on: str) -> int | None:
    """The partition of a partition's subject; None for a journal's (its frames name theirs)."""
    token = on.split(".")[2]
    return None if token == "journal" else int(token)


class Event(NamedTuple):
    sequence: int  # the stream sequence: a position in the log
    subject: str
    messages: list[Any]


class Append(NamedTuple):
    kind: str
    partition: int
    messages: list[Any]
    event_id: str  # Nats-Msg-Id: the same event appended twice is stored once

    @property
    def subject(self) -> str:
        return subject(self.kind, self.partition)


class Entry(NamedTuple):
    """An event appended to a subject of its own choosing (a journal), not to a partition's."""

    subject: str
    messages: list[Any] | bytes  # or their frames, encoded already
    event_id: str


def encode_event(messages: list[Any] | bytes) -> bytes:
    return messages if isinstance(messages, bytes) else b"".join(encode(message) for message in messages)


def decode_event(data: bytes, where: str) -> list[Any]:
    """The frames of one event; a damaged one is a ProtocolError naming the event and the byte."""
    messages, offset = [], 0
    while offset < len(data):
        if len(data) - offset < HEADER_SIZE:
            left = len(data) - offset
            raise ProtocolError(Reason.TRUNCATED, offset, f"{where}: {left} bytes after the last frame")
        (length,) = FRAME_LENGTH.unpack_from(data, offset)
        try:
            message, _ = decode(data[offset : offset + length])
        except ProtocolError as error:
            raise ProtocolError(error.reason, offset + error.offset, f"{where}: {error.detail}") from None
        messages.append(message)
        offset += length
    return messages


class Fenced(Exception):
    """Another writer appended to the subject after the event this writer expected to be the last."""


class ConsumerStalled(Exception):
    """A consumer with events pending delivers none: it is read again from a new one."""


@dataclass
class EventLog:
    servers: list[str]
    replicas: int = 1
    name: str = "tradeplane"
    revision: str = ""  # stamped on every append (REVISION_HEADER) when set
    nc: Client | None = None
    js: JetStreamContext | None = None
    reconnects: int = 0

    async def connect(self, attempts: int = -1) -> None:
        """Connect, trying each server `attempts` times (-1: for ever); connected, the client reconnects
        by itself after a loss as often."""
        self.nc = await nats.connect(
            self.servers,
            name=self.name,
            max_reconnect_attempts=attempts,
            reconnect_time_wait=0.1,
            connect_timeout=2,
            error_cb=self._connection_error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )
        self.js = self.nc.jetstream(timeout=APPEND_TIMEOUT_SECONDS)

    async def open(self) -> None:
        """Connect and make sure the stream exists, waiting (with a warning each time) until the log
        answers: a service that needs the log is not ready without it."""
        while True:
            try:
                if self.nc is None:
                    await self.connect()
                await self.ensure_stream()
                return
            except (OSError, TimeoutError, nats.errors.Error) as error:
                log.warning("event log unavailable; retrying", extra=fields(error=repr(error)))
                await asyncio.sleep(0.5)

    @staticmethod
    async def _connection_error(error: Exception) -> None:
        log.warning("event log connection error", extra=fields(error=repr(error)))

    async def _disconnected(self) -> None:
        log.warning("event log disconnected", extra=fields(servers=self.servers))

    async def _reconnected(self) -> None:
        assert self.nc is not None
        self.reconnects += 1
        url = self.nc.connected_url
        log.info("event log reconnected", extra=fields(server=url.netloc if url else None))

    async def ensure_stream(self) -> None:
        """The stream exists: one there is used as it is (whoever runs the log may have tuned it),
        a missing one is created with tradeplane's settings."""
        assert self.js is not None
        try:
            await self.js.stream_info(STREAM)
            return
        except nats.js.errors.NotFoundError:
            pass
        await self.js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=[f"{SUBJECT_ROOT}.>"],
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=DUPLICATE_WINDOW_SECONDS,
            )
        )

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def append(self, events: Sequence[Append | Entry]) -> list[int]:
        """Store every event, in order of their sequences; returns them. Retries until the log has them all:
        a caller acknowledges nothing before this returns."""
        assert self.js is not None
        sequences: dict[int, int] = {}
        revision = {REVISION_HEADER: self.revision} if self.revision else {}
        delay = 0.05
        while len(sequences) < len(events):
            waiting = [index for index in range(len(events)) if index not in sequences]
            try:
                futures = [
                    await self.js.publish_async(
                        events[i].subject,
                        encode_event(events[i].messages),
                        headers={"Nats-Msg-Id": events[i].event_id, **revision},
                    )
                    for i in waiting
                ]
                results = await asyncio.wait_for(
                    asyncio.gather(*futures, return_exceptions=True), APPEND_TIMEOUT_SECONDS
                )
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("event log append failed; retrying", extra=fields(error=repr(error)))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            for index, result in zip(waiting, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("event log refused an append; retrying", extra=fields(error=repr(result)))
                else:
                    sequences[index] = result.seq
            if len(sequences) < len(events):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        return [sequences[index] for index in range(len(events))]

    async def append_fenced(self, event: Append | Entry, expected_last: int) -> int:
        """Store `event` only if the last event on its subject has sequence `expected_last` (0: none);
        its sequence. Retries like `append` (the stream deduplicates before it checks the expectation, so a
        retry after a lost acknowledgement gets the stored event's sequence); Fenced if another writer
        came in between."""
        assert self.js is not None
        headers = {"Nats-Msg-Id": event.event_id, "Nats-Expected-Last-Subject-Sequence": str(expected_last)}
        delay = 0.05
        while True:
            try:
                acknowledgement = await self.js.publish(
                    event.subject, encode_event(event.messages), headers=headers
                )
                return int(acknowledgement.seq)
            except nats.js.errors.APIError as error:
                if error.err_code == WRONG_LAST_SEQUENCE:
                    raise Fenced(f"{event.subject}: {error.description}") from None
                log.warning("event log refused an append; retrying", extra=fields(error=repr(error)))
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("event log append failed; retrying", extra=fields(error=repr(error)))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def last_on(self, on: str, damaged: Callable[[ProtocolError], None] | None = None) -> Event | None:
        """The last event on one subject (None: none yet); one that cannot be decoded raises
        ProtocolError, or with `damaged` is handed to it and comes back empty."""
        assert self.js is not None
        try:
            message = await self.js.get_last_msg(STREAM, on)
        except nats.js.errors.NotFoundError:
            return None
        sequence = int(message.seq or 0)
        return _decoded(sequence, on, message.data or b"", damaged)

    async def last_sequence(self) -> int:
        assert self.js is not None
        info = await self.js.stream_info(STREAM)
        return int(info.state.last_seq)

    async def read(
        self,
        filter_subject: str | tuple[str, ...],
        start: int = 1,
        stop: int | None = None,
        follow: bool = False,
        damaged: Callable[[ProtocolError], None] | None = None,
    ) -> AsyncIterator[Event]:
        """Events on `filter_subject` (or on any of several, in log order) from sequence `start`: up to
        `stop` (default: the end of the log as it is now), or for ever with `follow` (`_follow`, one
        subject filter). Up to `stop`, each is acknowledged once
        the caller has taken it, and a lost consumer (a server restart) is recreated from the next
        sequence. An event that cannot be decoded raises ProtocolError, or with `damaged` is handed to
        it and passed over as an empty event."""
        assert self.js is not None
        next_sequence = max(1, start)
        if follow:
            assert isinstance(filter_subject, str), "a follower reads one subject filter"
            async for event in self._follow(filter_subject, next_sequence, damaged):
                yield event
            return
        filters = (filter_subject,) if isinstance(filter_subject, str) else filter_subject
        if stop is None:
            stop = await self.last_sequence()
        while next_sequence <= stop:
            # A consumer from before a reconnect may be stuck on the old server's state: start anew.
            reconnects = self.reconnects
            try:
                subscription = await self.js.pull_subscribe(
                    filters[0],
                    stream=STREAM,
                    config=ConsumerConfig(
                        filter_subjects=list(filters) if len(filters) > 1 else None,
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=next_sequence,
                        ack_policy=AckPolicy.EXPLICIT,
                        max_ack_pending=FETCH_BATCH * 4,
                        inactive_threshold=30.0,  # a dead reader's consumer goes away by itself
                    ),
                )
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("event log unavailable; retrying", extra=fields(error=repr(error)))
                await asyncio.sleep(0.2)
                continue
            stalls = 0  # fetches in a row that timed out with events pending
            try:
                while next_sequence <= stop and reconnects == self.reconnects:
                    try:
                        messages = await subscription.fetch(FETCH_BATCH, timeout=0.5)
                    except TimeoutError:  # nats-py raises its own or asyncio's
                        # Quiet, or the consumer is gone or stuck (its server was killed and came
                        # back without it delivering): asking tells which.
                        pending = (await subscription.consumer_info()).num_pending
                        if pending == 0:
                            return  # nothing more on this subject
                        stalls += 1
                        if stalls < STALLED_FETCHES:
                            continue
                        raise ConsumerStalled(f"{pending} events pending, none delivered") from None
                    stalls = 0
                    for message in messages:
                        event = self._event(message, damaged)
                        if event.sequence < next_sequence:
                            await message.ack()  # redelivered to a consumer from before a reconnect
                            continue
                        if event.sequence > stop:
                            return
                        next_sequence = event.sequence + 1
                        yield event
                        await message.ack()
                        if message.metadata.num_pending == 0:
                            return
            except (TimeoutError, nats.errors.Error, ConsumerStalled) as error:
                log.warning("event log consumer lost; resuming", extra=fields(error=repr(error)))
                await asyncio.sleep(0.2)
            finally:
                await _quietly_unsubscribe(subscription)

    async def _follow(
        self, filter_subject: str, start: int, damaged: Callable[[ProtocolError], None] | None
    ) -> AsyncIterator[Event]:
        """Events on `filter_subject` from `start` for ever, through an ordered push consumer: the server
        sends each event once and in order, with no pull request and no acknowledgement per event (a
        follower's position is its own, so nothing is worth acknowledging). The client recreates the
        consumer from the event after the last one delivered when a delivery is missing or its heartbeats
        stop (its server went away), and the server waits for the reader under flow control."""
        assert self.js is not None
        arrived: asyncio.Queue[Msg] = asyncio.Queue(FETCH_BATCH)  # full: nats-py's queue holds the rest
        while True:
            try:
                subscription = await self.js.subscribe(
                    filter_subject,
                    stream=STREAM,
                    cb=arrived.put,
                    manual_ack=True,
                    ordered_consumer=True,
                    idle_heartbeat=FOLLOW_HEARTBEAT_SECONDS,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
                    ),
                )
                break
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("event log unavailable; retrying", extra=fields(error=repr(error)))
                await asyncio.sleep(0.2)
        try:
            while True:
                yield self._event(await arrived.get(), damaged)
        finally:
            await _quietly_unsubscribe(subscription)

    @staticmethod
    def _event(message: Msg, damaged: Callable[[ProtocolError], None] | None) -> Event:
        """The event `message` holds; a damaged one raises ProtocolError, or with `damaged` is handed to
        it and comes back empty."""
        return _decoded(int(message.metadata.sequence.stream), message.subject, message.data, damaged)

    async def snapshots(self) -> Snapshots:
        return Snapshots(await self.bucket(SNAPSHOT_BUCKET))

    async def bucket(self, name: str) -> KeyValue:
        """A key-value bucket, created (one revision per key, file storage) when missing."""
        assert self.js is not None
        try:
            return await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(
                bucket=name, history=1, replicas=self.replicas, storage=StorageType.FILE
            )

    async def close(self) -> None:
        """Flush and close. Not nats-py's drain: every append has been acknowledged before its caller went
        on, and drain would wait (30 s) for followers whose readers are gone to take what is queued."""
        if self.nc is None:
            return
        if self.nc.is_connected:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await self.nc.flush(timeout=1)
        await self.nc.close()


def _decoded(sequence: int, on: str, data: bytes, damaged: Callable[[ProtocolError], None] | None) -> Event:
    try:
        return Event(sequence, on, decode_event(data, f"event {sequence} on {on}"))
    except ProtocolError as error:
        if damaged is None:
            raise
        damaged(error)
        return Event(sequence, on, [])


async def _quietly_unsubscribe(
    subscription: JetStreamContext.PullSubscription | JetStreamContext.PushSubscription,
) -> None:
    # The connection or the consumer may be gone already; the server drops it after inactivity then.
    with contextlib.suppress(TimeoutError, nats.errors.Error):
        await subscription.unsubscribe()


class Snapshots:
    """Projections' snapshots by key: JSON documents carrying the log `sequence` they reflect."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.revisions: dict[str, int] = {}

    async def load(self, key: str) -> dict[str, Any] | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        self.revisions[key] = entry.revision or 0
        document: dict[str, Any] = json.loads(entry.value or b"{}")
        return document

    async def save(self, key: str, document: dict[str, Any]) -> bool:
        """Store unless the bucket holds a snapshot of the same or a later sequence; whether it stored."""
        data = json.dumps(document, separators=(",", ":")).encode()
        while True:
            revision = self.revisions.get(key)
            try:
                if revision is None:
                    self.revisions[key] = await self.kv.create(key, data)
                else:
                    self.revisions[key] = await self.kv.update(key, data, last=revision)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                current = await self.load(key)  # another replica wrote one: keep the later
                if current is not None and current.get("sequence", 0) >= document["sequence"]:
                    return False
