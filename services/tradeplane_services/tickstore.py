"""The analytics store: ClickHouse tables for ticks, quotes, fills and order events, one schema for every
deployment, and the SQL of the desk's questions.

One DDL template per table; only the engine clause differs by where it runs:
- embedded (default): chDB, the ClickHouse engine in this process, on a directory that survives restarts;
  tables are `MergeTree`, with `non_replicated_deduplication_window` so an insert retried with the same
  `insert_deduplication_token` is stored once (replicated engines keep that window by default);
- server: the same DDL on a ClickHouse server through clickhouse-connect;
- cluster: `<table>_local` as `ReplicatedMergeTree('/clickhouse/tables/{shard}/<database>/<table>',
  '{replica}')` ON CLUSTER, and `<table>` as `Distributed` over them, sharded by symbol (ticks, quotes) or
  account partition (fills, order events), so one account's replay reads one shard.

Why MergeTree and not ReplacingMergeTree for ticks: the feed stamps every tick of a packet with the same
time, so (symbol, timestamp) is not a unique key and collapsing on it would drop real ticks; replacing
engines also deduplicate only at merge time, so every exact query would need FINAL. Duplicates are
refused at insert instead: each batch has a deterministic token (its first and last feed or log
sequence), and the writer records the batch before inserting it, so a batch cut short by a crash is
inserted again with the same rows and the same token (analytics.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tradeplane_services.protocol import PRICE_SCALE


class Nanoseconds(int):
    """A time in nanoseconds since the epoch, bound for a DateTime64(9) column."""


def price_decimal(units: int) -> Decimal:
    """A wire price (integer 1/10000) as the exact decimal the tables hold."""
    return Decimal(units) / PRICE_SCALE


@dataclass(frozen=True)
class Table:
    name: str
    columns: str
    partition_by: str
    order_by: str
    shard_by: str  # the Distributed table's sharding key (cluster only)


# The seed's tick table, column for column. `volume` is the size quoted at the top of the book (bid plus
# ask quantity): the feed carries quotes with a last price, not trade prints.
MARKET_TICKS = Table(
    "market_ticks",
    """timestamp DateTime64(9),
    symbol LowCardinality(String),
    price Decimal64(8),
    volume UInt64""",
    "toYYYYMM(timestamp)",
    "(symbol, timestamp)",
    "cityHash64(symbol)",
)

# Bid and ask, for arrival mids (TCA). Codecs: timestamps of one symbol rise by small steps (DoubleDelta);
# quotes move by a few ticks (Delta) and the rest compresses well with ZSTD.
MARKET_QUOTES = Table(
    "market_quotes",
    """timestamp DateTime64(9) CODEC(DoubleDelta, ZSTD(1)),
    symbol LowCardinality(String),
    bid Decimal64(8) CODEC(Delta, ZSTD(1)),
    ask Decimal64(8) CODEC(Delta, ZSTD(1))""",
    "toYYYYMM(timestamp)",
    "(symbol, timestamp)",
    "cityHash64(symbol)",
)

# Fills in the log's own order within an account partition: position applies them in exactly that order
# (its duplicate rule is per source and partition), so replaying one account reads one contiguous range
# in key order; (log_sequence, frame) is unique, the row's identity in the log. Sequences and fill
# numbers grow by small steps (Delta), times too (DoubleDelta), quantities are small (T64).
FILLS = Table(
    "fills",
    """log_sequence UInt64 CODEC(Delta, ZSTD(1)),
    frame UInt16,
    partition UInt8,
    logged_at DateTime64(9) CODEC(DoubleDelta, ZSTD(1)),
    timestamp DateTime64(9) CODEC(DoubleDelta, ZSTD(1)),
    account UInt32,
    symbol LowCardinality(String),
    side LowCardinality(String),
    quantity UInt32 CODEC(T64, ZSTD(1)),
    price Decimal64(8) CODEC(ZSTD(1)),
    order_id UInt64 CODEC(Delta, ZSTD(1)),
    source UInt64 CODEC(ZSTD(1)),
    fill_sequence UInt64 CODEC(Delta, ZSTD(1)),
    revision LowCardinality(String)""",
    "toYYYYMM(timestamp)",
    "(partition, log_sequence, frame)",
    "partition",
)

# Every event frame about an order (any message with an order_id: routing, risk results, execution
# reports, ...): a new kind of message lands here without a schema change; fields it lacks stay default.
# Canary gates ask per revision, a lifecycle per order: revision first, then order.
ORDER_EVENTS = Table(
    "order_events",
    """log_sequence UInt64 CODEC(Delta, ZSTD(1)),
    frame UInt16,
    partition UInt8,
    logged_at DateTime64(9) CODEC(DoubleDelta, ZSTD(1)),
    kind LowCardinality(String),
    message LowCardinality(String),
    revision LowCardinality(String),
    order_id UInt64,
    client_order_id UInt64,
    account UInt32,
    symbol LowCardinality(String),
    side LowCardinality(String),
    exec_type LowCardinality(String),
    reason LowCardinality(String),
    quantity UInt32 CODEC(T64, ZSTD(1)),
    price Decimal64(8) CODEC(ZSTD(1)),
    last_quantity UInt32 CODEC(T64, ZSTD(1)),
    last_price Decimal64(8) CODEC(ZSTD(1)),
    leaves_quantity UInt32 CODEC(T64, ZSTD(1))""",
    "toYYYYMM(logged_at)",
    "(revision, order_id, log_sequence, frame)",
    "partition",
)

# The batch each input stream is writing: recorded before the batch is inserted (see analytics.py).
INGEST_PROGRESS = Table(
    "ingest_progress",
    """stream String,
    first UInt64,
    last UInt64,
    recorded_at DateTime64(9) DEFAULT now64(9)""",
    "tuple()",
    "(stream, last)",
    "cityHash64(stream)",
)

TABLES = (MARKET_TICKS, MARKET_QUOTES, FILLS, ORDER_EVENTS, INGEST_PROGRESS)
TICK_TABLES = (MARKET_TICKS.name, MARKET_QUOTES.name)  # every tick goes into both
ORDER_EVENT_COLUMNS = [
    "log_sequence",
    "frame",
    "partition",
    "logged_at",
    "kind",
    "message",
    "revision",
    "order_id",
    "client_order_id",
    "account",
    "symbol",
    "side",
    "exec_type",
    "reason",
    "quantity",
    "price",
    "last_quantity",
    "last_price",
    "leaves_quantity",
]
FILL_COLUMNS = [
    "log_sequence",
    "frame",
    "partition",
    "logged_at",
    "timestamp",
    "account",
    "symbol",
    "side",
    "quantity",
    "price",
    "order_id",
    "source",
    "fill_sequence",
    "revision",
]

ZOOKEEPER_PATH = "/clickhouse/tables/{{shard}}/{database}/{table}"
DDL = """CREATE TABLE IF NOT EXISTS {name}{on_cluster}
(
    {columns}
)
ENGINE = {engine}
PARTITION BY {partition_by}
ORDER BY {order_by}
SETTINGS index_granularity = 8192{extra_settings}"""
# ClickHouse acknowledges an insert once its part is written, not synced; the event log is acknowledged
# after the insert, so the part must survive a power loss, not only a crash of this process.
FSYNC = ", fsync_after_insert = 1, fsync_part_directory = 1"


def render_schema(cluster: str | None = None, database: str = "tradeplane") -> list[str]:
    """CREATE statements: MergeTree tables (embedded, single server), or replicated local tables and
    Distributed tables over them on `cluster`."""
    statements = []
    for table in TABLES:
        if cluster is None:
            statements.append(
                DDL.format(
                    name=table.name,
                    on_cluster="",
                    columns=table.columns,
                    engine="MergeTree()",
                    partition_by=table.partition_by,
                    order_by=table.order_by,
                    extra_settings=f", non_replicated_deduplication_window = 1000{FSYNC}",
                )
            )
            continue
        local = f"{table.name}_local"
        keeper_path = ZOOKEEPER_PATH.format(database=database, table=local)
        statements.append(
            DDL.format(
                name=local,
                on_cluster=f" ON CLUSTER {cluster}",
                columns=table.columns,
                engine=f"ReplicatedMergeTree('{keeper_path}', '{{replica}}')",
                partition_by=table.partition_by,
                order_by=table.order_by,
                extra_settings=FSYNC,
            )
        )
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {table.name} ON CLUSTER {cluster} AS {local}\n"
            f"ENGINE = Distributed({cluster}, {database}, {local}, {table.shard_by})"
        )
    return statements


class Store(Protocol):
    """Where the tables live: chDB in process or a ClickHouse server; both speak the same SQL."""

    def execute(self, sql: str) -> None: ...

    def rows(self, sql: str) -> list[tuple[Any, ...]]: ...

    def insert_ticks(
        self, ticks: np.ndarray[Any, Any], token: str, tables: Sequence[str] = TICK_TABLES
    ) -> None: ...

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]], token: str
    ) -> None: ...

    def close(self) -> None: ...


# The raw 48-byte wire tick (TICK_DTYPE) is exactly ClickHouse's RowBinary of this structure: ticks go
# from the datagram to the table without a Python loop.
TICK_STRUCTURE = (
    "symbol FixedString(8), bid_price Int64, ask_price Int64, last_price Int64, "
    "bid_quantity UInt32, ask_quantity UInt32, timestamp_ns UInt64"
)
TICKS_FROM_WIRE = """
INSERT INTO {table} SETTINGS insert_deduplication_token = '{token}'
SELECT fromUnixTimestamp64Nano(toInt64(timestamp_ns)) AS timestamp,
       trimRight(replaceRegexpAll(symbol, '\\0+$', '')) AS symbol,
       {select}
