"""An open-loop load generator for order entry, and the bare echo server it is compared with.

Open loop: order i is due at start + i/rate whatever happened to earlier ones, and its latency is measured
from that intended time to its acknowledgement (ExecutionReport NEW or REJECTED; the echoed frame for the
echo server). A stalled service therefore shows up as latency of every order that should have been sent
meanwhile: no coordinated omission. Latencies go into the compiled LatencyHistogram (an HdrHistogram,
1 ns .. 60 s, 3 digits).

Orders come in crossing pairs (a buy and a sell of the same quantity at the symbol's reference price) so
that the simulated venue trades them; the generator keeps the net filled quantity per (account, symbol)
from the TRADE reports it receives, which is what the position service must end up with.

One thread: due orders are written in one send, answers parsed as they come, and the wait between is a
select() with a microsecond timeout (timer slack lowered to 1 us) so sends leave on time, at most one
send every SEND_EVERY_SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import select
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from tradeplane_services._wire import LatencyHistogram
from tradeplane_services.config import Address, parse_address
from tradeplane_services.protocol import (
    HEADER,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    ExecType,
    ExecutionReport,
    NewOrder,
    OrderType,
    Reason,
    TimeInForce,
    layout_of,
    price_units,
    symbol_bytes,
)
from tradeplane_services.runtime import quiet_garbage_collector
from tradeplane_services.sessions import Credentials, credentials, logon
from tradeplane_services.settings import DEFAULT_SYMBOLS

NEW_ORDER = layout_of(NewOrder)
REPORT = layout_of(ExecutionReport)
E_NEW, E_REJECTED, E_TRADE = int(ExecType.NEW), int(ExecType.REJECTED), int(ExecType.TRADE)
REPORT_FIELDS = struct.Struct("<QQBBH8sBIq")  # client_order_id .. last_price, a prefix of the report body
CLIENT_ORDER_ID = struct.Struct("<Q")  # the first field of a NewOrder's body
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
# Above 10k orders/s, what is due goes out every 100 us, as a gateway batches: waking for each order
# took most of a core of the two the services under test run on. The wait counts in each order's latency.
SEND_EVERY_SECONDS = 100e-6


def lower_timer_slack() -> None:
    """Ask Linux for 1 us timer slack (default 50 us), so short select() timeouts end on time."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK


