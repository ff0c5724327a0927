"""Position: event-sourced positions and PnL from fills, with a durable append-only log and a read API.

Write side: every fill is appended to `fills.log` (a header, then fixed records: CRC32 + the Fill body)
before it is acknowledged. fsync policy: `always` fsyncs each group of fills before acknowledging it
(group commit per event-loop turn); `interval` acknowledges once written (safe against a process crash)
and fsyncs every fsyncIntervalMillis; `never` leaves flushing to the OS. Fills are identified by
(source, fill_sequence): one already applied is acknowledged again, never applied twice.

Projection: per (account, symbol) the signed quantity, bought and sold volume, open cost (signed quantity
times price of the open position, average-cost method), realized PnL, and unrealized PnL marked to the
last market-data trade (or the last fill). Amounts are in price units (1/10000). Replaying the log on start
rebuilds exactly the same state; a torn last record (crash mid-write) is cut off, damage anywhere else
stops the service with the byte offset.

Read side (CQRS): PositionQuery over the wire answers PositionReport frames and a PositionQueryEnd;
GET /positions[?account=N] on the metrics port answers JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tradeplane_services.config import Environment, PositionSettings, Settings
from tradeplane_services.marketdata import subscribe_if_published
from tradeplane_services.protocol import (
    I64,
    U64,
    Fill,
    FillAck,
    PositionQuery,
    PositionQueryEnd,
    PositionReport,
    Side,
    layout_of,
    saturate,
    symbol_text,
)
from tradeplane_services.runtime import Connection, Service, fields, log

LOG_MAGIC = b"TPFILLOG"
LOG_VERSION = 1
LOG_HEADER = struct.Struct("<8sII")  # magic, version, record size
FILL_BODY = struct.Struct("<" + layout_of(Fill).frame.format[len("<HBBQ") :])
RECORD = struct.Struct("<I" + FILL_BODY.format[1:])
BUY = int(Side.BUY)


class LogCorruption(Exception):
    """The fill log is damaged somewhere other than its last record."""


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
    """The projection: positions by (account, symbol), marks, and the last fill applied per source."""

    def __init__(self) -> None:
        self.positions: dict[tuple[int, bytes], Position] = {}
        self.marks: dict[bytes, int] = {}  # last market-data trade
        self.last_fill_price: dict[bytes, int] = {}
        self.applied: dict[int, int] = {}
        self.fills = 0

    def apply(self, fill: Fill) -> bool:
        """Apply a fill unless it was applied before; whether it was new."""
        if fill.fill_sequence <= self.applied.get(fill.source, 0):
            return False
        self.applied[fill.source] = fill.fill_sequence
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


class FillLog:
    """fills.log: an append-only file of CRC-protected fill records."""

    def __init__(self, directory: Path, fsync: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "fills.log"
        self.fsync_policy = fsync
        self.dirty = False
        self.records = 0
        self._fd = -1

    def replay(self) -> Iterator[Fill]:
        """Every intact record in order; cuts a torn last record off the file."""
        header = LOG_HEADER.pack(LOG_MAGIC, LOG_VERSION, RECORD.size)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.write_bytes(header)
            _fsync_path(self.path)
            return
        data = self.path.read_bytes()
        if len(data) < LOG_HEADER.size or data[: LOG_HEADER.size] != header:
            raise LogCorruption(f"{self.path}: byte 0: not a version {LOG_VERSION} fill log of this layout")
        size = RECORD.size
        end = len(data)
        offset = LOG_HEADER.size
        while offset < end:
            if end - offset < size:
                self._truncate(offset, f"{end - offset} bytes of a torn last record")
                return
            crc = struct.unpack_from("<I", data, offset)[0]
            if zlib.crc32(data[offset + 4 : offset + size]) != crc:
                if end - offset == size:
                    self._truncate(offset, "a last record with a bad checksum")
                    return
                raise LogCorruption(f"{self.path}: byte {offset}: record checksum mismatch")
            self.records += 1
            yield Fill._make(FILL_BODY.unpack_from(data, offset + 4))
            offset += size

    def _truncate(self, offset: int, what: str) -> None:
        log.warning("cutting the fill log", extra=fields(path=str(self.path), offset=offset, found=what))
        with open(self.path, "r+b") as file:
            file.truncate(offset)
            os.fsync(file.fileno())

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, fills: list[Fill]) -> None:
        """Write a group of fills; with fsync=always they are on disk when this returns."""
        chunks = []
        for fill in fills:
            body = FILL_BODY.pack(*fill)
            chunks.append(struct.pack("<I", zlib.crc32(body)) + body)
        data = b"".join(chunks)
        written = os.write(self._fd, data)
        while written < len(data):
            written += os.write(self._fd, data[written:])
        self.records += len(fills)
        if self.fsync_policy == "always":
            os.fsync(self._fd)
        else:
            self.dirty = True

    def sync(self) -> None:
        if self.dirty and self._fd >= 0:
            os.fsync(self._fd)
            self.dirty = False

    def close(self) -> None:
        if self._fd >= 0:
            if self.fsync_policy != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class PositionService(Service):
    name = "position"

    def __init__(self, environment: Environment, settings: Settings) -> None:
        super().__init__(environment, settings)
        assert isinstance(settings, PositionSettings)
        self.book = PositionBook()
        self.log = FillLog(environment.state_dir, settings.fsync)
        self.handlers = {Fill: self.on_fill, PositionQuery: self.on_query}
        self.routes["/positions"] = self.positions_route
        self.pending: list[tuple[Connection, Fill, int]] = []  # with the time each arrived
        self.replayed = False
        self._tasks: list[asyncio.Task[None]] = []
        self.market_data = subscribe_if_published(environment, self.on_ticks, self.metrics)

    async def start(self) -> None:
        started = time.perf_counter()
        for fill in self.log.replay():
            self.book.apply(fill)
        self.log.open()
        self.replayed = True
        log.info(
            "fill log replayed",
            extra=fields(
                fills=self.log.records,
                positions=len(self.book.positions),
                seconds=round(time.perf_counter() - started, 3),
            ),
        )
        loop = asyncio.get_running_loop()
        settings = self.settings
        assert isinstance(settings, PositionSettings)
        if settings.fsync == "interval":
            self._tasks.append(loop.create_task(self._sync_every(settings.fsyncIntervalMillis / 1000)))
        if self.market_data is not None:
            await self.market_data.start()

    async def _sync_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.log.sync()

    def ready(self) -> bool:
        return self.replayed

    def on_ticks(self, ticks: np.ndarray[Any, Any]) -> None:
        self.book.mark(ticks["symbol"], ticks["last_price"])

    def on_fill(self, connection: Connection, fill: Fill) -> None:
        self.inject_latency()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.commit)
        self.pending.append((connection, fill, connection.received_ns))

    def commit(self) -> None:
        """Make this turn's new fills durable, then acknowledge everything received (group commit)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        new = [fill for _, fill, _ in pending if self.book.apply(fill)]
        if new:
            self.log.append(new)
        acks: dict[tuple[Connection, int], int] = {}
        for connection, fill, _ in pending:
            key = (connection, fill.source)
            acks[key] = max(acks.get(key, 0), fill.fill_sequence)
        for (connection, source), sequence in acks.items():
            if connection.connected:
                connection.send(FillAck(source, sequence))
        for _, _, received_ns in pending:
            self.metrics.record(received_ns)

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
        return 200, "application/json", json.dumps({"fills": self.book.fills, "positions": reports}).encode()

    async def drain(self) -> None:
        self.commit()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.market_data is not None:
            await self.market_data.stop()
        self.log.close()

    def status(self) -> dict[str, Any]:
        return {
            "fills": self.book.fills,
            "positions": len(self.book.positions),
            "logRecords": self.log.records,
            "fsync": self.log.fsync_policy,
        }
