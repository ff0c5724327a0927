"""Market data: batched binary ticks over UDP multicast (unicast fallback), sequenced, gap-filled.

Publisher (the market-data service): ticks from a simulated feed or a replay file are packed into
MarketDataBatch datagrams of at most maxPacketBytes, numbered per packet, sent to the multicast group and
to every unicast subscriber, and retained for replay. Idle periods carry heartbeats holding the next
sequence, so a subscriber notices a lost last packet too. Its TCP port takes Subscribe (unicast delivery)
and ReplayRequest (resend retained packets, or a snapshot of the latest tick per symbol when they are
gone).

Subscriber (risk, position, the client, benchmarks): delivers batches in sequence order as zero-copy
numpy arrays. A gap holds later packets back and asks for a replay; a snapshot resets the sequence. A
multicast subscriber that hears nothing, not even heartbeats, falls back to unicast.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from tradeplane_services._wire import TickWalk
from tradeplane_services.config import Address, Environment
from tradeplane_services.protocol import (
    BATCH_PREFIX,
    TICK_DTYPE,
    BatchFlags,
    MarketDataBatch,
    ProtocolError,
    ReplayRequest,
    Subscribe,
    decode,
    encode_batch,
    price_units,
    symbol_bytes,
)
from tradeplane_services.runtime import (
    Connection,
    PeerLink,
    RequestMetrics,
    Service,
    cancel_and_wait,
    fields,
    log,
)
from tradeplane_services.sessions import Credentials, Keyring
from tradeplane_services.settings import MarketDataSettings

SNAPSHOT_REQUEST = ReplayRequest(0, 0)
PACKETS_PER_ROUND = 64
SNAPSHOT_LIMIT = (0xFFFF - BATCH_PREFIX) // TICK_DTYPE.itemsize  # a snapshot travels over TCP: one frame
TickHandler = Callable[[np.ndarray[Any, Any]], None]
PacketHandler = Callable[[MarketDataBatch, int], None]  # a batch and its packet sequence


def ticks_per_packet(max_packet_bytes: int) -> int:
    return (max_packet_bytes - BATCH_PREFIX) // TICK_DTYPE.itemsize


PRICE_CENT = price_units(0.01)
# Where each field of a tick sits in its record, as the compiled feed writes them.
TICK_RECORD = {"size": TICK_DTYPE.itemsize, **{name: at[1] for name, at in (TICK_DTYPE.fields or {}).items()}}


class SimulatedFeed:
    """Ticks around each symbol's reference price: a mean-reverting walk, round-robin over symbols, one
    step of the walk per call (which keeps every price within ~1% of its reference). Compiled
    (core/src/feed.rs): the ticks are written straight into their wire records."""

    def __init__(self, symbols: dict[str, float], seed: int = 7) -> None:
        self.walk = TickWalk(
            [symbol_bytes(name) for name in symbols],
            [price_units(price) for price in symbols.values()],
            PRICE_CENT,
            seed,
            TICK_RECORD,
        )

    def take(self, count: int, now_ns: int) -> np.ndarray[Any, Any]:
        return np.frombuffer(self.walk.take(count, now_ns), dtype=TICK_DTYPE)


class ReplayFeed:
    """Ticks from a file of raw TICK_DTYPE records (what `tradeplane-svc client md-tail --record` writes)."""

    def __init__(self, path: Path) -> None:
        size = path.stat().st_size
        if size == 0 or size % TICK_DTYPE.itemsize:
            raise ValueError(
                f"{path}: {size} bytes is not a whole number of {TICK_DTYPE.itemsize}-byte ticks"
            )
        self.ticks = np.fromfile(path, dtype=TICK_DTYPE)
        self.cursor = 0

    def take(self, count: int, now_ns: int) -> np.ndarray[Any, Any]:
        indices = (self.cursor + np.arange(count)) % len(self.ticks)
        self.cursor = (self.cursor + count) % len(self.ticks)
        return self.ticks[indices]


class Publisher:
    """Packs ticks into sequenced datagrams, sends them to the group and unicast subscribers, retains them."""

    def __init__(
        self, settings: MarketDataSettings, bind: str, group: Address | None, metrics: RequestMetrics
    ) -> None:
        self.settings = settings
        self.group = group
        self.metrics = metrics
        self.per_packet = ticks_per_packet(settings.maxPacketBytes)
        self.sequence = 0  # of the last packet sent
        self.retained: deque[bytes] = deque(maxlen=settings.retainPackets)
        self.unicast: dict[Connection, tuple[str, int]] = {}
        self.ticks_published = 0
        self.ticks_skipped = 0  # due but never generated: the feed fell behind its rate
        self.send_failures = 0
        self.last_send_ns = 0
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.setblocking(False)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        if group is not None:
            if bind not in ("", "0.0.0.0"):
                self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(bind))
            self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, settings.multicastTtl)
            self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        self.socket.bind((bind, 0))

    @property
    def first_retained(self) -> int:
        return self.sequence - len(self.retained) + 1

    def publish(self, ticks: np.ndarray[Any, Any], flags: int = 0) -> None:
        started = time.perf_counter_ns()
        for start in range(0, len(ticks), self.per_packet):
            chunk = ticks[start : start + self.per_packet]
            self.sequence += 1
            frame = encode_batch(chunk, self.sequence, flags, self.settings.channel, time.time_ns())
            self.retained.append(frame)
            self._send(frame)
            self.ticks_published += len(chunk)
        self.metrics.record(started)

    def heartbeat(self) -> None:
        empty = np.empty(0, dtype=TICK_DTYPE)
        self._send(
            encode_batch(
                empty, self.sequence + 1, BatchFlags.HEARTBEAT, self.settings.channel, time.time_ns()
            )
        )

    def snapshot_frame(self) -> bytes:
        """The latest tick of every symbol seen in the retained packets, newest packets first."""
        latest: dict[bytes, Any] = {}
        for frame in reversed(self.retained):
            batch, _ = decode(frame)
            for tick in batch.ticks[::-1]:
                latest.setdefault(bytes(tick["symbol"]), tick)
            if len(latest) >= SNAPSHOT_LIMIT:
                break
        ticks = np.array(list(latest.values())[:SNAPSHOT_LIMIT], dtype=TICK_DTYPE)
        return encode_batch(ticks, self.sequence, BatchFlags.SNAPSHOT, self.settings.channel, time.time_ns())

    def replay(self, request: ReplayRequest) -> list[bytes]:
        """Retained frames for the request, or a snapshot when part of the range is gone."""
        if request.first_sequence == 0 or request.first_sequence < self.first_retained:
            return [self.snapshot_frame()]
        if request.first_sequence > self.sequence:
            return []  # not published yet: the heartbeats will say when it is
        last = min(request.last_sequence, self.sequence)
        base = self.first_retained
        # One pass over the deque (indexing a deque in the middle walks it every time).
        return list(islice(self.retained, request.first_sequence - base, last - base + 1))

    def _send(self, frame: bytes) -> None:
        self.last_send_ns = time.perf_counter_ns()
        destinations = list(self.unicast.values())
        if self.group is not None:
            destinations.append((self.group.host, self.group.port))
        for destination in destinations:
            try:
                self.socket.sendto(frame, destination)
            except BlockingIOError:
                self.send_failures += 1  # subscribers recover it by replay
            except OSError as error:
                self.send_failures += 1
                if self.group is not None and destination == (self.group.host, self.group.port):
                    log.error(
                        "multicast send failed; unicast only from now on", extra=fields(error=str(error))
                    )
                    self.group = None


class MarketDataService(Service[MarketDataSettings]):
    name = "market-data"

    def __init__(self, environment: Environment, settings: MarketDataSettings) -> None:
        super().__init__(environment, settings)
        self.publisher = Publisher(settings, environment.bind, environment.market_data_group, self.metrics)
        self.feed: SimulatedFeed | ReplayFeed = (
            ReplayFeed(Path(settings.replayFile)) if settings.replayFile else SimulatedFeed(settings.symbols)
        )
        self.handlers = {Subscribe: self.on_subscribe, ReplayRequest: self.on_replay}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._pace())

    async def _pace(self) -> None:
        """Publish at ticksPerSecond: each millisecond, the ticks due once they fill a packet or waited
        batchMillis."""
        publisher = self.publisher
        started, due_total, rate, sent_at = time.perf_counter(), 0, -1, 0.0
        while True:
            settings = self.settings
            now = time.perf_counter()
            if settings.ticksPerSecond != rate:
                started, due_total, rate = now, 0, settings.ticksPerSecond
            due = int((now - started) * rate) - due_total
            most = publisher.per_packet * PACKETS_PER_ROUND
            if due > rate // 20 + most:
                # More than 50 ms behind: the feed cannot go this fast here; skip rather than stall.
                publisher.ticks_skipped += due - most
                due_total += due - most
                due = most
            if due >= publisher.per_packet or (due > 0 and now - sent_at >= settings.batchMillis / 1000):
                due = min(due, most)  # a bounded round keeps the loop answering replays and /status
                self.inject_latency()
                publisher.publish(self.feed.take(due, time.time_ns()))
                due_total += due
                sent_at = now
            if time.perf_counter_ns() - publisher.last_send_ns > settings.heartbeatMillis * 1_000_000:
                publisher.heartbeat()
            # Wake when a packet fills or the batch interval ends, whichever is sooner (at least 1 ms).
            until_full = (publisher.per_packet - max(due, 0)) / rate if rate else 1.0
            await asyncio.sleep(max(0.001, min(until_full, settings.batchMillis / 1000)))

    def on_subscribe(self, connection: Connection, message: Subscribe) -> None:
        started = connection.received_ns
        host = connection.transport.get_extra_info("peername")[0] if connection.transport else None
        if host is not None:
            self.publisher.unicast[connection] = (host, message.udp_port)
            log.info("unicast subscriber", extra=fields(address=f"{host}:{message.udp_port}"))
        self.metrics.record(started)

    def on_replay(self, connection: Connection, message: ReplayRequest) -> None:
        started = connection.received_ns
        self.inject_latency()
        for frame in self.publisher.replay(message):
            connection.send_raw(frame)
        self.metrics.record(started)

    def session_lost(self, connection: Connection) -> None:
        self.publisher.unicast.pop(connection, None)

    def status(self) -> dict[str, Any]:
        publisher = self.publisher
        return {
            "sequence": publisher.sequence,
            "ticksPublished": publisher.ticks_published,
            "ticksSkipped": publisher.ticks_skipped,
            "sendFailures": publisher.send_failures,
            "multicast": str(publisher.group) if publisher.group else None,
            "unicastSubscribers": len(publisher.unicast),
        }

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self.publisher.socket.close()


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, subscriber: MarketDataSubscriber) -> None:
        self.subscriber = subscriber

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.subscriber.on_datagram(data)


class SubscriberStats:
    def __init__(self) -> None:
        self.packets = 0
        self.ticks = 0
        self.gaps = 0
        self.recovered = 0
        self.snapshots = 0
        self.stale = 0
        self.malformed = 0
        self.fallbacks = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class MarketDataSubscriber:
    """Sequenced delivery of a feed to `on_ticks`, with replay-based gap recovery and unicast fallback."""

    def __init__(
        self,
        on_ticks: TickHandler,
        publisher: Address,
        group: Address | None,
        interface: str,
        metrics: RequestMetrics,
        credentials: Credentials,
        silence_seconds: float = 1.0,
        max_held_packets: int = 20_000,
        on_packet: PacketHandler | None = None,
    ) -> None:
        self.on_ticks = on_ticks
        self.on_packet = on_packet  # sees every delivered batch with its sequence (snapshots included)
        self.group = group
        self.interface = interface or "0.0.0.0"  # the wildcard lets the kernel pick (pods)
        self.metrics = metrics
        self.silence_seconds = silence_seconds
        self.max_held_packets = max_held_packets
        self.link = PeerLink(
            "market-data",
            publisher,
            {MarketDataBatch: self._on_replayed},
            metrics,
            credentials,
            on_up=self._resubscribe,
            source=self.interface,
        )
        self.stats = SubscriberStats()
        self.expected: int | None = None  # next sequence to deliver
        self.held: dict[int, MarketDataBatch] = {}
        self.mode = "multicast" if group is not None else "unicast"
        self._transport: asyncio.DatagramTransport | None = None
        self._heard_ns = 0
        self._asked_ns = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def synchronised(self) -> bool:
        return self.expected is not None and not self.held

    async def start(self) -> None:
        self.link.start()
        await self._open(self.mode)
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def _open(self, mode: str) -> None:
        if self._transport is not None:
            self._transport.close()
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        if mode == "multicast" and self.group is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.group.host, self.group.port))
            membership = struct.pack(
                "4s4s", socket.inet_aton(self.group.host), socket.inet_aton(self.interface)
            )
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            except OSError as error:
                log.warning("cannot join the multicast group; using unicast", extra=fields(error=str(error)))
                sock.close()
                await self._open("unicast")
                return
        else:
            sock.bind((self.interface, 0))
        self.mode = mode
        self._heard_ns = time.perf_counter_ns()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)
        if mode == "unicast":
            self._subscribe()

    def _subscribe(self) -> None:
        if self.mode == "unicast" and self._transport is not None:
            self.link.send(Subscribe(self._transport.get_extra_info("sockname")[1]))

    def _resubscribe(self, connection: Connection) -> None:
        # A (re)connected publisher has forgotten unicast subscribers.
        asyncio.get_running_loop().call_soon(self._subscribe)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.perf_counter_ns()
            silent = now - self._heard_ns > self.silence_seconds * 1e9
            if silent and self.mode == "multicast" and self.link.connected:
                log.warning("multicast is silent; falling back to unicast")
                self.stats.fallbacks += 1
                await self._open("unicast")
            if self.held and now - self._asked_ns > 300_000_000:
                self._ask_replay(min(self.held) - 1)

    def on_datagram(self, data: bytes) -> None:
        self._heard_ns = time.perf_counter_ns()
        try:
            batch, sequence = decode(data)
        except ProtocolError:
            self.stats.malformed += 1
            return
        if type(batch) is MarketDataBatch:
            self._on_packet(batch, sequence)
        else:
            self.stats.malformed += 1

    def _on_replayed(self, connection: Connection, batch: MarketDataBatch) -> None:
        self.stats.recovered += 1
        self._on_packet(batch, connection.received_sequence)

    def _on_packet(self, batch: MarketDataBatch, sequence: int) -> None:
        expected = self.expected
        if batch.flags & BatchFlags.SNAPSHOT:
            self.stats.snapshots += 1
            self._deliver(batch, sequence)
            self.expected = sequence + 1
            for old in [s for s in self.held if s <= sequence]:
                del self.held[old]
            self._drain()
            return
        if batch.flags & BatchFlags.HEARTBEAT:
            if expected is not None and sequence > expected and sequence - 1 not in self.held:
                self._gap(expected, sequence - 1)
            return
        if expected is None or sequence == expected:
            self.expected = sequence + 1
            self._deliver(batch, sequence)
            if self.held:
                self._drain()
        elif sequence < expected:
            self.stats.stale += 1
        elif sequence not in self.held:
            if sequence - 1 not in self.held:
                self._gap(expected, sequence - 1)
            self.held[sequence] = batch
            if len(self.held) > self.max_held_packets:
                self.held.clear()
                self.link.send(SNAPSHOT_REQUEST)

    def _gap(self, first: int, last: int) -> None:
        """A hole first..last opened: ask for everything missing up to its end."""
        self.stats.gaps += 1
        self._ask_replay(last)

    def _ask_replay(self, last: int) -> None:
        if self.expected is None:
            return
        self._asked_ns = time.perf_counter_ns()
        self.link.send(ReplayRequest(self.expected, last))

    def _drain(self) -> None:
        held = self.held
        expected = self.expected
        while expected is not None and expected in held:
            batch = held.pop(expected)
            expected += 1
            self.expected = expected
            self._deliver(batch, expected - 1)
        if held:
            self._ask_replay(min(held) - 1)

    def _deliver(self, batch: MarketDataBatch, sequence: int) -> None:
        self.stats.packets += 1
        if self.on_packet is not None:
            self.on_packet(batch, sequence)
        if batch.tick_count:
            self.stats.ticks += batch.tick_count
            self.on_ticks(batch.ticks)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._transport is not None:
            self._transport.close()
        await self.link.stop()


def subscribe_if_published(
    environment: Environment, on_ticks: TickHandler, metrics: RequestMetrics
) -> MarketDataSubscriber | None:
    """A subscriber to the environment's market-data publisher; None when the component has none."""
    publisher = environment.peer("market-data")
    if not isinstance(publisher, Address):  # never rings: read_environment refuses them for market-data
        return None
    credentials = Credentials(environment.component, Keyring(environment.keys_dir))
    return MarketDataSubscriber(
        on_ticks, publisher, environment.market_data_group, environment.bind, metrics, credentials
    )
