"""Position: positions and PnL as a projection of the event log, and a read API.

Nothing that matters lives in the pod: fills are events in the log (execution appends them before any
client hears of them), and any number of position replicas each read the log. On start a replica loads
the latest snapshot from the log's key-value store and replays the events after it, then follows the
log; it becomes ready once it has caught up with the log as it was at start. Every
`snapshotEveryEvents` events (and on SIGTERM) it stores a snapshot, unless one of a later sequence is
there already, so replay time stays bounded. Fills are identified by (source, fill_sequence) and each
source appends a partition's fills in sequence order (not across partitions: each partition is its own
event), so a fill at or below the last applied of its (source, partition) is never applied again,
whatever the log delivers twice.

Projection: per (account, symbol) the signed quantity, bought and sold volume, open cost (signed quantity
times price of the open position, average-cost method), realized PnL, and unrealized PnL marked to the
last market-data trade (or the last fill). Amounts are in price units (1/10000).

Read side (CQRS): PositionQuery over the wire answers PositionReport frames and a PositionQueryEnd;
GET /positions[?account=N] on the metrics port answers JSON with the log `sequence` it reflects.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats.errors
import numpy as np

from tradeplane_services.config import Environment
from tradeplane_services.eventlog import Event, EventLog, Snapshots, partition_of, subject_filter
from tradeplane_services.marketdata import subscribe_if_published
from tradeplane_services.protocol import (
    I64,
    U64,
    Fill,
    PositionQuery,
    PositionQueryEnd,
    PositionReport,
    Side,
    saturate,
    symbol_bytes,
    symbol_text,
)
from tradeplane_services.runtime import Connection, Service, cancel_and_wait, fields, log, run_for_life
from tradeplane_services.settings import PositionSettings

BUY = int(Side.BUY)
FILLS = subject_filter("fill")
SNAPSHOT_KEY = "position"
SNAPSHOT_FIELDS = ("quantity", "bought", "sold", "open_cost", "realized")


class Position:
    __slots__ = ("bought", "open_cost", "quantity", "realized", "sold")

    def __init__(self) -> None:
        self.quantity = 0
        self.bought = 0
        self.sold = 0
        self.open_cost = 0
        self.realized = 0

    def apply(self, side: int, quantity: int, price: int) -> None:
        signed = quantity if side == BUY else -quantity
        if side == BUY:
            self.bought += quantity
        else:
            self.sold += quantity
        held = self.quantity
        if held == 0 or (held > 0) == (signed > 0):
            self.quantity = held + signed
            self.open_cost += signed * price
            return
        closed = min(quantity, abs(held))
        direction = 1 if held > 0 else -1
        removed_cost = self.open_cost * closed // abs(held)
        self.realized += direction * closed * price - removed_cost
        self.open_cost -= removed_cost
        self.quantity = held + signed
        if self.quantity == 0:
            self.open_cost = 0
        elif (self.quantity > 0) != (held > 0):
            self.open_cost = self.quantity * price  # flipped: the rest opens at this price


class PositionBook:
    """The projection: positions by (account, symbol), marks, and the last fill applied per (source,
    partition)."""

    def __init__(self) -> None:
        self.positions: dict[tuple[int, bytes], Position] = {}
        self.marks: dict[bytes, int] = {}  # last market-data trade
        self.last_fill_price: dict[bytes, int] = {}
        self.applied: dict[tuple[int, int], int] = {}
        self.fills = 0
        self.sequence = 0  # the last event log sequence applied

    def to_snapshot(self) -> dict[str, Any]:
        """Everything but the marks (market data refreshes those): JSON for the snapshot store."""
        return {
            "sequence": self.sequence,
            "fills": self.fills,
            "applied": [[source, partition, last] for (source, partition), last in self.applied.items()],
            "lastFillPrice": {symbol_text(symbol): price for symbol, price in self.last_fill_price.items()},
            "positions": [
                [account, symbol_text(symbol), *(getattr(position, name) for name in SNAPSHOT_FIELDS)]
                for (account, symbol), position in self.positions.items()
            ],
        }

    @classmethod
    def from_snapshot(cls, document: dict[str, Any]) -> PositionBook:
        book = cls()
        book.sequence = document["sequence"]
        book.fills = document["fills"]
        book.applied = {(source, partition): sequence for source, partition, sequence in document["applied"]}
        book.last_fill_price = {symbol_bytes(s): price for s, price in document["lastFillPrice"].items()}
        for account, symbol, *values in document["positions"]:
            position = book.positions[account, symbol_bytes(symbol)] = Position()
            for name, value in zip(SNAPSHOT_FIELDS, values, strict=True):
                setattr(position, name, value)
        return book

    def apply(self, fill: Fill) -> bool:
        """Apply a fill unless it was applied before; whether it was new."""
        stream = (fill.source, partition_of(fill.account))
        if fill.fill_sequence <= self.applied.get(stream, 0):
            return False
        self.applied[stream] = fill.fill_sequence
        key = (fill.account, fill.symbol)
        position = self.positions.get(key)
        if position is None:
            position = self.positions[key] = Position()
        position.apply(fill.side, fill.quantity, fill.price)
        self.last_fill_price[fill.symbol] = fill.price
        self.fills += 1
        return True

    def mark(self, symbols: np.ndarray[Any, Any], prices: np.ndarray[Any, Any]) -> None:
        """Mark to market from a tick batch: the last trade price of each symbol in it."""
        unique, last = np.unique(symbols[::-1], return_index=True)
        latest = prices[::-1][last]
        for symbol, price in zip(unique.tolist(), latest.tolist(), strict=True):
            if price > 0:
                self.marks[symbol.ljust(8, b"\0")] = price

    def report(self, account: int, symbol: bytes) -> PositionReport:
        position = self.positions[account, symbol]
        mark = self.marks.get(symbol) or self.last_fill_price.get(symbol, 0)
        unrealized = position.quantity * mark - position.open_cost if position.quantity else 0
        # The book's integers are unbounded; the wire's are 64-bit: beyond that a report saturates.
        return PositionReport(
            account,
            symbol,
            saturate(position.quantity, I64),
            saturate(position.bought, U64),
            saturate(position.sold, U64),
            saturate(position.open_cost, I64),
            saturate(position.realized, I64),
            mark,
            saturate(unrealized, I64),
        )

    def reports(self, account: int = 0) -> Iterator[PositionReport]:
        for key_account, symbol in sorted(self.positions):
            if account in (0, key_account):
                yield self.report(key_account, symbol)


class PositionService(Service[PositionSettings]):
    name = "position"

    def __init__(self, environment: Environment, settings: PositionSettings) -> None:
        super().__init__(environment, settings)
        self.book = PositionBook()
        self.handlers = {PositionQuery: self.on_query}
        self.routes["/positions"] = self.positions_route
        self.replayed = False
        self.projected = 0  # events applied since the start
        self.replay: dict[str, float] = {}  # the start's replay: events, fills, seconds
        self.snapshot_sequence = 0  # the last snapshot tried
        self.stored_snapshot = 0  # the last one stored, or loaded at start
        self.snapshots: Snapshots | None = None
        self._projection: asyncio.Task[None] | None = None
        self.event_log: EventLog | None = None
        if environment.event_log:
            self.event_log = EventLog(environment.event_log, environment.event_log_replicas, "position")
        else:
            log.warning("TRADEPLANE_EVENT_LOG is not set: no fills to project")
        self.market_data = subscribe_if_published(environment, self.on_ticks, self.metrics)

    async def start(self) -> None:
        if self.market_data is not None:
            await self.market_data.start()
        if self.event_log is None:
            self.replayed = True
            return
        started = time.perf_counter()
        await self.event_log.open()
        document = await self._load_snapshot(self.event_log)
        if document is not None:
            self.book = PositionBook.from_snapshot(document)
            self.snapshot_sequence = self.stored_snapshot = self.book.sequence
        from_snapshot = self.book.fills
        await self._project(self.event_log.read(FILLS, self.book.sequence + 1))
        self.replayed = True
        self.replay = {
            "events": self.projected,
            "fills": self.book.fills - from_snapshot,
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info(
            "event log replayed",
            extra=fields(
                snapshotSequence=self.stored_snapshot,
                fillsFromSnapshot=from_snapshot,
                eventsReplayed=self.projected,
                fillsReplayed=self.replay["fills"],
                sequence=self.book.sequence,
                seconds=self.replay["seconds"],
            ),
        )
        # Were it to stop following, this replica would answer stale positions as if current.
        self._projection = run_for_life(
            self._project(self.event_log.read(FILLS, self.book.sequence + 1, follow=True)),
            "following the event log",
        )

    async def _load_snapshot(self, event_log: EventLog) -> dict[str, Any] | None:
        """The latest snapshot, waiting while the log cannot answer (a cluster electing a leader)."""
        while True:
            try:
                self.snapshots = await event_log.snapshots()
                return await self.snapshots.load(SNAPSHOT_KEY)
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("snapshot store unavailable; retrying", extra=fields(error=repr(error)))
                await asyncio.sleep(0.5)

    async def _project(self, events: AsyncIterator[Event]) -> None:
        settings = self.settings
        async for event in events:
            self.projected += 1
            for fill in event.messages:
                self.book.apply(fill)
            self.book.sequence = event.sequence
            if event.sequence - self.snapshot_sequence >= settings.snapshotEveryEvents:
                await self.snapshot()

    async def snapshot(self) -> None:
        """Replay starts here next time; a replica that finds a later snapshot stored leaves it."""
        if self.snapshots is None or self.book.sequence <= self.snapshot_sequence:
            return
        # Set before trying: a failed try is tried again after snapshotEveryEvents more events.
        self.snapshot_sequence = self.book.sequence
        try:
            await self.snapshots.save(SNAPSHOT_KEY, self.book.to_snapshot())
        except (TimeoutError, nats.errors.Error) as error:
            # Only replay time depends on it.
            log.warning("snapshot not stored", extra=fields(error=repr(error), sequence=self.book.sequence))
            return
        self.stored_snapshot = self.book.sequence

    def ready(self) -> bool:
        return self.replayed

    def on_ticks(self, ticks: np.ndarray[Any, Any]) -> None:
        self.book.mark(ticks["symbol"], ticks["last_price"])

    def on_query(self, connection: Connection, query: PositionQuery) -> None:
        count = 0
        for report in self.book.reports(query.account):
            connection.send(report)
            count += 1
        connection.send(PositionQueryEnd(count))
        self.metrics.record(connection.received_ns)

    def positions_route(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        account_text = query.get("account", ["0"])[0]
        if not account_text.isdigit():
            return 400, "text/plain", f"account={account_text!r}: expected a number\n".encode()
        reports = [
            {**report._asdict(), "symbol": symbol_text(report.symbol)}
            for report in self.book.reports(int(account_text))
        ]
        document = {"sequence": self.book.sequence, "fills": self.book.fills, "positions": reports}
        return 200, "application/json", json.dumps(document).encode()

    async def drain(self) -> None:
        await self.snapshot()

    async def stop(self) -> None:
        await cancel_and_wait(self._projection)
        if self.market_data is not None:
            await self.market_data.stop()
        if self.event_log is not None:
            await self.event_log.close()

    def status(self) -> dict[str, Any]:
        return {
            "fills": self.book.fills,
            "positions": len(self.book.positions),
            "sequence": self.book.sequence,
            "snapshotSequence": self.stored_snapshot,
            "replay": self.replay,
        }
