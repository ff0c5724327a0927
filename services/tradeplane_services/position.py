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

Projection: per (account, symbol) the signed quantity, bought and sold volume, open cost (what the open
position cost), realized PnL, and unrealized PnL marked to the last market-data trade (or the last fill).
Amounts are in price units (1/10000). `pnlMethod` says what a closing fill realizes against: the
position's average cost, or its oldest open lots first (FIFO). Each method keeps its own snapshot.

Digest: a replica keeps a 64-bit digest of its log-derived state (the five figures of every position, not
the marks), the sum modulo 2^64 of a keyed hash of each position, so it does not depend on the order
positions were built in and a fill updates it by taking the position's old hash (kept) out and adding its
new one. After each event it records (log sequence, digest) in a bounded history. Two replicas with the same
settings that applied the same log have the same digest at every sequence both recorded, whether they
started from a snapshot or replayed everything: that is how a canary of position is compared with the
stable (`rollout.stateShadow`).

Read side (CQRS): PositionQuery over the wire answers PositionReport frames and a PositionQueryEnd;
GET /positions[?account=N] on the metrics port answers JSON with the log `sequence` it reflects, and GET
DIGESTS_ROUTE the digest history.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats.errors
import numpy as np

from tradeplane_services.catalog import DIGESTS_ROUTE
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
SNAPSHOT_FIELDS = ("quantity", "bought", "sold", "open_cost", "realized")
AVERAGE_COST, FIFO = "average-cost", "fifo"
# The snapshot of each PnL method under its own key: a replica of one method never starts from the other's.
SNAPSHOT_KEYS = {AVERAGE_COST: "position", FIFO: "position-fifo"}
DIGEST_HISTORY = 4096
"""(sequence, digest) pairs a replica keeps: a comparison needs sequences both sides still hold."""
DIGEST_MODULUS = 2**64
_DIGEST_KEY = b"tradeplane.position.v1"
_HASHED = struct.Struct("<q8s5q")  # account, symbol, the five figures


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
            self._opened(signed, price)
            return
        self._close(held, signed, price)

    def _opened(self, signed: int, price: int) -> None:
        """Opened or extended by `signed` at `price` (the average cost needs nothing more)."""

    def _close(self, held: int, signed: int, price: int) -> None:
        """Reduced, closed or flipped by `signed` at `price`: realize against the average cost."""
        closed = min(abs(signed), abs(held))
        direction = 1 if held > 0 else -1
        removed_cost = self.open_cost * closed // abs(held)
        self.realized += direction * closed * price - removed_cost
        self.open_cost -= removed_cost
        self.quantity = held + signed
        if self.quantity == 0:
            self.open_cost = 0
        elif (self.quantity > 0) != (held > 0):
            self.open_cost = self.quantity * price  # flipped: the rest opens at this price

    def figures(self) -> tuple[int, int, int, int, int]:
        """The five figures, in SNAPSHOT_FIELDS' order."""
        return (self.quantity, self.bought, self.sold, self.open_cost, self.realized)


class FifoPosition(Position):
    """A closing fill realizes against the oldest open lots first; the lots are [signed quantity, price]."""

    __slots__ = ("lots",)

    def __init__(self) -> None:
        super().__init__()
        self.lots: deque[list[int]] = deque()

    def _opened(self, signed: int, price: int) -> None:
        self.lots.append([signed, price])

    def _close(self, held: int, signed: int, price: int) -> None:
        direction = 1 if held > 0 else -1
        remaining = min(abs(signed), abs(held))
        while remaining:
            lot = self.lots[0]
            taken = min(remaining, abs(lot[0]))
            self.realized += direction * taken * (price - lot[1])
            self.open_cost -= direction * taken * lot[1]
            lot[0] -= direction * taken
            if lot[0] == 0:
                self.lots.popleft()
            remaining -= taken
        self.quantity = held + signed
        if abs(signed) > abs(held):  # flipped: the rest opens at this price
            self.lots.append([self.quantity, price])
            self.open_cost = self.quantity * price


POSITION_TYPES: dict[str, type[Position]] = {AVERAGE_COST: Position, FIFO: FifoPosition}


def position_hash(key: tuple[int, bytes], position: Position) -> int:
    """A position's share of the digest: a keyed 64-bit hash of its account, symbol and five figures."""
    account, symbol = key
    figures = position.figures()
    try:
        encoded = _HASHED.pack(account, symbol, *figures)
    except struct.error:  # a figure beyond 64 bits (the book's integers are unbounded): decimal text
        encoded = ",".join(str(n) for n in (account, symbol.hex(), *figures)).encode()
    return int.from_bytes(hashlib.blake2b(encoded, digest_size=8, key=_DIGEST_KEY).digest(), "little")