FROM {source}"""
# Integer 1/10000 units times Decimal(4) 0.0001 is exact (scales add up); the column widens it to (8).
UNITS = f"toDecimal64('{1 / PRICE_SCALE}', {len(str(PRICE_SCALE)) - 1})"
TICK_SELECTS = {
    "market_ticks": f"toDecimal64(last_price, 0) * {UNITS} AS price,"
    " toUInt64(bid_quantity) + ask_quantity AS volume",
    "market_quotes": f"toDecimal64(bid_price, 0) * {UNITS} AS bid,"
    f" toDecimal64(ask_price, 0) * {UNITS} AS ask",
}


def ticks_insert_sql(table: str, token: str, source: str) -> str:
    return TICKS_FROM_WIRE.format(
        table=table, token=_quoted(token), select=TICK_SELECTS[table], source=source
    )


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def literal(value: Any) -> str:
    """A value as a ClickHouse literal (rows of small inserts and query parameters)."""
    if isinstance(value, str):
        return f"'{_quoted(value)}'"
    if isinstance(value, Nanoseconds):
        seconds, nanos = divmod(int(value), 1_000_000_000)
        return f"'{seconds}.{nanos:09d}'"
    if isinstance(value, Decimal):
        return f"'{value}'"  # quoted: parsed as a decimal, never through a float
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"no ClickHouse literal for {type(value).__name__} {value!r}")


class ChdbStore:
    """chDB on a directory: the ClickHouse engine in this process. One session; calls are serialized
    (ingestion inserts from a worker thread while HTTP queries run on the event loop)."""

    def __init__(self, path: Path) -> None:
        import chdb.session

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        sessions: Any = chdb.session  # untyped: its calls are checked by the tests
        self.session: Any = sessions.Session(str(path))
        self.lock = threading.Lock()
        self.session.query("CREATE DATABASE IF NOT EXISTS tradeplane")
        self.session.query("USE tradeplane")
        # Numbers as JSON numbers (rows() parses JSONCompact): 64-bit integers stay exact in Python.
        self.session.query("SET output_format_json_quote_64bit_integers = 0")
        self.spool = path / "spool"
        self.spool.mkdir(exist_ok=True)

    def execute(self, sql: str) -> None:
        with self.lock:
            self.session.query(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.lock:
            result = self.session.query(sql, "JSONCompact")
        text = result.bytes() if hasattr(result, "bytes") else bytes(result)
        if not text:
            return []
        return [tuple(row) for row in json.loads(text)["data"]]

    def insert_ticks(
        self, ticks: np.ndarray[Any, Any], token: str, tables: Sequence[str] = TICK_TABLES
    ) -> None:
        # The batch goes through a file in the store's own directory: chDB reads RowBinary from it.
        spool = self.spool / "ticks.bin"
        ticks.tofile(spool)
        source = f"file('{spool}', RowBinary, '{TICK_STRUCTURE}')"
        with self.lock:
            for table in tables:
                self.session.query(ticks_insert_sql(table, f"{token}:{table}", source))

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]], token: str
    ) -> None:
        if not rows:
            return
        values = ",".join("(" + ",".join(literal(value) for value in row) + ")" for row in rows)
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"SETTINGS insert_deduplication_token = {literal(token)} VALUES {values}"
        )
        with self.lock:
            self.session.query(sql)

    def close(self) -> None:
        with self.lock:
            self.session.close()


class ServerStore:
    """A ClickHouse server (or a cluster's Distributed tables) through clickhouse-connect."""

    def __init__(self, url: str, database: str) -> None:
        import clickhouse_connect

        self.client = clickhouse_connect.get_client(dsn=url)
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
        self.client = clickhouse_connect.get_client(dsn=url, database=database)
        self.lock = threading.Lock()

    def execute(self, sql: str) -> None:
        with self.lock:
            self.client.command(sql)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.lock:
            return [tuple(row) for row in self.client.query(sql).result_rows]

    def insert_ticks(
        self, ticks: np.ndarray[Any, Any], token: str, tables: Sequence[str] = TICK_TABLES
    ) -> None:
        source = f"input('{TICK_STRUCTURE}') FORMAT RowBinary"
        with self.lock:
            for table in tables:
                # The query goes in the URL, the raw ticks as the body: the server reads them as input().
                self.client.command(ticks_insert_sql(table, f"{token}:{table}", source), data=ticks.tobytes())

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]], token: str
    ) -> None:
        if rows:
            with self.lock:
                self.client.insert(
                    table, rows, column_names=list(columns), settings={"insert_deduplication_token": token}
                )

    def close(self) -> None:
        self.client.close()