@dataclass(frozen=True)
class OrderPlan:
    """Order i of a run, derived from i alone so nothing per order is stored while sending."""

    symbols: tuple[bytes, ...]
    prices: tuple[int, ...]
    accounts: int = 100
    crossing: bool = True  # False: buys 1% under and sells 1% over the reference rest in the book

    def columns(self, indices: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """account, symbol (an index into `symbols`), side, quantity and price of each order index.
        Pair j = index // 2 is a buy and a sell at the same price (they trade) or, with crossing off, 2%
        apart (both rest)."""
        pair, sell = np.divmod(indices.astype(np.int64), 2)
        symbols = len(self.symbols)
        symbol = pair % symbols
        # Accounts rotate fast (exposure spreads evenly); quantities change once all (account, symbol)
        # cells had one pair, so an (account, symbol, side, qty, price) repeats only every
        # symbols x accounts x 100 pairs: the duplicate-order check never fires on generated load.
        buyer = 1 + (pair // symbols) % self.accounts
        price = np.asarray(self.prices, dtype=np.int64)[symbol]
        if not self.crossing:
            price += (price // 100 // 100 * 100) * np.where(sell == 1, 1, -1)  # 1%, whole cents
        return {
            "account": np.where(sell == 1, buyer % self.accounts + 1, buyer),
            "symbol": symbol,
            "side": 1 + sell,
            "quantity": 1 + (pair // (symbols * self.accounts)) % 100,
            "price": price,
        }

    def order(self, index: int) -> tuple[int, bytes, int, int, int]:
        """(account, symbol, side, quantity, price) of order `index`."""
        row = {name: int(column[0]) for name, column in self.columns(np.array([index])).items()}
        return row["account"], self.symbols[row["symbol"]], row["side"], row["quantity"], row["price"]

    def frames(self, count: int, first_client_order_id: int = 1) -> np.ndarray[Any, Any]:
        """NewOrder frames of orders 0 .. count-1 (sequence number = index), limit and day: built at once,
        so that sending costs a slice and not a pack per order."""
        indices = np.arange(count)
        columns = self.columns(indices)
        frames = np.zeros(count, dtype=NEW_ORDER.dtype)
        frames["length"], frames["type"], frames["version"] = (
            NEW_ORDER.size,
            NEW_ORDER.type_id,
            PROTOCOL_VERSION,
        )
        frames["sequence"] = indices
        frames["client_order_id"] = indices + first_client_order_id
        frames["symbol"] = np.array(self.symbols, dtype="S8")[columns["symbol"]]
        frames["order_type"], frames["time_in_force"] = int(OrderType.LIMIT), int(TimeInForce.DAY)
        for name in ("account", "side", "quantity", "price"):
            frames[name] = columns[name]
        return frames


def default_plan(accounts: int = 100, crossing: bool = True) -> OrderPlan:
    return OrderPlan(
        tuple(symbol_bytes(s) for s in DEFAULT_SYMBOLS),
        tuple(price_units(p) for p in DEFAULT_SYMBOLS.values()),
        accounts,
        crossing,
    )


@dataclass
class LoadResult:
    target: str
    offered_rate: float
    seconds: float
    sent: int = 0
    answered: int = 0
    unanswered: int = 0
    measured: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    percentiles_us: dict[str, float] = field(default_factory=dict)
    accepted_percentiles_us: dict[str, float] = field(default_factory=dict)
    """Of the orders accepted (the rest were refused, some at once: under overload, a different path)."""
    max_us: float = 0.0
    achieved_rate: float = 0.0
    max_send_lag_us: float = 0.0
    trades: int = 0
    net_fills: dict[tuple[int, bytes], int] = field(default_factory=dict)
    first_reject_at: dict[str, float] = field(default_factory=dict)
    """time.monotonic() of the first answer rejected for each reason (when a new behaviour showed up)."""

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "offered_rate": self.offered_rate,
            "achieved_rate": round(self.achieved_rate, 1),
            "seconds": self.seconds,
            "sent": self.sent,
            "answered": self.answered,
            "unanswered": self.unanswered,
            "measured": self.measured,
            "rejects": dict(self.rejects),
            "latency_us": {**self.percentiles_us, "max": self.max_us},
            "accepted_latency_us": self.accepted_percentiles_us,
            "max_send_lag_us": round(self.max_send_lag_us, 1),
            "trades": self.trades,
        }


def run_load(
    target: Address,
    rate: float,
    seconds: float,
    warmup: float = 1.0,
    plan: OrderPlan | None = None,
    echo: bool = False,
    drain_seconds: float = 5.0,
    first_client_order_id: int = 1,
    settle_seconds: float = 0.0,
    creds: Credentials | None = None,
) -> LoadResult:
    """Offer `rate` orders/s for `seconds` (the first `warmup` seconds unmeasured) and wait for answers.

    With `settle_seconds`, keep reading after the last answer until that long passes without a message,
    so that trade reports still under way are counted too.
    """
    lower_timer_slack()
    quiet_garbage_collector()
    plan = plan or default_plan()
    total = int(rate * seconds)
    result = LoadResult(str(target), rate, seconds)
    sock = socket.create_connection((target.host, target.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not echo:
        logon(sock, creds or credentials())  # order says nothing after the LogonAck until orders come
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setblocking(False)

    wire = memoryview(plan.frames(total, first_client_order_id).tobytes())
    size = NEW_ORDER.size
    interval_ns = 1e9 / rate
    warmup_orders = int(rate * warmup)
    answers = Answers(plan, total, first_client_order_id, echo)
    sent = written = 0
    max_lag = 0
    pending = b""
    start = time.perf_counter_ns() + 1_000_000
    drain_deadline = start + int((seconds + drain_seconds) * 1e9)
    heard_ns = start

    while True:
        now = time.perf_counter_ns()
        due = min(total, int((now - start) / interval_ns) + 1) if now >= start else 0
        if due > sent:
            max_lag = max(max_lag, now - (start + int(sent * interval_ns)))
            sent = due
        if written < sent * size:
            with contextlib.suppress(BlockingIOError):
                written += sock.send(wire[written : sent * size])
        if now > drain_deadline:
            break
        if sent == total and answers.answered == total and now - heard_ns >= settle_seconds * 1e9:
            break
        if sent < total:
            wait = max(SEND_EVERY_SECONDS, (start + sent * interval_ns - time.perf_counter_ns()) / 1e9)
        else:
            wait = 0.05
        readable, _, _ = select.select([sock], [sock] if written < sent * size else [], [], wait)
        if not readable:
            continue
        received_ns = heard_ns = time.perf_counter_ns()
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError(f"{target} closed the connection")
        buffer = pending + data if pending else data
        pending = buffer[answers.take(buffer, received_ns) :]
    sock.close()

    answered_at = answers.answered_at
    intended = start + (np.arange(total) * interval_ns).astype(np.int64)
    done = answered_at > 0
    measured = done & (np.arange(total) >= warmup_orders)
    histogram = latency_histogram((answered_at - intended)[measured])
    result.sent, result.answered, result.unanswered = sent, answers.answered, total - answers.answered
    result.measured = histogram.count
    result.percentiles_us = dict(histogram.percentiles_us(PERCENTILES))
    result.max_us = histogram.max_ns / 1000
    if not echo:
        accepted_histogram = latency_histogram((answered_at - intended)[measured & answers.accepted])
        result.accepted_percentiles_us = dict(accepted_histogram.percentiles_us(PERCENTILES))
    if answers.answered:
        last = int(answered_at[done].max())
        result.achieved_rate = answers.answered / max(1e-9, (last - start) / 1e9)
    result.max_send_lag_us = max_lag / 1000
    result.rejects = Counter({Reason(code).name: count for code, count in answers.rejects.items()})
    result.trades = answers.trades
    result.net_fills = answers.net_fills
    result.first_reject_at = {Reason(code).name: at for code, at in answers.first_reject_at.items()}
    return result


class Answers:
    """What came back, counted frame by frame as reads bring them (a read holds a few frames or many;
    per frame costs a few microseconds either way, numpy's fixed cost per call did not pay at low rates)."""

    def __init__(self, plan: OrderPlan, total: int, first_client_order_id: int, echo: bool) -> None:
        self.base = first_client_order_id
        self.echo = echo
        self.answered_at = np.zeros(total, dtype=np.int64)  # receive time per order, 0 until answered
        self.accepted = np.zeros(total, dtype=bool)
        self.answered = 0
        self.rejects: Counter[int] = Counter()
        self.first_reject_at: dict[int, float] = {}
        self.trades = 0
        self.net_fills: dict[tuple[int, bytes], int] = {}
        """Net filled quantity per (account, symbol) from the TRADE reports: buys up, sells down."""
        self._symbols = plan.symbols
        self._orders = plan.columns(np.arange(total))

    def take(self, buffer: bytes, received_ns: int) -> int:
        """Count the whole frames at the start of `buffer`; the bytes they took."""
        answered_at, total = self.answered_at, len(self.answered_at)
        position, end = 0, len(buffer)
        while end - position >= HEADER_SIZE:
            length, message_type, _, _ = HEADER.unpack_from(buffer, position)
            if end - position < length:
                break
            if message_type == REPORT.type_id:
                client_order_id, _, exec_type, _, reason, _, _, last_quantity, _ = REPORT_FIELDS.unpack_from(
                    buffer, position + HEADER_SIZE
                )
                index = client_order_id - self.base
                if exec_type == E_TRADE and 0 <= index < total:
                    self.trades += 1
                    account = int(self._orders["account"][index])
                    key = (account, self._symbols[int(self._orders["symbol"][index])])
                    signed = last_quantity if self._orders["side"][index] == 1 else -last_quantity
                    self.net_fills[key] = self.net_fills.get(key, 0) + signed
                elif exec_type in (E_NEW, E_REJECTED) and 0 <= index < total and not answered_at[index]:
                    answered_at[index] = received_ns
                    self.answered += 1
                    self.accepted[index] = exec_type == E_NEW
                    if exec_type == E_REJECTED:
                        self.rejects[reason] += 1
                        self.first_reject_at.setdefault(reason, time.monotonic())
            elif self.echo and message_type == NEW_ORDER.type_id:
                index = CLIENT_ORDER_ID.unpack_from(buffer, position + HEADER_SIZE)[0] - self.base
                if 0 <= index < total and not answered_at[index]:
                    answered_at[index] = received_ns
                    self.answered += 1
            position += length
        return position


def latency_histogram(latencies_ns: np.ndarray[Any, Any]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    histogram.record_all(np.maximum(latencies_ns, 1).tolist())
    return histogram


# --- echo baseline ------------------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def serve_echo(bind: str, port: int) -> int:
    """Echo every byte back: the same TCP loopback, uvloop and asyncio protocol as the services."""
    import signal

    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Echo, bind, port, reuse_address=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print(f"echo listening on {bind}:{port}", flush=True)
        await stop.wait()
        server.close()

    uvloop.run(serve())
    return 0


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="127.0.0.1:7001", help="order service (or echo) host:port")
    parser.add_argument("--rate", type=float, default=10_000, help="offered orders per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="leading seconds left out of the figures")
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--echo", action="store_true", help="the target is the echo server")
    parser.add_argument("--passive", action="store_true", help="orders rest in the book instead of trading")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def main(arguments: argparse.Namespace) -> int:
    target = parse_address(arguments.target, "--target")
    result = run_load(
        target,
        arguments.rate,
        arguments.seconds,
        arguments.warmup,
        default_plan(arguments.accounts, crossing=not arguments.passive),
        echo=arguments.echo,
    )
    summary = result.summary()
    if arguments.json:
        print(json.dumps(summary, indent=2))
    else:
        latency = " ".join(f"{k}={v:.1f}us" for k, v in summary["latency_us"].items())
        print(
            f"{target}: offered {result.offered_rate:.0f}/s achieved {result.achieved_rate:.0f}/s "
            f"answered {result.answered}/{result.sent} rejects {dict(result.rejects)} {latency}"
        )
    return 0 if result.unanswered == 0 else 1
