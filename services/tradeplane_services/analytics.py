"""Analytics: the read side (CQRS). Ticks from the market-data feed and events from the log go into
ClickHouse tables (tickstore.py) in batches; the desk's questions are answered over HTTP and by
`tradeplane-svc query`.

Exactly once, per input stream (the feed's channel, the event log):
1. a batch is a contiguous range of packet sequences or log sequences, first..last;
2. before inserting it, the writer records first..last in `ingest_progress`;
3. each table gets the batch as one insert carrying a token made of the stream and the range, which
   ClickHouse refuses to store twice;
4. only then are the log's events acknowledged: the batch's last event, which acknowledges every one
   before it (AckPolicy.ALL: one acknowledgement a batch, not one an event).
On start the writer reads the last recorded batch and rebuilds exactly that range first (the log
redelivers from `first`; the feed replays it from market-data's retained packets), inserting with the same
tokens: whatever part of it was stored before a crash is refused, the rest is stored. Nothing is lost,
nothing doubled. A feed range market-data no longer retains comes back as a snapshot: counted as a gap.

Bad input is counted in `tradeplane_analytics_rejected_total{reason}` and logged, never written:
`malformed_packet`, `malformed_tick` (non-positive prices, crossed quotes, no time), `unknown_symbol`
(not in `symbols`), `malformed_event` and `schema_mismatch` (an event whose frames do not decode, or of
another protocol version), `unmapped_message` (a frame this schema has no table for), `feed_gap`.

Last values: the latest tick of each symbol goes to the JetStream key-value bucket `tradeplane-last-ticks`
(in memory: the ticks tables are the durable record, the cache refills from the next ticks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import numpy as np
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from tradeplane_services import tickstore
from tradeplane_services.config import Environment
from tradeplane_services.eventlog import (
    REVISION_HEADER,
    STREAM,
    SUBJECT_ROOT,
    EventLog,
    decode_event,
    partition_of,
)
from tradeplane_services.marketdata import subscribe_if_published
from tradeplane_services.position import PositionBook
from tradeplane_services.protocol import (
    BatchFlags,
    ExecType,
    Fill,
    KillSwitchChange,
    MarketDataBatch,
    PartitionClaim,
    ProtocolError,
    Reason,
    Side,
    symbol_bytes,
    symbol_text,
)
from tradeplane_services.runtime import Service, cancel_and_wait, fields, log
from tradeplane_services.settings import AnalyticsSettings
from tradeplane_services.tickstore import FILL_COLUMNS, ORDER_EVENT_COLUMNS, Nanoseconds, price_decimal

LAST_TICKS_BUCKET = "tradeplane-last-ticks"
EVENTS_STREAM = "events"
SCHEMA_REASONS = {Reason.WRONG_VERSION, Reason.UNKNOWN_TYPE}
ENUM_FIELDS = {"side": Side, "exec_type": ExecType, "reason": Reason}


def feed_stream(channel: int) -> str:
    return f"feed-{channel}"


class Rejections(Collector):
    """Bad input by reason, with the last example of each for /status."""

    def __init__(self, service: str, revision: str) -> None:
        self.labels = {"service": service, "revision": revision}
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.stored: Counter[str] = Counter()  # rows written, by table

    def count(self, reason: str, amount: int, example: str) -> None:
        if reason not in self.examples or self.counts[reason] % 1000 == 0:
            log.warning("input refused", extra=fields(reason=reason, amount=amount, example=example))
        self.counts[reason] += amount
        self.examples[reason] = example

    def collect(self) -> Iterator[Metric]:
        rejected = CounterMetricFamily(
            "tradeplane_analytics_rejected",
            "Input counted and not written, by reason",
            labels=[*self.labels, "reason"],
        )
        for reason, amount in sorted(self.counts.items()):
            rejected.add_metric([*self.labels.values(), reason], amount)
        yield rejected
        rows = CounterMetricFamily(
            "tradeplane_analytics_rows", "Rows written, by table", labels=[*self.labels, "table"]
        )
        for table, amount in sorted(self.stored.items()):
            rows.add_metric([*self.labels.values(), table], amount)
        yield rows


class TickBatches:
    """Feed packets in sequence order, validated, cut into batches of contiguous packet sequences."""

    def __init__(self, symbols: list[str], rejections: Rejections) -> None:
        self.known = np.array([symbol_bytes(name) for name in symbols], dtype="S8")
        self.rejections = rejections
        self.chunks: list[np.ndarray[Any, Any]] = []
        self.rows = 0
        self.first = 1  # packet sequences of the batch being gathered: first..last
        self.last = 0
        self.rebuild_until = 0  # after a restart: the recorded batch is rebuilt exactly up to here
        self.closed: list[tuple[int, int, np.ndarray[Any, Any]]] = []  # batches cut, not yet taken
        self.latest: dict[bytes, np.void] = {}  # last value of each symbol, for the cache

    def resume(self, first: int, last: int) -> None:
        """Start at packet `first`; with last >= first, that range is one batch (rebuilt as it was)."""
        self.first, self.last, self.rebuild_until = first, first - 1, last

    def remember(self, ticks: np.ndarray[Any, Any]) -> None:
        """The last value of each configured symbol, from every tick delivered (snapshots included)."""
        usable = ticks[np.isin(ticks["symbol"], self.known) & (ticks["last_price"] > 0)]
        for tick in usable[::-1]:
            self.latest.setdefault(bytes(tick["symbol"]), tick.copy())

    def add(self, batch: MarketDataBatch, sequence: int) -> None:
        if batch.flags & BatchFlags.SNAPSHOT:
            # Packets after the last one gathered, up to `sequence`, are gone from the publisher.
            self.rejections.count(
                "feed_gap",
                sequence - self.last,
                f"snapshot at packet {sequence}: packets after {self.last} lost",
            )
            self._close()
            self.first, self.last, self.rebuild_until = sequence + 1, sequence, 0
            return
        self.last = sequence
        # A copy of the valid ticks: the datagram's buffer is not ours to keep.
        self.chunks.append(self._valid(batch.ticks, sequence).copy())
        self.rows += len(self.chunks[-1])
        if self.rebuild_until and sequence >= self.rebuild_until:
            self._close()
            self.rebuild_until = 0

    def _valid(self, ticks: np.ndarray[Any, Any], sequence: int) -> np.ndarray[Any, Any]:
        known = np.isin(ticks["symbol"], self.known)
        if not known.all():
            first = symbol_text(bytes(ticks["symbol"][~known][0]))
            self.rejections.count(
                "unknown_symbol",
                int((~known).sum()),
                f"packet {sequence}: symbol {first!r} is not configured",
            )
        sane = (
            (ticks["last_price"] > 0)
            & (ticks["bid_price"] > 0)
            & (ticks["ask_price"] >= ticks["bid_price"])
            & (ticks["timestamp_ns"] > 0)
        )
        bad = known & ~sane
        if bad.any():
            tick = ticks[bad][0]
            self.rejections.count(
                "malformed_tick",
                int(bad.sum()),
                f"packet {sequence}: {symbol_text(bytes(tick['symbol']))} bid={tick['bid_price']}"
                f" ask={tick['ask_price']} last={tick['last_price']} time={tick['timestamp_ns']}",
            )
        result: np.ndarray[Any, Any] = ticks[known & sane]
        return result

    def _close(self) -> None:
        if self.chunks:
            self.closed.append((self.first, self.last, np.concatenate(self.chunks)))
        self.chunks, self.rows = [], 0
        self.first = self.last + 1

    def due(self, rows: int) -> bool:
        return bool(self.closed) or (not self.rebuild_until and self.rows >= rows)

    def take(self) -> tuple[int, int, np.ndarray[Any, Any]] | None:
        """The oldest batch cut, or (outside a rebuild) the one gathered so far."""
        if not self.closed and not self.rebuild_until:
            self._close()
        return self.closed.pop(0) if self.closed else None


class EventBatch:
    """Events of the log in sequence order, decoded into rows of the fills and order events tables."""

    def __init__(self, rejections: Rejections) -> None:
        self.rejections = rejections
        self.messages: list[Msg] = []
        self.fills: list[tuple[Any, ...]] = []
        self.orders: list[tuple[Any, ...]] = []
        self.first = 0
        self.last = 0

    def add(self, message: Msg) -> None:
        metadata = message.metadata
        sequence = int(metadata.sequence.stream)
        if not self.messages:
            self.first = sequence
        self.last = sequence
        self.messages.append(message)
        parts = message.subject.split(".")
        where = f"event {sequence} on {message.subject}"
        journal = len(parts) == 5 and parts[2] == "journal"  # a risk replica's: partitions by account
        try:
            if not journal and (len(parts) != 4 or not parts[2].isdigit()):
                raise ProtocolError(
                    Reason.MALFORMED_FRAME,
                    0,
                    f"{where}: not {SUBJECT_ROOT}.<partition>.<kind> or .journal.<writer>.<kind>",
                )
            frames = decode_event(message.data, where)
        except ProtocolError as error:
            reason = "schema_mismatch" if error.reason in SCHEMA_REASONS else "malformed_event"
            self.rejections.count(reason, 1, str(error))
            return
        kind = parts[-1]
        partition = -1 if journal else int(parts[2])
        logged = Nanoseconds(int(metadata.timestamp.timestamp() * 1e9) if metadata.timestamp else 0)
        revision = (message.headers or {}).get(REVISION_HEADER, "")
        for frame, body in enumerate(frames):
            if isinstance(body, Fill) and kind == "fill":
                self.fills.append(fill_row(sequence, frame, partition, logged, revision, body))
            elif isinstance(body, (PartitionClaim, KillSwitchChange)):
                continue  # who answers for a partition, a kill switch's move: no order in either
            elif hasattr(body, "order_id"):
                of = partition_of(getattr(body, "account", 0)) if journal else partition
                self.orders.append(order_row(sequence, frame, of, logged, kind, revision, body))
            else:
                self.rejections.count(
                    "unmapped_message", 1, f"{where}: frame {frame} {type(body).__name__} has no table"
                )


def fill_row(
    sequence: int, frame: int, partition: int, logged: int, revision: str, fill: Fill
) -> tuple[Any, ...]:
    values = {
        "log_sequence": sequence,
        "frame": frame,
        "partition": partition,
        "logged_at": Nanoseconds(logged),
        "timestamp": Nanoseconds(fill.timestamp_ns or logged),
        "account": fill.account,
        "symbol": symbol_text(fill.symbol),
        "side": Side(fill.side).name,
        "quantity": fill.quantity,
        "price": price_decimal(fill.price),
        "order_id": fill.order_id,
        "source": fill.source,
        "fill_sequence": fill.fill_sequence,
        "revision": revision,
    }
    return tuple(values[name] for name in FILL_COLUMNS)


def order_row(
    sequence: int, frame: int, partition: int, logged: int, kind: str, revision: str, body: Any
) -> tuple[Any, ...]:
    """Any frame about an order: the fields it has fill their columns, the others keep defaults."""
    values: dict[str, Any] = {
        "log_sequence": sequence,
        "frame": frame,
        "partition": partition,
        "logged_at": Nanoseconds(logged),
        "kind": kind,
        "message": type(body).__name__,
        "revision": revision,
        "order_id": 0,
        "client_order_id": 0,
        "account": 0,
        "symbol": "",
        "side": "",
        "exec_type": "",
        "reason": "",
        "quantity": 0,
        "price": price_decimal(0),
        "last_quantity": 0,
        "last_price": price_decimal(0),
        "leaves_quantity": 0,
    }
    for name, value in body._asdict().items():
        if name not in values:
            continue
        if name == "symbol":
            value = symbol_text(value)
        elif name in ENUM_FIELDS:
            enum = ENUM_FIELDS[name]
            value = enum(value).name if value in enum._value2member_map_ else str(value)
        elif name in ("price", "last_price"):
            value = price_decimal(value)
        values[name] = value
    return tuple(values[name] for name in ORDER_EVENT_COLUMNS)


def open_store(settings: AnalyticsSettings, state_dir: Path) -> tickstore.Store:
    """A ClickHouse server when configured, else chDB on `storePath` (default: in the state directory)."""
    store: tickstore.Store
    if settings.clickhouseUrl:
        store = tickstore.ServerStore(settings.clickhouseUrl, settings.clickhouseDatabase)
    else:
        store = tickstore.ChdbStore(
            Path(settings.storePath) if settings.storePath else state_dir / "analytics"
        )
    for statement in tickstore.render_schema(settings.clickhouseCluster, settings.clickhouseDatabase):
        store.execute(statement)
    return store


def recorded_batch(store: tickstore.Store, stream: str) -> tuple[int, int] | None:
    rows = store.rows(
        f"SELECT first, last FROM ingest_progress WHERE stream = {tickstore.literal(stream)}"
        " ORDER BY last DESC LIMIT 1"
    )
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


class AnalyticsService(Service[AnalyticsSettings]):
    name = "analytics"

    def __init__(self, environment: Environment, settings: AnalyticsSettings) -> None:
        super().__init__(environment, settings)
        self.rejections = Rejections(self.name, environment.revision)
        self.registry.register(self.rejections)
        self.store = open_store(settings, environment.state_dir)
        self.ticks = TickBatches(list(settings.symbols), self.rejections)
        self.events = EventBatch(self.rejections)
        self.event_log: EventLog | None = None
        if environment.event_log:
            self.event_log = EventLog(environment.event_log, environment.event_log_replicas, "analytics")
        else:
            log.warning("TRADEPLANE_EVENT_LOG is not set: no fills or order events to store")
        self.market_data = subscribe_if_published(environment, self.ticks.remember, self.metrics)
        if self.market_data is not None:
            self.market_data.on_packet = self.ticks.add
        self.channel = settings.feedChannel
        self.ingested_sequence = 0  # the last log sequence stored
        self.caught_up = False
        self.last_values: KeyValue | None = None
        self.cached: dict[str, dict[str, int]] = {}  # what the last-value cache was last given
        self.tasks: list[asyncio.Task[None]] = []
        self.subscription: JetStreamContext.PullSubscription | None = None
        self.events_rebuilding = 0  # after a restart: the recorded batch of events ends here
        for path, route in {
            "/ohlcv": self.ohlcv_route,
            "/vwap": self.vwap_route,
            "/positions": self.positions_route,
            "/tca": self.tca_route,
            "/kpis": self.kpis_route,
            "/last": self.last_route,
        }.items():
            self.routes[path] = route

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        recorded = await asyncio.to_thread(recorded_batch, self.store, feed_stream(self.channel))
        if self.market_data is not None:
            # Resume where the store ends: the recorded batch again, then on (a fresh store: packet 1).
            first, last = recorded or (1, 0)
            self.market_data.expected = first
            self.ticks.resume(first, last)
            await self.market_data.start()
            self.tasks.append(loop.create_task(self._write_ticks()))
        if self.event_log is None:
            self.caught_up = True
        else:
            await self.event_log.open()
            self.tasks.append(loop.create_task(self._consume_events()))
            self.tasks.append(loop.create_task(self._cache_last_values()))
        for task in self.tasks:
            task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """Ingestion ends only with the service; otherwise the store would silently fall behind."""
        if task.cancelled():
            return
        log.error("analytics ingestion stopped", exc_info=task.exception())
        os.kill(os.getpid(), signal.SIGTERM)

    def ready(self) -> bool:
        return self.caught_up

    # --- writing -----------------------------------------------------------------------------------

    async def _write_ticks(self) -> None:
        stream = feed_stream(self.channel)
        while True:
            settings = self.settings
            deadline = time.monotonic() + settings.batchMillis / 1000
            while time.monotonic() < deadline and not self.ticks.due(settings.batchRows):
                await asyncio.sleep(0.005)
            batch = self.ticks.take()
            if batch is None:
                continue
            first, last, ticks = batch
            await asyncio.to_thread(self._store_ticks, stream, first, last, ticks)

    def _store_ticks(self, stream: str, first: int, last: int, ticks: np.ndarray[Any, Any]) -> None:
        started = time.perf_counter_ns()
        self._record(stream, first, last)
        if len(ticks):
            self.store.insert_ticks(ticks, f"{stream}:{first}-{last}")
            self.rejections.stored["market_ticks"] += len(ticks)
        self.metrics.record(started)

    def _record(self, stream: str, first: int, last: int) -> None:
        self.store.insert_rows(
            "ingest_progress",
            ("stream", "first", "last"),
            [(stream, first, last)],
            f"{stream}:{first}-{last}",
        )

    async def _consume_events(self) -> None:
        """The durable consumer starts where the store ends: the recorded batch, rebuilt exactly."""
        event_log = self.event_log
        assert event_log is not None and event_log.js is not None
        settings = self.settings
        recorded = await asyncio.to_thread(recorded_batch, self.store, EVENTS_STREAM)
        first, self.events_rebuilding = (recorded[0], recorded[1]) if recorded else (1, 0)
        self.ingested_sequence = first - 1
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await event_log.js.delete_consumer(STREAM, settings.consumerName)
        self.subscription = subscription = await event_log.js.pull_subscribe(
            f"{SUBJECT_ROOT}.>",
            durable=settings.consumerName,
            stream=STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=first,
                ack_policy=AckPolicy.ALL,
                ack_wait=60.0,
                max_ack_pending=settings.batchRows * 2,
            ),
        )
        target = await event_log.last_sequence()
        deadline = time.monotonic() + settings.batchMillis / 1000
        while True:
            settings = self.settings
            try:
                messages = await subscription.fetch(min(settings.batchRows, 4096), timeout=0.05)
            except TimeoutError:  # nats-py raises its own or asyncio's
                messages = []
            except nats.errors.Error as error:
                log.warning("event log unavailable; retrying", extra=fields(error=repr(error)))
                await asyncio.sleep(0.2)
                continue
            for message in messages:
                sequence = int(message.metadata.sequence.stream)
                if sequence <= max(self.ingested_sequence, self.events.last):
                    await message.ack()  # redelivered: the store or the batch being gathered has it
                    continue
                self.events.add(message)
                if self.events_rebuilding and sequence >= self.events_rebuilding:
                    await self._flush_events()  # the recorded batch, exactly as it was
                    self.events_rebuilding = 0
            gathered = len(self.events.messages)
            if (
                gathered
                and not self.events_rebuilding
                and (gathered >= settings.batchRows or time.monotonic() >= deadline)
            ):
                await self._flush_events()
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + settings.batchMillis / 1000
            if not self.caught_up and self.ingested_sequence >= target and not self.events_rebuilding:
                self.caught_up = True
                log.info("event log caught up", extra=fields(sequence=self.ingested_sequence))

    async def _flush_events(self) -> None:
        """Store the batch, then acknowledge its events (the ack reaches the server before the next)."""
        assert self.event_log is not None and self.event_log.nc is not None
        batch, self.events = self.events, EventBatch(self.rejections)
        await asyncio.to_thread(self._store_events, batch)
        await batch.messages[-1].ack()
        await self.event_log.nc.flush()
        self.ingested_sequence = batch.last

    def _store_events(self, batch: EventBatch) -> None:
        started = time.perf_counter_ns()
        token = f"{EVENTS_STREAM}:{batch.first}-{batch.last}"
        self._record(EVENTS_STREAM, batch.first, batch.last)
        self.store.insert_rows("fills", FILL_COLUMNS, batch.fills, f"{token}:fills")
        self.store.insert_rows("order_events", ORDER_EVENT_COLUMNS, batch.orders, f"{token}:order_events")
        self.rejections.stored["fills"] += len(batch.fills)
        self.rejections.stored["order_events"] += len(batch.orders)
        self.metrics.record(started)

    async def _cache_last_values(self) -> None:
        """The latest tick of each symbol into the key-value bucket, at most once per batch interval."""
        event_log = self.event_log
        assert event_log is not None and event_log.js is not None
        try:
            self.last_values = await event_log.js.key_value(LAST_TICKS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            self.last_values = await event_log.js.create_key_value(
                KeyValueConfig(
                    bucket=LAST_TICKS_BUCKET,
                    history=1,
                    storage=StorageType.MEMORY,
                    replicas=event_log.replicas,
                )
            )
        while True:
            await asyncio.sleep(self.settings.batchMillis / 1000)
            latest, self.ticks.latest = self.ticks.latest, {}
            if not latest:
                continue
            values = {symbol_text(symbol): last_value(tick) for symbol, tick in latest.items()}
            try:
                await asyncio.gather(
                    *(
                        self.last_values.put(name, json.dumps(value).encode())
                        for name, value in values.items()
                    )
                )
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("last values not cached", extra=fields(error=repr(error)))
                continue
            self.cached.update(values)

    # --- reading -----------------------------------------------------------------------------------

    def ohlcv_route(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return _answer(
            lambda q: tickstore.ohlcv(
                self.store, _text(q, "symbol"), _text(q, "interval", "1m"), _time(q, "from"), _time(q, "to")
            ),
            query,
        )

    def vwap_route(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return _answer(
            lambda q: tickstore.vwap(self.store, _text(q, "symbol"), _time(q, "from"), _time(q, "to")), query
        )

    def tca_route(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return _answer(
            lambda q: tickstore.tca(
                self.store, _number(q, "account"), _optional(q, "revision"), _time(q, "from"), _time(q, "to")
            ),
            query,
        )

    def kpis_route(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return _answer(
            lambda q: tickstore.kpis(self.store, _optional(q, "revision"), _time(q, "from"), _time(q, "to")),
            query,
        )

    def positions_route(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return _answer(self.positions, query)

    def positions(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """Positions as the position service had them at a log sequence (default: all that is stored),
        rebuilt from the fills by the same book it keeps."""
        account = _number(query, "account") or 0
        moment = _time(query, "time")
        sequence = _number(query, "sequence")
        if sequence is None:
            sequence = self.ingested_sequence if moment is None else tickstore.sequence_at(self.store, moment)
        if sequence > self.ingested_sequence:
            raise ValueError(f"sequence={sequence}: the store holds the log up to {self.ingested_sequence}")
        return positions_at(self.store, account, sequence)

    def last_route(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        """What the last-value cache holds (as this writer last put it), of one symbol or all."""

        def answer(q: dict[str, list[str]]) -> dict[str, Any]:
            symbol = _optional(q, "symbol")
            if symbol is None:
                return self.cached
            if symbol not in self.cached:
                raise ValueError(f"symbol={symbol!r}: no tick cached")
            return {symbol: self.cached[symbol]}

        return _answer(answer, query)

    def status(self) -> dict[str, Any]:
        return {
            "sequence": self.ingested_sequence,
            "feedSequence": self.ticks.first - 1,
            "rows": dict(self.rejections.stored),
            "rejected": dict(self.rejections.counts),
            "rejectedExamples": self.rejections.examples,
        }

    async def drain(self) -> None:
        """Stop taking input and store what was gathered (its events acknowledged)."""
        await cancel_and_wait(*self.tasks)
        if self.market_data is not None:  # ticks would keep coming, and this would store them for ever
            await self.market_data.stop()
        while (batch := self.ticks.take()) is not None:
            await asyncio.to_thread(self._store_ticks, feed_stream(self.channel), *batch)
        if self.events.messages and not self.events_rebuilding:
            await self._flush_events()
        if self.subscription is not None:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await self.subscription.unsubscribe()

    async def stop(self) -> None:
        await cancel_and_wait(*self.tasks)
        if self.market_data is not None:
            await self.market_data.stop()
        if self.event_log is not None:
            await self.event_log.close()
        self.store.close()


def positions_at(store: tickstore.Store, account: int, sequence: int) -> dict[str, Any]:
    """Positions of `account` (0: every account) after the fills up to log `sequence`, applied by the
    position service's own book: the same duplicate rule, the same average-cost realized PnL. Only the
    account's partition is read; the book's duplicate rule is per partition."""
    book = PositionBook()
    partition = partition_of(account) if account else None
    wire_symbols: dict[str, bytes] = {}  # a handful of symbols over many fills: convert each once
    for source, number, owner, symbol, side, quantity, price, order_id, stamp in tickstore.fills_until(
        store, sequence, partition
    ):
        wire = wire_symbols.get(symbol) or wire_symbols.setdefault(symbol, symbol_bytes(symbol))
        book.apply(Fill(source, number, owner, wire, Side[side], quantity, price, order_id, stamp))
    reports = [{**report._asdict(), "symbol": symbol_text(report.symbol)} for report in book.reports(account)]
    return {"sequence": sequence, "fills": book.fills, "positions": reports}


def last_value(tick: np.void) -> dict[str, int]:
    """A tick as the cache holds it: prices in 1/10000 as on the wire."""
    return {
        "bid": int(tick["bid_price"]),
        "ask": int(tick["ask_price"]),
        "last": int(tick["last_price"]),
        "bidQuantity": int(tick["bid_quantity"]),
        "askQuantity": int(tick["ask_quantity"]),
        "timestampNs": int(tick["timestamp_ns"]),
    }


def _answer(question: Any, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
    try:
        answer = question(query)
    except ValueError as error:
        return 400, "text/plain", f"{error}\n".encode()
    return 200, "application/json", json.dumps(answer, default=str).encode()


def _optional(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _text(query: dict[str, list[str]], name: str, default: str | None = None) -> str:
    value = _optional(query, name) or default
    if value is None:
        raise ValueError(f"{name}: required")
    return value


def _number(query: dict[str, list[str]], name: str) -> int | None:
    value = _optional(query, name)
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"{name}={value!r}: expected a non-negative integer")
    return int(value)


def _time(query: dict[str, list[str]], name: str) -> int | None:
    """Nanoseconds since the epoch, given as such or as ISO 8601 (UTC unless it says otherwise)."""
    value = _optional(query, name)
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected ISO 8601 or nanoseconds since the epoch") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000_000)