# --- the desk's questions ------------------------------------------------------------------------------

INTERVAL_UNITS = {"ms": "MILLISECOND", "s": "SECOND", "m": "MINUTE", "h": "HOUR", "d": "DAY"}


def interval_clause(text: str) -> str:
    """'250ms', '1s', '5m', '1h', '1d' as a ClickHouse INTERVAL; ValueError naming the value otherwise."""
    for suffix in sorted(INTERVAL_UNITS, key=len, reverse=True):
        count = text[: -len(suffix)]
        if text.endswith(suffix) and count.isdigit() and int(count) > 0:
            return f"INTERVAL {int(count)} {INTERVAL_UNITS[suffix]}"
    raise ValueError(
        f"interval={text!r}: expected a positive count and a unit of {', '.join(INTERVAL_UNITS)}"
    )


def _time_range(column: str, start: int | None, end: int | None) -> str:
    """[start, end) in nanoseconds since the epoch, as a WHERE fragment."""
    parts = []
    if start is not None:
        parts.append(f"{column} >= {literal(Nanoseconds(start))}")
    if end is not None:
        parts.append(f"{column} < {literal(Nanoseconds(end))}")
    return " AND ".join(parts) or "1"


def ohlcv(
    store: Store, symbol: str, interval: str, start: int | None, end: int | None
) -> list[dict[str, Any]]:
    """Bars of `interval`: open and close are the first and last tick of the bar by time."""
    bar = f"toDateTime64(toStartOfInterval(timestamp, {interval_clause(interval)}), 9)"
    sql = f"""
        SELECT toUnixTimestamp64Nano({bar}) AS bar,
               argMin(price, timestamp), max(price), min(price), argMax(price, timestamp),
               sum(volume), count()
        FROM market_ticks
        WHERE symbol = {literal(symbol)} AND {_time_range("timestamp", start, end)}
        GROUP BY bar ORDER BY bar"""
    names = ("start", "open", "high", "low", "close", "volume", "ticks")
    return [dict(zip(names, row, strict=True)) for row in store.rows(sql)]


