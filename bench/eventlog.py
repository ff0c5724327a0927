"""The event log on JetStream: append latency at R1 and R3 beside a bare publish, and replay time.

For R1 (one nats-server) and R3 (three clustered on loopback), all with `sync_interval: always`:
- append: one event of one Fill frame, with a Nats-Msg-Id, awaited until acknowledged (what execution
  waits for before it reports a trade), one at a time, --appends times;
- bare: a core NATS publish of the same bytes followed by a flush round trip to the same server (no
  JetStream, no disk), the floor under an append;
- replay (R1): --replay fills appended in events of --per-event fills, then read back through an explicit
  ack consumer into position's projection, as a position replica does on start; printed per million fills.
Figures vary with the disk's fsync latency and what else runs: the load average is printed with them.

    python bench/eventlog.py
    python bench/eventlog.py --appends 5000 --replay 1000000 --per-event 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import nats

from tradeplane_services.eventlog import Append, EventLog, subject_filter
from tradeplane_services.natsserver import NatsServers
from tradeplane_services.position import PositionBook
from tradeplane_services.protocol import Fill, Side, encode, price_units, symbol_bytes

HOST = "127.77.251.1"


def fill(sequence: int) -> Fill:
    account = 1 + sequence % 64
    return Fill(1, sequence, account, symbol_bytes("AAPL"), int(Side.BUY), 1, price_units(190), sequence, 0)


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1e6:7.0f} us   p99 {p99 * 1e6:7.0f} us"


async def append_latency(url: str, replicas: int, count: int) -> tuple[list[float], list[float]]:
    log = EventLog(url.split(","), replicas)
    await log.open()
    bare = await nats.connect(url.split(",")[0])
    appends, publishes = [], []
    payload = encode(fill(0))
    try:
        for n in range(1, count + 1):
            started = time.perf_counter()
            await log.append([Append("fill", 1 + n % 15, [fill(n)], f"bench-{n}")])  # 0 is the replay's
            appends.append(time.perf_counter() - started)
            started = time.perf_counter()
            await bare.publish("bench.bare", payload)
            await bare.flush()
            publishes.append(time.perf_counter() - started)
    finally:
        await bare.close()
        await log.close()
    return appends, publishes


async def replay(url: str, fills: int, per_event: int) -> tuple[float, float, PositionBook]:
    log = EventLog(url.split(","))
    await log.open()
    try:
        started = time.perf_counter()
        window: list[Append] = []
        for first in range(1, fills + 1, per_event):
            group = [fill(n) for n in range(first, min(first + per_event, fills + 1))]
            window.append(Append("fill", 0, group, f"replay-{first}"))
            if len(window) == 64:  # many appends in flight, as under load
                await log.append(window)
                window = []
        await log.append(window)
        written = time.perf_counter() - started
        book = PositionBook()
        started = time.perf_counter()
        async for event in log.read(subject_filter("fill", 0)):
            for message in event.messages:
                book.apply(message)
            book.advance(event.sequence)
        return written, time.perf_counter() - started, book
    finally:
        await log.close()


def print_replay(url: str, fills: int, per_event: int) -> None:
    written, took, book = asyncio.run(replay(url, fills, per_event))
    assert book.fills == fills, f"replayed {book.fills} of {fills} fills"
    print(
        f"R1 replay: {fills} fills in {book.sequence} events ({per_event} per event) appended in "
        f"{written:.1f} s, replayed in {took:.2f} s = {took * 1_000_000 / fills:.1f} s per million fills "
        f"({fills / took:,.0f} fills/s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--replay", type=int, default=200_000, help="fills to append and replay")
    parser.add_argument("--per-event", type=int, default=64, help="fills per event (one commit's partition)")
    arguments = parser.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
        for replicas in (1, 3):
            servers = NatsServers(HOST, Path(scratch) / f"r{replicas}", replicas, port=14222 + 10 * replicas)
            servers.start()
            try:
                servers.wait_ready()
                appends, publishes = asyncio.run(append_latency(servers.url, replicas, arguments.appends))
                print(f"R{replicas} append ({arguments.appends}, one at a time): {percentiles(appends)}")
                print(f"R{replicas} bare publish + flush, same size:  {percentiles(publishes)}", flush=True)
                if replicas == 1:
                    print_replay(servers.url, arguments.replay, arguments.per_event)
            finally:
                servers.stop()
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
