"""Market data between real processes: multicast, unicast fallback, gap recovery, snapshots."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client import CollectorRegistry

from tradeplane_services.marketdata import MarketDataSubscriber
from tradeplane_services.protocol import HEADER, HEADER_SIZE, TICK_DTYPE
from tradeplane_services.runtime import RequestMetrics
from tradeplane_services.stack import Stack, multicast_group_for

StackFactory = Callable[..., Stack]


class Recorder(MarketDataSubscriber):
    """A subscriber that keeps what it delivered and can lose chosen datagrams before decoding them."""

    def __init__(
        self, stack: Stack, group: bool, lose: Callable[[int], bool] = lambda sequence: False
    ) -> None:
        super().__init__(
            self.keep,
            stack.address("market-data"),
            multicast_group_for(stack.host) if group else None,
            stack.host,
            RequestMetrics(CollectorRegistry(), "test", "test"),
            stack.credentials("client"),
            silence_seconds=0.5,
        )
        self.lose = lose
        self.ticks: list[np.ndarray[Any, Any]] = []
        self.lost = 0

    def keep(self, ticks: np.ndarray[Any, Any]) -> None:
        self.ticks.append(ticks.copy())

    def on_datagram(self, data: bytes) -> None:
        sequence = HEADER.unpack_from(data)[3] if len(data) >= HEADER_SIZE else 0
        if self.lose(sequence):
            self.lost += 1
            return
        super().on_datagram(data)


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _run_feed(stack: Stack, subscriber: Recorder, seconds: float) -> dict[str, Any]:
    """Subscribe before the publisher starts, let it publish, stop the feed, and wait for the tail."""

    async def scenario() -> dict[str, Any]:
        await subscriber.start()
        stack.start(("market-data",))
        await _until(lambda: stack.ready("market-data"), 30, "market-data to start")
        await asyncio.sleep(seconds)
        stopped = {**stack.settings["market-data"], "ticksPerSecond": 0}
        (stack.workdir / "market-data.yaml").write_text(yaml.safe_dump(stopped))
        await _until(
            lambda: stack.status("market-data")["ticksPublished"] == _published_twice(stack), 5, "feed stop"
        )
        final = stack.status("market-data")
        await _until(
            lambda: subscriber.expected == final["sequence"] + 1 and not subscriber.held, 5, "the tail"
        )
        await subscriber.stop()
        return final

    return asyncio.run(scenario())


def _published_twice(stack: Stack) -> int:
    """ticksPublished once it stopped changing (two reads 200 ms apart agree)."""
    first = stack.status("market-data")["ticksPublished"]
    time.sleep(0.2)
    return int(first) if stack.status("market-data")["ticksPublished"] == first else -1


def test_multicast_delivers_every_tick_in_sequence(make_stack: StackFactory) -> None:
    stack = make_stack({"market-data": {"ticksPerSecond": 20_000}}, components=())
    subscriber = Recorder(stack, group=True)
    final = _run_feed(stack, subscriber, 1.0)
    delivered = np.concatenate(subscriber.ticks)
    assert subscriber.mode == "multicast"
    assert len(delivered) == final["ticksPublished"] > 10_000
    assert subscriber.stats.gaps == subscriber.stats.snapshots == 0
    assert set(delivered["symbol"].tolist()) >= {b"AAPL", b"MSFT"}


def test_a_silent_group_falls_back_to_unicast(make_stack: StackFactory) -> None:
    stack = make_stack({"market-data": {"ticksPerSecond": 5_000}}, components=(), multicast=False)
    subscriber = Recorder(stack, group=True)
    final = _run_feed(stack, subscriber, 1.5)
    assert (subscriber.mode, subscriber.stats.fallbacks) == ("unicast", 1)
    assert subscriber.expected == final["sequence"] + 1


def test_lost_packets_are_detected_and_replayed_in_order(make_stack: StackFactory) -> None:
    stack = make_stack({"market-data": {"ticksPerSecond": 20_000}}, components=())
    subscriber = Recorder(stack, group=True, lose=lambda sequence: sequence % 7 == 3)
    final = _run_feed(stack, subscriber, 1.0)
    delivered = np.concatenate(subscriber.ticks)
    assert subscriber.lost > 50
    assert subscriber.stats.gaps > 0 and subscriber.stats.recovered >= subscriber.lost
    assert len(delivered) == final["ticksPublished"], "every tick delivered once despite the losses"
    assert np.all(np.diff(delivered["timestamp_ns"].astype(np.int64)) >= 0), "in publication order"


def test_a_gap_older_than_retention_is_bridged_by_a_snapshot(make_stack: StackFactory) -> None:
    stack = make_stack({"market-data": {"ticksPerSecond": 20_000, "retainPackets": 3}}, components=())
    subscriber = Recorder(stack, group=True, lose=lambda sequence: 100 <= sequence < 140)
    final = _run_feed(stack, subscriber, 1.0)
    assert subscriber.stats.snapshots >= 1
    assert subscriber.expected == final["sequence"] + 1
    snapshot = next(t for t in subscriber.ticks if len(set(t["symbol"].tolist())) == len(t) == 8)
    assert snapshot is not None, "a snapshot holds the latest tick of every symbol"


def test_garbage_datagrams_are_counted_and_ignored(make_stack: StackFactory) -> None:
    stack = make_stack(
        {"market-data": {"ticksPerSecond": 2_000}}, components=("market-data",), multicast=False
    )

    async def scenario() -> tuple[int, int]:
        subscriber = Recorder(stack, group=False)
        await subscriber.start()
        await _until(lambda: subscriber.stats.ticks > 0, 5, "first ticks")
        port = subscriber._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for garbage in (b"", b"\x01\x02", b"\xff" * 40, b"\x30\x00\x32\x01" + b"\0" * 44):
                sender.sendto(garbage, (stack.host, port))
        before = subscriber.stats.ticks
        await _until(lambda: subscriber.stats.ticks > before + 500, 5, "ticks after the garbage")
        await subscriber.stop()
        return subscriber.stats.malformed, subscriber.stats.gaps

    malformed, gaps = asyncio.run(scenario())
    assert malformed == 4
    assert gaps == 0


def test_a_replay_file_is_published_as_recorded(make_stack: StackFactory, tmp_path: Path) -> None:
    recorded = np.zeros(50, dtype=TICK_DTYPE)
    recorded["symbol"] = [b"AAPL", b"MSFT"] * 25
    recorded["last_price"] = np.arange(1, 51) * 10_000
    replay_file = tmp_path / "ticks.bin"
    recorded.tofile(replay_file)
    stack = make_stack(
        {"market-data": {"ticksPerSecond": 5_000, "replayFile": str(replay_file)}}, components=()
    )
    subscriber = Recorder(stack, group=True)
    _run_feed(stack, subscriber, 0.5)
    delivered = np.concatenate(subscriber.ticks)
    assert len(delivered) > 100
    assert np.array_equal(delivered[:50], recorded), "the file's ticks, in the file's order"
    assert np.array_equal(delivered[50:100], recorded), "and round again"