def vwap(store: Store, symbol: str, start: int | None, end: int | None) -> dict[str, Any]:
    """Price weighted by the volume column (the quoted size at the top of the book)."""
    sql = f"""
        SELECT sum(toFloat64(price) * volume) / sum(volume), sum(volume), count()
        FROM market_ticks
        WHERE symbol = {literal(symbol)} AND {_time_range("timestamp", start, end)}"""
    (price, volume, ticks), *_ = store.rows(sql)
    return {"symbol": symbol, "vwap": float(price) if volume else None, "volume": int(volume), "ticks": ticks}


def fills_until(store: Store, sequence: int, partition: int | None) -> list[tuple[Any, ...]]:
    """Fills up to log `sequence` (of one account partition, or all) in the order the log holds them:
    (source, fill_sequence, account, symbol, side, quantity, price units, order_id, timestamp_ns)."""
    where = f"log_sequence <= {int(sequence)}"
    if partition is not None:
        where += f" AND partition = {int(partition)}"
    sql = f"""
        SELECT source, fill_sequence, account, symbol, side, quantity,
               toInt64(price * {PRICE_SCALE}), order_id, toUnixTimestamp64Nano(timestamp)
        FROM fills WHERE {where} ORDER BY log_sequence, frame"""
    return store.rows(sql)


