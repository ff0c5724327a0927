"""Order round trip over TCP and over shared-memory rings, each against a bare echo over the same transport.

Four kinds of run, at the same offered rate (open loop: latency from each message's intended send time to
its answer), by one asyncio client on uvloop that speaks either transport:

    tcp-echo     the client -> an echo server (the services' asyncio protocol, no work) over loopback TCP
    tcp-order    the client -> order -> risk -> order -> the client, every hop over loopback TCP
    ring-echo    the client -> the same echo, served over a pair of shared-memory rings
    ring-order   the same order path with every hop over rings: the client reaches order over the rings
                 order serves, and order reaches risk over the rings risk serves (spec.coLocate)

Orders are passive (1% off the market: they rest), so the path is order entry and the risk check. Echo and
order runs alternate within each transport, so each ratio (order p99 / echo p99, goal <= 3 at 10k/s)
compares runs taken minutes apart at most. Prints every run, the medians, the ratios, the load average
and the command.

    python bench/shm_transport.py                       # 10k/s, 3 runs of 5 s each
    python bench/shm_transport.py --rate 1000 --runs 5 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import uvloop

from tradeplane_services.catalog import CLIENT
from tradeplane_services.loadgen import default_plan, lower_timer_slack
from tradeplane_services.protocol import (
    Challenge,
    ExecType,
    ExecutionReport,
    LogonAck,
    NewOrder,
    OrderType,
    Reason,
    StreamDecoder,
    TimeInForce,
    encode,
)
from tradeplane_services.ringtransport import open_ring, serve_ring
from tradeplane_services.runtime import quiet_garbage_collector
from tradeplane_services.sessions import Credentials, Keyring
from tradeplane_services.stack import Stack

HOST = "127.77.251.1"
ECHO_PORT = 7000
COMPONENTS = ("execution", "market-data", "risk", "order")
SETTINGS = {"risk": {"creditLimit": 1e13}, "market-data": {"ticksPerSecond": 1000}}
PERCENTILES = (50, 99, 99.9)


class Driver(asyncio.Protocol):
    """Sends orders (or echo frames) on schedule and notes when each is answered."""

    def __init__(self, count: int, credentials: Credentials | None) -> None:
        self.decoder = StreamDecoder()
        self.answered_ns = np.zeros(count, dtype=np.int64)
        self.answered = 0
        self.rejected: Counter[str] = Counter()
        self.credentials = credentials
        self.logged_on = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._key: bytes = b""
        if credentials is None:
            self.logged_on.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        for item in self.decoder.feed(data):
            if type(item) is not tuple:
                continue
            message = item[0]
            if type(message) is ExecutionReport:
                if message.exec_type in (ExecType.NEW, ExecType.REJECTED):
                    self._answer(message.client_order_id, now)
                    if message.exec_type == ExecType.REJECTED:
                        self.rejected[Reason(message.reason).name] += 1
            elif type(message) is NewOrder:  # the echo
                self._answer(message.client_order_id, now)
            elif type(message) is Challenge and self.credentials is not None:
                logon, self._key = self.credentials.logon(message)
                assert self.transport is not None
                self.transport.write(encode(logon, 1))
            elif type(message) is LogonAck:
                self.logged_on.set_result(None)

    def _answer(self, client_order_id: int, now: int) -> None:
        index = client_order_id - 1
        if 0 <= index < len(self.answered_ns) and not self.answered_ns[index]:
            self.answered_ns[index] = now
            self.answered += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.logged_on.done():
            self.logged_on.set_exception(ConnectionError("closed before the logon"))


async def drive(
    connect: Callable[[Callable[[], Driver]], Awaitable[tuple[Any, Any]]],
    logs_on: bool,
    keys: Path,
    rate: float,
    seconds: float,
    warmup: float,
) -> dict[str, float]:
    count = int(rate * seconds)
    credentials = Credentials(CLIENT, Keyring(keys)) if logs_on else None
    _, driver = await connect(lambda: Driver(count, credentials))
    await asyncio.wait_for(driver.logged_on, 10)
    plan = default_plan(crossing=False)
    frames = []
    for index in range(count):
        account, symbol, side, quantity, price = plan.order(index)
        order = NewOrder(index + 1, account, symbol, side, OrderType.LIMIT, TimeInForce.DAY, quantity, price)
        frames.append(encode(order, index + 2))
    interval_ns = 1e9 / rate
    start = time.perf_counter_ns() + 1_000_000
    sent = 0
    loop = asyncio.get_running_loop()
    transport = driver.transport
    assert transport is not None
    while sent < count:
        now = time.perf_counter_ns()
        due = min(count, int((now - start) / interval_ns) + 1) if now >= start else 0
        if due > sent:
            transport.write(b"".join(frames[sent:due]))
            sent = due
        # Yield to the loop until the next order is due (answers are read meanwhile).
        wait = (start + sent * interval_ns - time.perf_counter_ns()) / 1e9
        await asyncio.sleep(max(0.0, wait))
    deadline = loop.time() + 5
    while driver.answered < count and loop.time() < deadline:
        await asyncio.sleep(0.01)
    transport.close()
    intended = start + (np.arange(count) * interval_ns).astype(np.int64)
    measured = np.arange(count) >= int(rate * warmup)
    done = driver.answered_ns > 0
    latencies_us = (driver.answered_ns - intended)[done & measured] / 1000
    figures = {f"p{p:g}": float(np.percentile(latencies_us, p)) for p in PERCENTILES}
    figures["unanswered"] = float(count - driver.answered)
    figures["rejected"] = float(sum(driver.rejected.values()))
    if driver.rejected:
        print(f"    rejected: {dict(driver.rejected)}", flush=True)
    return figures


def tcp(port: int) -> Callable[[Callable[[], Driver]], Awaitable[tuple[Any, Any]]]:
    async def connect(factory: Callable[[], Driver]) -> tuple[Any, Any]:
        return await asyncio.get_running_loop().create_connection(factory, HOST, port)

    return connect


def ring(directory: Path) -> Callable[[Callable[[], Driver]], Awaitable[tuple[Any, Any]]]:
    async def connect(factory: Callable[[], Driver]) -> tuple[Any, Any]:
        return await open_ring(factory, directory)

    return connect


class _RingEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def serve_ring_echo(directory: Path) -> None:
    """The echo over rings, as its own process (`--serve-ring-echo DIR`)."""

    async def serve() -> None:
        server = serve_ring(_RingEcho, directory, "echo")
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("ring echo ready", flush=True)
        await stop.wait()
        server.close()

    uvloop.run(serve())


def describe(label: str, figures: dict[str, float]) -> str:
    return (
        f"  {label:<10} p50 {figures['p50']:>8.1f}us p99 {figures['p99']:>8.1f}us "
        f"p99.9 {figures['p99.9']:>8.1f}us unanswered {figures['unanswered']:.0f} "
        f"rejected {figures['rejected']:.0f}"
    )


def compare(
    name: str,
    echo: Callable[[], Awaitable[dict[str, float]]],
    order: Callable[[], Awaitable[dict[str, float]]],
    runs: int,
) -> dict[str, float]:
    """Alternate echo and order runs; print them and return the medians and the median p99 ratio."""
    results: dict[str, list[dict[str, float]]] = {"echo": [], "order": []}
    for run in range(runs):
        print(f"{name} run {run + 1}/{runs}", flush=True)
        for label, runner in (("echo", echo), ("order", order)):
            figures = uvloop.run(runner())
            results[label].append(figures)
            print(describe(f"{name}-{label}", figures), flush=True)
    medians = {
        f"{label} {key}": statistics.median(r[key] for r in runs_of)
        for label, runs_of in results.items()
        for key in ("p50", "p99")
    }
    ratios = [o["p99"] / e["p99"] for e, o in zip(results["echo"], results["order"], strict=True)]
    medians["ratio"] = statistics.median(ratios)
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--no-event-log",
        action="store_true",
        help="services without the event log (risk unpartitioned, fills kept nowhere): the transport alone",
    )
    parser.add_argument("--serve-ring-echo", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_ring_echo:
        serve_ring_echo(arguments.serve_ring_echo)
        return 0
    command = shlex.join([os.path.basename(sys.executable), *sys.argv])
    lower_timer_slack()
    quiet_garbage_collector()
    rate, seconds, warmup = arguments.rate, arguments.seconds, arguments.warmup
    summary: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tp-shm-bench-") as scratch:
        work = Path(scratch)
        echo_tcp = subprocess.Popen(
            [sys.executable, "-m", "tradeplane_services", "echo", "--bind", HOST, "--port", str(ECHO_PORT)],
            stdout=subprocess.PIPE,
        )
        echo_ring_dir = work / "echo-rings"
        echo_ring = subprocess.Popen(
            [sys.executable, __file__, "--serve-ring-echo", str(echo_ring_dir)], stdout=subprocess.PIPE
        )
        for process in (echo_tcp, echo_ring):
            assert process.stdout is not None
            process.stdout.readline()
        try:
            for name, co_located in (("tcp", ()), ("ring", ("order", "risk"))):
                without_log = {"TRADEPLANE_EVENT_LOG": ""} if arguments.no_event_log else {}
                stack = Stack(HOST, work / name, SETTINGS, extra_env=without_log, co_located=co_located)
                stack.start(COMPONENTS)
                try:
                    stack.wait_ready(60, COMPONENTS)
                    keys = stack.keys_dir
                    assert keys is not None
                    if name == "tcp":
                        echo_connect, order_connect = tcp(ECHO_PORT), tcp(stack.address("order").port)
                    else:
                        echo_connect, order_connect = ring(echo_ring_dir), ring(stack.ring_dir("order"))
                    summary[name] = compare(
                        name,
                        lambda c=echo_connect, k=keys: drive(c, False, k, rate, seconds, warmup),
                        lambda c=order_connect, k=keys: drive(c, True, k, rate, seconds, warmup),
                        arguments.runs,
                    )
                finally:
                    stack.stop()
        finally:
            for process in (echo_tcp, echo_ring):
                process.terminate()
                process.wait(10)
    print(
        f"\nmedians of {arguments.runs} runs at {rate:.0f}/s ({seconds:g} s each, first {warmup:g} s "
        "unmeasured):"
    )
    for name, figures in summary.items():
        print(
            f"  {name:<5} echo p50 {figures['echo p50']:.1f}us p99 {figures['echo p99']:.1f}us | order p50 "
            f"{figures['order p50']:.1f}us p99 {figures['order p99']:.1f}us | order p99 / echo p99 "
            f"{figures['ratio']:.2f} (goal <= 3)"
        )
    if "tcp" in summary and "ring" in summary:
        print(
            f"  ring / tcp: echo p99 {summary['ring']['echo p99'] / summary['tcp']['echo p99']:.2f}, "
            f"order p99 {summary['ring']['order p99'] / summary['tcp']['order p99']:.2f}"
        )
    print(f"load average: {' '.join(f'{value:.2f}' for value in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
