"""Market-data ticks per second: encoded and decoded in process, and published and decoded across processes.

Codec: `encode_batch` (numpy records to a frame) and `decode` (frame to a zero-copy TICK_DTYPE array) on
full packets, for an Ethernet-MTU packet (30 ticks) and a loopback jumbo packet (1364 ticks).

Feed: the market-data service as its own process publishing the simulated feed at --rate ticks/s over UDP
multicast on loopback; a subscriber in this process decodes every batch (numpy) and counts ticks. The
subscriber joins before the publisher starts; at the end the feed is stopped (config reload), the tail
is awaited, and the ticks delivered are compared with the ticks the publisher counted: every gap must
have been detected and recovered (undetected = published - delivered, goal 0). Goal: 20M ticks/s decoded.
The subscriber runs on uvloop, as the services do. The publisher keeps half a second of packets for
replays: with less, a replay asked for during a burst of loss finds its packets gone.

    python bench/services_market_data.py
    python bench/services_market_data.py --rate 2000000 --seconds 5 --packet-bytes 1472
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
from typing import Any

import numpy as np
import uvloop
import yaml
from prometheus_client import CollectorRegistry

from tradeplane_services.marketdata import MarketDataSubscriber, SimulatedFeed, ticks_per_packet
from tradeplane_services.protocol import decode, encode_batch
from tradeplane_services.runtime import RequestMetrics
from tradeplane_services.stack import Stack, multicast_group_for

HOST = "127.77.251.1"


def codec(packet_bytes: int, seconds: float = 1.0) -> tuple[float, float]:
    """(encoded ticks/s, decoded ticks/s) on full packets of `packet_bytes`."""
    per_packet = ticks_per_packet(packet_bytes)
    ticks = SimulatedFeed({"AAPL": 190.0, "MSFT": 420.0}).take(per_packet * 256, 0)
    packets = [ticks[i : i + per_packet] for i in range(0, len(ticks), per_packet)]
    encoded, started, sequence = 0, time.perf_counter(), 0
    frames = []
    while time.perf_counter() - started < seconds:
        for packet in packets:
            sequence += 1
            frames.append(encode_batch(packet, sequence, 0, 1, 0))
        encoded += len(ticks)
        frames = frames[-len(packets) :]
    encode_rate = encoded / (time.perf_counter() - started)
    decoded, started, checksum = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        for frame in frames:
            batch, _ = decode(frame)
            checksum += int(batch.ticks["last_price"][-1])
            decoded += batch.tick_count
    return encode_rate, decoded / (time.perf_counter() - started)


def feed(stack: Stack, rate: int, seconds: float) -> dict[str, Any]:
    counted = [0]

    def count(ticks: np.ndarray[Any, Any]) -> None:
        counted[0] += len(ticks)

    subscriber = MarketDataSubscriber(
        count,
        stack.address("market-data"),
        multicast_group_for(stack.host),
        stack.host,
        RequestMetrics(CollectorRegistry(), "bench", "bench"),
        stack.credentials("client"),
    )

    async def status() -> dict[str, Any]:
        return await asyncio.to_thread(stack.status, "market-data")

    async def run() -> dict[str, Any]:
        await subscriber.start()
        stack.start(("market-data",))
        stack.wait_ready(components=("market-data",))
        started = time.perf_counter()
        # Asked from a thread: a blocking call here would stall the subscriber reading the feed.
        first = (await status())["ticksPublished"]
        await asyncio.sleep(seconds)
        published_in_window = (await status())["ticksPublished"] - first
        elapsed = time.perf_counter() - started
        stopped = {**stack.settings["market-data"], "ticksPerSecond": 0}
        (stack.workdir / "market-data.yaml").write_text(yaml.safe_dump(stopped))
        previous = -1
        while (final := await status())["ticksPublished"] != previous:
            previous = final["ticksPublished"]
            await asyncio.sleep(1.2)
        deadline = time.monotonic() + 30
        while (
            subscriber.expected != final["sequence"] + 1 or subscriber.held
        ) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await subscriber.stop()
        return {
            "published_per_second": published_in_window / elapsed,
            "published": final["ticksPublished"],
            "delivered": counted[0],
            "packets": final["sequence"],
            "stats": subscriber.stats.as_dict(),
            "mode": subscriber.mode,
        }

    try:
        return uvloop.run(run())  # the event loop the services run on
    finally:
        stack.stop()


def undetected(result: dict[str, Any]) -> int | str:
    """Ticks published but neither delivered nor inside a detected gap. A snapshot stands in for the
    packets it replaces (recovery by design), so after one the tick count cannot tell."""
    if result["stats"]["snapshots"]:
        return f"n/a ({result['stats']['snapshots']} snapshots)"
    return int(result["published"] - result["delivered"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=21_000_000, help="offered ticks per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--packet-bytes", type=int, action="append", help="default: 65000 and 1472")
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    sizes = arguments.packet_bytes or [65000, 1472]
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")

    print("codec, in process (median of 3):")
    for size in sizes:
        results = [codec(size) for _ in range(3)]
        encode_rate = statistics.median(r[0] for r in results)
        decode_rate = statistics.median(r[1] for r in results)
        print(
            f"  {ticks_per_packet(size):>5} ticks/packet: encode {encode_rate / 1e6:6.1f}M ticks/s, "
            f"decode {decode_rate / 1e6:6.1f}M ticks/s",
            flush=True,
        )

    print(f"feed across processes, UDP multicast on loopback, {arguments.rate / 1e6:g}M ticks/s offered:")
    for size in sizes:
        runs = []
        for run in range(arguments.runs):
            with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
                # Half a second of the feed for replays: a gap is asked for within milliseconds, and the
                # default 65,536 packets would be 4 GB of jumbo frames, paged in while the run measures.
                retain = max(1024, int(arguments.rate / ticks_per_packet(size) / 2))
                settings = {
                    "market-data": {
                        "ticksPerSecond": arguments.rate,
                        "maxPacketBytes": size,
                        "retainPackets": retain,
                    }
                }
                result = feed(Stack(HOST, Path(scratch), settings), arguments.rate, arguments.seconds)
            runs.append(result)
            stats = result["stats"]
            print(
                f"  {ticks_per_packet(size):>5} ticks/packet run {run + 1}: published "
                f"{result['published_per_second'] / 1e6:.2f}M ticks/s; delivered {result['delivered']} of "
                f"{result['published']} ticks ({result['packets']} packets, {result['mode']}); gaps detected "
                f"{stats['gaps']}, packets replayed {stats['recovered']}, snapshots {stats['snapshots']}; "
                f"undetected {undetected(result)}",
                flush=True,
            )
        median = statistics.median(r["published_per_second"] for r in runs)
        print(
            f"  {ticks_per_packet(size):>5} ticks/packet median: {median / 1e6:.2f}M ticks/s published and "
            f"decoded; ticks lost without detection, per run: {[undetected(r) for r in runs]} (goal 20M/s, 0)"
        )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