def sequence_at(store: Store, moment: int) -> int:
    """The log sequence of the last fill logged at or before `moment` (ns since the epoch); 0 if none."""
    sql = f"SELECT max(log_sequence) FROM fills WHERE logged_at <= {literal(Nanoseconds(moment))}"
    return int(store.rows(sql)[0][0] or 0)


# Fills once per (source, fill_sequence), as position applies them, with the arrival time of their
# order: its first order event in the log, or its first fill when the log holds no order events.
_FILLS_WITH_ARRIVAL = """
    SELECT f.*,
           if(o.first_event > toDateTime64(0, 9), least(f.first_fill, o.first_event), f.first_fill) AS arrived
    FROM (
        SELECT revision, account, symbol, side, quantity, price, order_id, timestamp,
               min(timestamp) OVER (PARTITION BY order_id, source) AS first_fill
        FROM fills WHERE {where}
        ORDER BY log_sequence LIMIT 1 BY source, fill_sequence
    ) AS f
    LEFT JOIN (
        SELECT order_id, min(logged_at) AS first_event FROM order_events GROUP BY order_id
    ) AS o ON f.order_id = o.order_id"""


def tca(
    store: Store, account: int | None, revision: str | None, start: int | None, end: int | None
) -> list[dict[str, Any]]:
    """Fill price against the quote mid when the order arrived, per revision, account and symbol.
    Slippage is signed so that positive is a cost: buying above, or selling below, the arrival mid."""
    where = _time_range("timestamp", start, end)
    if account is not None:
        where += f" AND account = {int(account)}"
    if revision is not None:
        where += f" AND revision = {literal(revision)}"
    sql = f"""
        WITH fills_arriving AS ({_FILLS_WITH_ARRIVAL.format(where=where)}),
             quotes AS (
                 SELECT symbol, timestamp, (bid + ask) / 2 AS mid FROM market_quotes
                 WHERE symbol IN (SELECT DISTINCT symbol FROM fills_arriving)
                   AND timestamp >= (SELECT min(arrived) FROM fills_arriving) - INTERVAL 1 HOUR
                   AND timestamp <= (SELECT max(arrived) FROM fills_arriving)
             )
        SELECT revision, account, f.symbol, count(), sum(quantity),
               sum(toFloat64(price) * quantity) / sum(quantity) AS average_price,
               sumIf(toFloat64(q.mid) * quantity, q.mid > 0) / nullIf(sumIf(quantity, q.mid > 0), 0),
               sumIf(if(side = 'BUY', 1, -1) * (toFloat64(price) - toFloat64(q.mid)) / toFloat64(q.mid) * 1e4
                     * quantity, q.mid > 0) / nullIf(sumIf(quantity, q.mid > 0), 0),
               sumIf(if(side = 'BUY', 1, -1) * (toFloat64(price) - toFloat64(q.mid)) * quantity, q.mid > 0),
               countIf(q.mid = 0)
        FROM fills_arriving AS f
        ASOF LEFT JOIN quotes AS q ON f.symbol = q.symbol AND f.arrived >= q.timestamp
        GROUP BY revision, account, f.symbol ORDER BY revision, account, f.symbol"""
    names = (
        "revision",
        "account",
        "symbol",
        "fills",
        "quantity",
        "averagePrice",
        "arrivalMid",
        "slippageBps",
        "slippageCost",
        "fillsWithoutQuote",
    )
    return [dict(zip(names, row, strict=True)) for row in store.rows(sql)]


