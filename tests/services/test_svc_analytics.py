"""Analytics with real parts: the stack's processes, the feed, the event log, chDB on disk.

Orders trade while analytics is killed with SIGKILL twice and restarted; afterwards the tables hold every
fill and every tick of a configured symbol exactly once, and positions rebuilt from the fills equal the
position service's at the same log sequence. Bad input is counted, never written.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from support import wait_for
from tradeplane_services.client import OrderSession
from tradeplane_services.eventlog import Append, EventLog, subject
from tradeplane_services.protocol import (
    PROTOCOL_VERSION,
    ExecType,
    ExecutionReport,
    Reason,
    RiskResult,
    RouteOrder,
    Side,
    encode,
    price_units,
    symbol_bytes,
)
from tradeplane_services.settings import DEFAULT_SYMBOLS
from tradeplane_services.stack import Stack
from tradeplane_services.tickstore import ChdbStore, render_schema

StackFactory = Callable[..., Stack]
UNCONFIGURED = "TSLA"  # published by market-data, not configured for analytics: refused as unknown
ANALYTICS_SYMBOLS = {name: price for name, price in DEFAULT_SYMBOLS.items() if name != UNCONFIGURED}
POSITION_FIELDS = ("quantity", "bought_quantity", "sold_quantity", "open_cost", "realized_pnl")


def get(stack: Stack, component: str, path: str) -> Any:
    with urllib.request.urlopen(stack.metrics_url(component, path), timeout=30) as response:
        return json.loads(response.read())


def trade(stack: Stack, pairs: int, faults: dict[int, Callable[[], None]]) -> int:
    """Crossing pairs at prices that move, so accounts open, add, reduce and flip positions at a profit or a
    loss; runs `faults[n]` before pair n. Returns the fills reported."""
    session = OrderSession(stack.address("order"))
    fills = 0
    for pair in range(pairs):
        if pair in faults:
            faults[pair]()
        symbol = ("AAPL", "MSFT")[pair % 2]
        price = price_units(DEFAULT_SYMBOLS[symbol] * (1 + ((pair * 7) % 11 - 5) / 1000))
        buyer, seller = 1 + pair % 4, 1 + (pair + 1 + pair // 4) % 4
        session.new_order(Side.BUY, symbol, 10 + pair % 13, price, account=buyer)
        session.new_order(Side.SELL, symbol, 10 + pair % 13, price, account=seller + 4 * (pair % 2))
        for message in session.receive(0.01):
            fills += isinstance(message, ExecutionReport) and message.exec_type == ExecType.TRADE
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for message in session.receive(0.5):
            fills += isinstance(message, ExecutionReport) and message.exec_type == ExecType.TRADE
    session.close()
    return fills


def log_action(stack: Stack, body: Callable[[EventLog], Any]) -> Any:
    async def run() -> Any:
        event_log = EventLog(stack.events.url.split(","), revision="canary-7")
        await event_log.open()
        try:
            return await body(event_log)
        finally:
            await event_log.close()

    return asyncio.run(run())


def test_analytics_stores_every_fill_and_tick_once_across_kill_9_and_rebuilds_positions(
    make_stack: StackFactory,
) -> None:
    stack = make_stack(
        {
            "market-data": {"ticksPerSecond": 4000},
            "analytics": {"symbols": ANALYTICS_SYMBOLS, "batchMillis": 100, "batchRows": 2000},
        }
    )

    def kill_analytics() -> None:
        stack.kill("analytics", signal.SIGKILL)

    def restart_analytics() -> None:
        stack.start_one("analytics")

    fills = trade(
        stack,
        240,
        {60: kill_analytics, 100: restart_analytics, 160: kill_analytics, 175: restart_analytics},
    )
    assert fills > 200

    # Bad input on the log, and order events of a canary revision: counted, and stored, respectively.
    async def append_inputs(event_log: EventLog) -> None:
        assert event_log.nc is not None
        # Not on a fill subject: position stops on a damaged fill (it would answer wrong positions).
        await event_log.js.publish(subject("order", 3), b"\x05\x00garbage")  # type: ignore[union-attr]
        wrong_version = bytearray(encode(RiskResult(1, 0)))
        wrong_version[3] = PROTOCOL_VERSION + 1
        await event_log.js.publish(subject("risk", 5), bytes(wrong_version))  # type: ignore[union-attr]
        aapl = symbol_bytes("AAPL")
        routed = [
            RouteOrder(order, 3, aapl, int(Side.BUY), 1, 1, 100, price_units(190)) for order in (901, 902)
        ]
        rejected = RiskResult(902, int(Reason.PRICE_COLLAR))
        await event_log.append([Append("order", 3, [*routed, rejected], "canary-orders")])

    log_action(stack, append_inputs)

    # Quiet the feed (heartbeats only) and let analytics catch up with both inputs.
    config = stack.workdir / "market-data.yaml"
    config.write_text(yaml.safe_dump({"ticksPerSecond": 0}))
    stack.processes["market-data"].send_signal(signal.SIGHUP)
    time.sleep(1.0)

    async def last_sequence(event_log: EventLog) -> int:
        return await event_log.last_sequence()

    logged = log_action(stack, last_sequence)
    published = stack.status("market-data")
    wait_for(
        lambda: (
            (status := stack.status("analytics"))["sequence"] == logged
            and status["feedSequence"] == published["sequence"]
        ),
        timeout=30,
        what="analytics to store the whole log and feed",
    )
    assert stack.status("market-data")["ticksPublished"] == published["ticksPublished"]

    # Positions rebuilt from the stored fills equal the position service's at its sequence.
    wait_for(
        lambda: get(stack, "position", "/positions")["fills"] == fills, what="position to apply every fill"
    )
    expected = get(stack, "position", "/positions")
    rebuilt = get(stack, "analytics", f"/positions?sequence={expected['sequence']}")
    assert rebuilt["fills"] == expected["fills"] == fills

    def book(document: dict[str, Any]) -> dict[tuple[int, str], tuple[int, ...]]:
        return {
            (p["account"], p["symbol"]): tuple(p[name] for name in POSITION_FIELDS)
            for p in document["positions"]
        }

    assert book(rebuilt) == book(expected)
    assert any(p["realized_pnl"] != 0 for p in rebuilt["positions"]), "the trades realized no PnL"
    one = get(stack, "analytics", f"/positions?account=1&sequence={expected['sequence']}")
    assert book(one) == {key: value for key, value in book(expected).items() if key[0] == 1}
    earlier = get(stack, "analytics", "/positions?sequence=50")
    assert earlier["sequence"] == 50 and earlier["fills"] < fills

    # Bad input counted (and exported), not written.
    status = stack.status("analytics")
    assert status["rejected"]["malformed_event"] == 1
    assert status["rejected"]["schema_mismatch"] == 1
    assert status["rejected"]["unknown_symbol"] > 0
    with urllib.request.urlopen(stack.metrics_url("analytics"), timeout=10) as response:
        metrics = response.read().decode()
    assert 'tradeplane_analytics_rejected_total{reason="malformed_event"' in metrics.replace(
        'service="analytics",revision="dev",', ""
    )

    # The desk's questions.
    bars = get(stack, "analytics", "/ohlcv?symbol=AAPL&interval=1s")
    assert bars and all(bar["low"] <= bar["open"] <= bar["high"] for bar in bars)
    assert get(stack, "analytics", "/vwap?symbol=AAPL")["vwap"] > 0
    costs = get(stack, "analytics", "/tca")
    assert sum(row["fills"] for row in costs) == fills
    assert all(row["arrivalMid"] for row in costs), "every fill has an arrival mid"
    kpis = {row["revision"]: row for row in get(stack, "analytics", "/kpis")}
    assert kpis["canary-7"]["orders"] == 2 and kpis["canary-7"]["rejectRate"] == 0.5
    assert kpis["dev"]["fills"] == fills and kpis["dev"]["slippageBps"] is not None
    cached = get(stack, "analytics", "/last")
    assert set(cached) == set(ANALYTICS_SYMBOLS)

    async def cached_symbols(event_log: EventLog) -> list[str]:
        assert event_log.js is not None
        return sorted(await (await event_log.js.key_value("tradeplane-last-ticks")).keys())

    assert log_action(stack, cached_symbols) == sorted(ANALYTICS_SYMBOLS)

    # On disk, after analytics is gone: every row once.
    assert stack.kill("analytics", signal.SIGTERM) == 0
    store = ChdbStore(stack.workdir / "analytics" / "analytics")  # the state directory's chDB
    try:
        for statement in render_schema():
            store.execute(statement)
        ticks_published = published["ticksPublished"]
        # The simulated feed deals ticks round-robin over the symbols: TSLA is every 8th, from the 8th on.
        unconfigured = ticks_published // len(DEFAULT_SYMBOLS)
        ((stored_ticks, distinct_symbols),) = store.rows(
            "SELECT count(), uniqExact(symbol) FROM market_ticks"
        )
        assert stored_ticks == ticks_published - unconfigured
        assert distinct_symbols == len(ANALYTICS_SYMBOLS)
        assert store.rows("SELECT count() FROM market_quotes") == [(stored_ticks,)]
        ((stored_fills, distinct_fills),) = store.rows(
            "SELECT count(), uniqExact(log_sequence, frame) FROM fills"
        )
        assert stored_fills == distinct_fills == fills
        assert store.rows("SELECT count() FROM order_events WHERE kind = 'order'") == [(3,)]
        # Risk logs each order it accepted (kind risk) and, once it is done, its release.
        by_kind = dict(store.rows("SELECT kind, count() FROM order_events GROUP BY kind"))
        assert by_kind["risk"] >= by_kind["release"] > 0, by_kind
        # Reservations come from risk's journal, which holds every partition: each row gets its account's.
        misplaced = (
            "SELECT count() FROM order_events WHERE message = 'Reservation' AND partition != account % 16"
        )
        assert store.rows(misplaced) == [(0,)]
    finally:
        store.close()


def test_one_schema_renders_for_a_cluster_with_replicated_and_distributed_tables() -> None:
    embedded, cluster = render_schema(), render_schema("trading")
    assert len(cluster) == 2 * len(embedded)
    ticks_local, ticks = cluster[0], cluster[1]
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/tradeplane/market_ticks_local', '{replica}')" in (
        ticks_local
    )
    assert "Distributed(trading, tradeplane, market_ticks_local, cityHash64(symbol))" in ticks
    assert embedded[0].split("ENGINE")[0].replace("market_ticks", "") == ticks_local.split("ENGINE")[
        0
    ].replace("market_ticks_local ON CLUSTER trading", "")
    assert "ORDER BY (symbol, timestamp)" in embedded[0] and "PARTITION BY toYYYYMM(timestamp)" in embedded[0]


def test_a_store_directory_keeps_its_rows_and_refuses_a_repeated_batch(tmp_path: Path) -> None:
    import numpy as np

    from tradeplane_services.protocol import TICK_DTYPE

    ticks = np.zeros(3, TICK_DTYPE)
    ticks["symbol"] = b"AAPL"
    ticks["bid_price"], ticks["ask_price"], ticks["last_price"] = 1_899_900, 1_900_100, 1_900_000
    ticks["bid_quantity"], ticks["ask_quantity"] = 100, 200
    ticks["timestamp_ns"] = 1_764_000_000_000_000_000
    store = ChdbStore(tmp_path / "store")
    for statement in render_schema():
        store.execute(statement)
    store.insert_ticks(ticks, "feed-1:1-1")
    store.insert_ticks(ticks, "feed-1:1-1")
    store.close()
    again = ChdbStore(tmp_path / "store")
    try:
        rows = again.rows(
            "SELECT count(), any(price), any(volume), any(toUnixTimestamp64Nano(timestamp)) FROM market_ticks"
        )
        assert rows == [(3, 190, 300, 1_764_000_000_000_000_000)]
    finally:
        again.close()