class PositionBook:
    """The projection: positions by (account, symbol), marks, the last fill applied per (source,
    partition), and the digest of the positions with its recent history."""

    def __init__(self, pnl_method: str = AVERAGE_COST) -> None:
        self.pnl_method = pnl_method
        self.position_type = POSITION_TYPES[pnl_method]
        self.positions: dict[tuple[int, bytes], Position] = {}
        self.marks: dict[bytes, int] = {}  # last market-data trade
        self.last_fill_price: dict[bytes, int] = {}
        self.applied: dict[tuple[int, int], int] = {}
        self.fills = 0
        self.sequence = 0  # the last event log sequence applied
        self.digest = 0
        self.shares: dict[tuple[int, bytes], int] = {}  # each position's hash, its share of the digest
        self.digests: deque[tuple[int, int]] = deque(maxlen=DIGEST_HISTORY)

    def to_snapshot(self) -> dict[str, Any]:
        """Everything but the marks (market data refreshes those): JSON for the snapshot store."""
        return {
            "sequence": self.sequence,
            "fills": self.fills,
            "pnlMethod": self.pnl_method,
            "applied": [[source, partition, last] for (source, partition), last in self.applied.items()],
            "lastFillPrice": {symbol_text(symbol): price for symbol, price in self.last_fill_price.items()},
            "positions": [
                [account, symbol_text(symbol), *position.figures()]
                for (account, symbol), position in self.positions.items()
            ],
            "lots": [
                [account, symbol_text(symbol), list(position.lots)]
                for (account, symbol), position in self.positions.items()
                if isinstance(position, FifoPosition)
            ],
        }

    @classmethod
    def from_snapshot(cls, document: dict[str, Any], pnl_method: str = AVERAGE_COST) -> PositionBook:
        stored_method = document.get("pnlMethod", AVERAGE_COST)
        if stored_method != pnl_method:
            raise ValueError(f"snapshot pnlMethod {stored_method!r}: this replica projects {pnl_method!r}")
        book = cls(pnl_method)
        book.sequence = document["sequence"]
        book.fills = document["fills"]
        book.applied = {(source, partition): sequence for source, partition, sequence in document["applied"]}
        book.last_fill_price = {symbol_bytes(s): price for s, price in document["lastFillPrice"].items()}
        for account, symbol, *values in document["positions"]:
            position = book.positions[account, symbol_bytes(symbol)] = book.position_type()
            for name, value in zip(SNAPSHOT_FIELDS, values, strict=True):
                setattr(position, name, value)
        for account, symbol, lots in document.get("lots", []):
            fifo = book.positions[account, symbol_bytes(symbol)]
            assert isinstance(fifo, FifoPosition)  # pnlMethod fifo, checked above, made every position one
            fifo.lots = deque(lots)
        book.shares = {key: position_hash(key, p) for key, p in book.positions.items()}
        book.digest = sum(book.shares.values()) % DIGEST_MODULUS
        if book.sequence:
            book.digests.append((book.sequence, book.digest))
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
            position = self.positions[key] = self.position_type()
        position.apply(fill.side, fill.quantity, fill.price)
        share = position_hash(key, position)
        self.digest = (self.digest - self.shares.get(key, 0) + share) % DIGEST_MODULUS
        self.shares[key] = share
        self.last_fill_price[fill.symbol] = fill.price
        self.fills += 1
        return True

    def advance(self, sequence: int) -> None:
        """The event at `sequence` is applied: record the digest the state has there."""
        self.sequence = sequence
        self.digests.append((sequence, self.digest))

    def digest_document(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "digest": f"{self.digest:016x}",
            "pnlMethod": self.pnl_method,
            "history": [[sequence, f"{digest:016x}"] for sequence, digest in self.digests],
        }

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
        self.book = PositionBook(settings.pnlMethod)
        self.snapshot_key = SNAPSHOT_KEYS[settings.pnlMethod]
        self.handlers = {PositionQuery: self.on_query}
        self.routes["/positions"] = self.positions_route
        self.routes[DIGESTS_ROUTE] = self.digests_route
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
            self.book = PositionBook.from_snapshot(document, self.settings.pnlMethod)
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
                return await self.snapshots.load(self.snapshot_key)
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("snapshot store unavailable; retrying", extra=fields(error=repr(error)))
                await asyncio.sleep(0.5)

    async def _project(self, events: AsyncIterator[Event]) -> None:
        settings = self.settings
        async for event in events:
            self.projected += 1
            for fill in event.messages:
                self.book.apply(fill)
            self.book.advance(event.sequence)
            if event.sequence - self.snapshot_sequence >= settings.snapshotEveryEvents:
                await self.snapshot()

    async def snapshot(self) -> None:
        """Replay starts here next time; a replica that finds a later snapshot stored leaves it."""
        if self.snapshots is None or self.book.sequence <= self.snapshot_sequence:
            return
        # Set before trying: a failed try is tried again after snapshotEveryEvents more events.
        self.snapshot_sequence = self.book.sequence
        try:
            await self.snapshots.save(self.snapshot_key, self.book.to_snapshot())
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

    def digests_route(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self.book.digest_document()).encode()

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