def kpis(store: Store, revision: str | None, start: int | None, end: int | None) -> list[dict[str, Any]]:
    """Per revision: orders, reject rate and fill ratio from the order events it wrote; fills and
    slippage from the fills it wrote. Each figure belongs to the revision that logged its events."""
    order_where = _time_range("logged_at", start, end)
    fill_where = _time_range("timestamp", start, end)
    if revision is not None:
        order_where += f" AND revision = {literal(revision)}"
        fill_where += f" AND revision = {literal(revision)}"
    orders_sql = f"""
        SELECT revision, count() AS orders, countIf(rejected) AS rejects,
               sum(ordered) AS ordered_quantity, sum(filled) AS filled_quantity
        FROM (
            SELECT revision, order_id,
                   max(exec_type = 'REJECTED'
                       OR (message = 'RiskResult' AND reason NOT IN ('', 'OK'))) AS rejected,
                   max(quantity) AS ordered
            FROM order_events WHERE {order_where} GROUP BY revision, order_id
        ) AS o
        LEFT JOIN (
            SELECT order_id, sum(quantity) AS filled FROM (
                SELECT order_id, quantity FROM fills ORDER BY log_sequence LIMIT 1 BY source, fill_sequence
            ) GROUP BY order_id
        ) AS f USING (order_id)
        GROUP BY revision"""
    by_revision: dict[str, dict[str, Any]] = {}
    for name, orders, rejects, ordered, filled in store.rows(orders_sql):
        by_revision[name] = {
            "revision": name,
            "orders": int(orders),
            "rejects": int(rejects),
            "rejectRate": int(rejects) / int(orders) if int(orders) else None,
            "fillRatio": int(filled) / int(ordered) if int(ordered) else None,
        }
    for row in tca(store, None, revision, start, end):
        entry = by_revision.setdefault(
            row["revision"],
            {"revision": row["revision"], "orders": 0, "rejects": 0, "rejectRate": None, "fillRatio": None},
        )
        entry["fills"] = entry.get("fills", 0) + row["fills"]
        entry["filledQuantity"] = entry.get("filledQuantity", 0) + row["quantity"]
        entry["_slippage"] = entry.get("_slippage", 0.0) + (row["slippageBps"] or 0.0) * row["quantity"]
    for entry in by_revision.values():
        quantity = entry.setdefault("filledQuantity", 0)
        entry.setdefault("fills", 0)
        entry["slippageBps"] = entry.pop("_slippage", 0.0) / quantity if quantity else None
    return sorted(by_revision.values(), key=lambda entry: entry["revision"])


def table_counts(store: Store) -> dict[str, int]:
    return {table.name: int(store.rows(f"SELECT count() FROM {table.name}")[0][0]) for table in TABLES}
