"""What every service process shares: framed connections, peer links, metrics, health, logs, drain.

A service is a `Service` subclass: it handles decoded messages per connection and says when it is ready
and how it drains. `serve()` runs it on uvloop with the HTTP endpoint (/metrics, /healthz, /readyz), the
config-file watcher (limits change without a restart) and the SIGTERM sequence: /readyz turns 503, the
listener closes, in-flight work finishes (`Service.drain`), connections close, the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

import numpy as np
import uvloop
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tradeplane_services._wire import LatencyHistogram, number_frames
from tradeplane_services.catalog import CALLERS
from tradeplane_services.config import Address, ConfigError, Environment, RingAddress, load_settings
from tradeplane_services.protocol import (
    LAYOUTS,
    Challenge,
    FrameError,
    FrameRun,
    Heartbeat,
    Item,
    Logon,
    LogonAck,
    ProtocolError,
    Reason,
    SessionReject,
    StreamDecoder,
    encode,
    layout_of,
    reject_for,
)
from tradeplane_services.ringtransport import RingServer, open_ring, serve_ring
from tradeplane_services.sessions import (
    NONCE_BYTES,
    AuthenticationError,
    Credentials,
    Keyring,
    accept_proof,
    identity_bytes,
    identity_text,
    logon_proof,
)
from tradeplane_services.settings import Settings

# Microsecond resolution where trading latencies live (5us-2ms), coarse out to 100ms.
LATENCY_BUCKETS_SECONDS = tuple(
    micros / 1e6
    for micros in (
        *(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 23, 26, 30, 35, 40, 45, 50, 60, 70, 80, 90),
        *(100, 120, 140, 160, 180, 200, 230, 260, 300, 350, 400, 450, 500, 600, 700, 800, 900),
        *(1000, 1250, 1500, 1750, 2000, 3000, 5000, 10_000, 20_000, 50_000, 100_000),
    )
)
LATENCY_BUCKETS_NS = [round(seconds * 1e9) for seconds in LATENCY_BUCKETS_SECONDS]
STATUS_PERCENTILES = (50.0, 99.0, 99.9)
MAX_OUTBOUND_BUFFER = 64 * 1024 * 1024
DEFERRED_FLUSH_SECONDS = 0.001
RUN_MINIMUM = 2  # frames of a batched type that arrive in one read go to `on_run` together from this many
SESSION_SWEEP_SECONDS = 0.25
PEER_LOGON_TIMEOUT_SECONDS = 5.0

log = logging.getLogger("tradeplane")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, revision, message and any `extra` fields."""

    def __init__(self, service: str, revision: str) -> None:
        super().__init__()
        self.service = service
        self.revision = revision

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "service": self.service,
            "revision": self.revision,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


CANCEL_RETRY_SECONDS = 0.5


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel background tasks and wait for each to end, so their cleanup has run before what they use
    is closed. A cancellation is repeated until it takes: in Python 3.11 asyncio.wait_for drops one that
    races the result it waits for, and a task following a log would then never end."""
    for task in tasks:
        if task is None:
            continue
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=CANCEL_RETRY_SECONDS)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def configure_logging(service: str, revision: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, revision))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for structured log fields: log.info("...", extra=fields(order_id=1))."""
    return {"fields": values}


class RequestMetrics(Collector):
    """The series the canary analysis reads, for one service and revision: latency and requests for
    every service, decisions by reason (risk) and orders and fills (execution) for the trading gates.

    A collector of its own rather than prometheus_client's Histogram: latencies go into a compiled
    HdrHistogram in nanoseconds (no lock, no bucket scan, no allocation), a batch of N requests answered
    together is one `record(started, n)` call, and the Prometheus buckets are read from it per scrape.
    """

    def __init__(self, registry: CollectorRegistry, service: str, revision: str) -> None:
        self.labels = {"service": service, "revision": revision}
        self.latency = LatencyHistogram()
        self.ok = 0
        self.errors = 0
        self.refusals: Counter[str] = Counter()  # session refusals by reason name
        self.decisions: Counter[str] = Counter()  # risk decisions by reason name, OK when accepted
        self.orders: int | None = None  # orders routed, counted by the services that route them
        self.fills: int | None = None
        registry.register(self)

    def record(self, started_ns: int, count: int = 1, ok: bool = True) -> None:
        self.latency.record(time.perf_counter_ns() - started_ns, count)
        if ok:
            self.ok += count
        else:
            self.errors += count

    def latency_micros(self) -> dict[str, float]:
        """Percentiles and maximum of the request latencies since the start, in microseconds."""
        return {**dict(self.latency.percentiles_us(STATUS_PERCENTILES)), "max": self.latency.max_ns / 1000}

    def collect(self) -> Iterator[Metric]:
        histogram = HistogramMetricFamily(
            "tradeplane_request_duration_seconds",
            "Time from receiving a request to answering it.",
            labels=list(self.labels),
        )
        counts = self.latency.cumulative_counts(LATENCY_BUCKETS_NS)
        buckets = [(repr(bound), count) for bound, count in zip(LATENCY_BUCKETS_SECONDS, counts, strict=True)]
        buckets.append(("+Inf", self.latency.count))
        histogram.add_metric(list(self.labels.values()), buckets, self.latency.sum_ns / 1e9)
        yield histogram
        requests = CounterMetricFamily(
            "tradeplane_requests_total",
            "Requests handled; outcome=error when the service could not handle one (not business rejects).",
            labels=[*self.labels, "outcome"],
        )
        requests.add_metric([*self.labels.values(), "ok"], self.ok)
        requests.add_metric([*self.labels.values(), "error"], self.errors)
        yield requests
        refusals = CounterMetricFamily(
            "tradeplane_session_refusals_total",
            "Frames and sessions refused for who sent them or how: logon, authorization, timeouts, limits.",
            labels=[*self.labels, "reason"],
        )
        for reason, count in sorted(self.refusals.items()):
            refusals.add_metric([*self.labels.values(), reason], count)
        yield refusals
        decisions = CounterMetricFamily(
            "tradeplane_decisions",
            "Pre-trade risk decisions by reason code: OK when accepted, the reject's reason otherwise.",
            labels=[*self.labels, "reason"],
        )
        for reason, count in sorted(self.decisions.items()):
            decisions.add_metric([*self.labels.values(), reason], count)
        yield decisions
        routed: tuple[tuple[str, int | None, str], ...] = (
            ("tradeplane_orders", self.orders, "Orders routed to the venue."),
            ("tradeplane_fills", self.fills, "Fills the venue reported, each partial fill counted."),
        )
        for name, routed_count, text in routed:
            if routed_count is not None:
                family = CounterMetricFamily(name, text, labels=list(self.labels))
                family.add_metric(list(self.labels.values()), routed_count)
                yield family


def quiet_garbage_collector() -> None:
    """Keep the cyclic collector out of the request path: what exists at startup is frozen out of its
    scans, and collections come every 100k allocations instead of every 700. The services' hot objects
    (orders, bookings, frames) hold no reference cycles, so little is left for it to find anyway."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def spin_for(micros: int) -> None:
    """Busy-wait: sleeping cannot add a few microseconds precisely, spinning can."""
    deadline = time.perf_counter_ns() + micros * 1000
    while time.perf_counter_ns() < deadline:
        pass


class Connection(asyncio.Protocol):
    """One framed TCP connection: decodes frames, dispatches them, batches writes per loop iteration.

    `handlers` are this connection's own: before logon only the handshake, after it what the peer's
    identity may send (authorization costs nothing per message: a message not granted has no handler).
    """

    def __init__(self, owner: ConnectionOwner, name: str) -> None:
        self.owner = owner
        self.name = name
        self.decoder = StreamDecoder()
        self.transport: asyncio.Transport | None = None
        self.handlers: dict[type, Callable[[Connection, Any], None]] = {}
        self.identity: str | None = None  # set once logged on
        self.challenge: Challenge | None = None
        self.opened_ns = time.perf_counter_ns()
        self.partial_since_ns = 0  # when the unfinished frame in the decoder began arriving
        self.closing = False
        self.received_ns = 0
        self.received_sequence = 0
        self.sequence = 0
        self.session: Any = None  # the owner's per-connection state
        self._outbox: list[bytes | bytearray] = []
        self._flush_soon = False  # a flush is queued for the end of this loop iteration
        self._flush_later = False  # a flush is queued DEFERRED_FLUSH_SECONDS from now
        self._loop = asyncio.get_running_loop()
        self.closed = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.decoder.buffered:
            log.warning(
                "connection closed inside a frame",
                extra=fields(peer=self.name, truncated_bytes=self.decoder.buffered),
            )
        self.owner.connection_lost(self)
        self.closed.set()

    def data_received(self, data: bytes) -> None:
        self.received_ns = now = time.perf_counter_ns()
        decoder = self.decoder
        items = decoder.feed(data)
        self._dispatch(items)
        # A frame left unfinished starts the read timeout; one finished in this read restarts it.
        if not decoder.buffered:
            self.partial_since_ns = 0
        elif items or not self.partial_since_ns:
            self.partial_since_ns = now

    def dispatch_one_by_one(self, run: FrameRun) -> None:
        """A run's frames handed over each on its own, as if they had not been batched: for an owner
        that cannot take this run at once (each frame's error answered, or a frame refused, its own way)."""
        self._dispatch(StreamDecoder().feed(run.data))

    def _dispatch(self, items: list[Item]) -> None:
        owner = self.owner
        for item in items:
            try:
                if type(item) is tuple:
                    message, sequence = cast(tuple[Any, int], item)
                    self.received_sequence = sequence
                    # Looked up per frame: a LogonAck changes the handlers of the frames behind it.
                    handler = self.handlers.get(type(message))
                    if handler is None:
                        owner.unexpected(self, message, sequence)
                    else:
                        handler(self, message)
                elif type(item) is FrameRun:
                    owner.on_run(self, item)  # only granted types are batched (see Service.on_logon)
                else:
                    self.reject(item)  # type: ignore[arg-type]
            except Exception:  # a bug must cost one frame, never the session and what is queued behind it
                log.exception("frame handler failed", extra=fields(peer=self.name, identity=self.identity))
                ref_type = (
                    layout_of(type(item[0])).type_id if type(item) is tuple else getattr(item, "type_id", 0)
                )
                self.refuse(
                    Reason.INTERNAL_ERROR, ref_type, self.received_sequence, "the service failed on it"
                )
            if self.closing:  # refused for good: what came behind it is not read
                return

    def refuse(self, reason: Reason, type_id: int, sequence: int, detail: str, close: bool = False) -> None:
        """Refuse a frame or the session for who sent it or how: counted, audited, answered."""
        self.owner.metrics.refusals[reason.name] += 1
        log.warning(
            "session refusal",
            extra=fields(
                audit=True,
                peer=self.name,
                identity=self.identity,
                reason=reason.name,
                type=type_id,
                detail=detail,
            ),
        )
        # The reason travels in its own field: all 48 bytes of text go to the detail.
        self.send(
            SessionReject(sequence, type_id & 0xFF, int(reason), 0, detail.encode("ascii", "replace")[:48])
        )
        if close:
            self.close()

    def reject(self, failure: FrameError) -> None:
        self.owner.metrics.record(self.received_ns, ok=False)
        log.warning(
            "frame refused",
            extra=fields(peer=self.name, reason=failure.error.reason.name, detail=str(failure.error)),
        )
        self.send(reject_for(failure.error, failure.type_id, failure.sequence))
        if failure.fatal:
            self.flush()
            self.close()

    def send(self, message: Any) -> None:
        """Send at the end of this loop iteration, together with everything else queued by then."""
        self.sequence += 1
        self.send_raw(encode(message, self.sequence))

    def send_run(self, frames: np.ndarray[Any, Any]) -> None:
        """Frames of one type built as an array: numbered here, after what was sent before, and queued as
        one write."""
        frames["sequence"] = np.arange(self.sequence + 1, self.sequence + 1 + len(frames))
        self.sequence += len(frames)
        self.send_raw(frames.tobytes())

    def send_frames(self, frames: bytearray) -> None:
        """Whole frames encoded elsewhere (the Rust core): numbered here, after what was sent before, and
        queued as one write."""
        self.sequence += number_frames(frames, self.sequence + 1)
        self.send_raw(frames)

    def send_raw(self, frame: bytes | bytearray) -> None:
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self.flush)
        self._outbox.append(frame)

    def send_later(self, message: Any) -> None:
        """Not latency-critical (a fill for the books, an exposure update): leaves with the next urgent
        write or within DEFERRED_FLUSH_SECONDS, so bursts share a write and a wakeup of the peer."""
        self.sequence += 1
        self._outbox.append(encode(message, self.sequence))
        if not self._flush_soon and not self._flush_later:
            self._flush_later = True
            self._loop.call_later(DEFERRED_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._flush_soon = self._flush_later = False
        if not self._outbox:
            return
        data = b"".join(self._outbox)
        self._outbox.clear()
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > MAX_OUTBOUND_BUFFER:
            log.error("peer does not keep up; closing", extra=fields(peer=self.name))
            self.transport.abort()

    def close(self) -> None:
        self.closing = True
        self.flush()
        if self.transport is not None:
            self.transport.close()


class ConnectionOwner:
    """What a Connection calls back into: a Service, or a PeerLink's service."""

    handlers: dict[type, Callable[[Connection, Any], None]]
    batch_types: dict[int, int] = {}  # noqa: RUF012 - subclasses replace it
    metrics: RequestMetrics

    def connection_made(self, connection: Connection) -> None:
        pass

    def connection_lost(self, connection: Connection) -> None:
        pass

    def on_run(self, connection: Connection, run: FrameRun) -> None:
        raise NotImplementedError(f"{type(self).__name__} declares batch types but handles no runs")

    def unexpected(self, connection: Connection, message: Any, sequence: int) -> None:
        if isinstance(message, Heartbeat):
            return
        if isinstance(message, SessionReject):
            log.warning(
                "peer refused a frame", extra=fields(peer=connection.name, reject=message.text.rstrip(b"\0"))
            )
            return
        error = ProtocolError(
            Reason.UNEXPECTED_MESSAGE, 2, f"{type(message).__name__} is not handled by this service"
        )
        connection.reject(FrameError(error, layout_of(type(message)).type_id, sequence, False))


class PeerLink(ConnectionOwner):
    """A connection to another service, re-established with backoff whenever it drops.

    It owns its connection: only `handlers` given here apply to what the peer sends, so a client session
    can never pass for a peer (a client sending RiskResult gets UNEXPECTED_MESSAGE). It logs on with
    `credentials` and counts as connected only once the peer proved it holds the same key.
    """

    def __init__(
        self,
        name: str,
        address: Address | RingAddress,
        handlers: dict[type, Callable[[Connection, Any], None]],
        metrics: RequestMetrics,
        credentials: Credentials,
        on_up: Callable[[Connection], None] | None = None,
        on_down: Callable[[], None] | None = None,
        source: str | None = None,
        runs: dict[type, Callable[[Connection, FrameRun], None]] | None = None,
    ) -> None:
        self.name = name
        self.credentials = credentials
        # Connect from the address we serve on: peers then see (and answer to) that address.
        self.local_address = (source, 0) if source not in (None, "", "0.0.0.0") else None
        self.address = address
        self.handlers = handlers
        # Frames of these types that arrive together go to their handler here as one FrameRun.
        self.run_handlers = {layout_of(cls).type_id: handler for cls, handler in (runs or {}).items()}
        self.batch_types = dict.fromkeys(self.run_handlers, RUN_MINIMUM)
        self.metrics = metrics
        self.on_up = on_up
        self.on_down = on_down
        self.connection: Connection | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.connected

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._maintain(), name=f"link-{self.name}")

    def connection_made(self, connection: Connection) -> None:
        connection.handlers = {Challenge: self._on_challenge}
        asyncio.get_running_loop().call_later(PEER_LOGON_TIMEOUT_SECONDS, self._logon_expired, connection)

    def _logon_expired(self, connection: Connection) -> None:
        if connection.identity is None and connection.connected:
            log.warning("peer did not complete the logon; reconnecting", extra=fields(peer=self.name))
            connection.close()

    def _on_challenge(self, connection: Connection, challenge: Challenge) -> None:
        try:
            logon, key = self.credentials.logon(challenge)
        except AuthenticationError as error:
            log.error("cannot log on to a peer", extra=fields(peer=self.name, error=str(error)))
            connection.close()
            return

        def on_ack(connection: Connection, ack: LogonAck) -> None:
            try:
                self.credentials.check_ack(key, challenge, logon, ack)
            except AuthenticationError as error:
                log.error("peer failed to authenticate", extra=fields(peer=self.name, error=str(error)))
                connection.close()
                return
            connection.identity = identity_text(ack.service)
            connection.handlers = self.handlers
            connection.decoder.batch_types = self.batch_types
            self.connection = connection
            log.info("peer connected", extra=fields(peer=self.name, address=str(self.address)))
            if self.on_up is not None:
                self.on_up(connection)

        connection.handlers = {LogonAck: on_ack}
        connection.send(logon)

    def connection_lost(self, connection: Connection) -> None:
        if self.connection is not connection:
            return  # never logged on: _maintain retries
        self.connection = None
        log.warning("peer disconnected", extra=fields(peer=self.name))
        if self.on_down is not None:
            self.on_down()

    def on_run(self, connection: Connection, run: FrameRun) -> None:
        self.run_handlers[run.type_id](connection, run)

    def unexpected(self, connection: Connection, message: Any, sequence: int) -> None:
        if isinstance(message, SessionReject) and connection.identity is None:
            log.error(
                "peer refused the logon", extra=fields(peer=self.name, reject=message.text.rstrip(b"\0"))
            )
            return
        super().unexpected(connection, message, sequence)

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.02
        while True:
            try:
                connection = await self._connect(loop)
            except OSError as error:
                log.debug("peer unreachable", extra=fields(peer=self.name, error=str(error)))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            await connection.closed.wait()
            if connection.identity is not None:
                delay = 0.02
            else:  # refused or unanswered logon: back off as for an unreachable peer
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Connection:
        address = self.address
        if isinstance(address, RingAddress):
            _, protocol = await open_ring(lambda: Connection(self, self.name), address.directory)
            return cast(Connection, protocol)
        _, connection = await loop.create_connection(
            lambda: Connection(self, self.name), address.host, address.port, local_addr=self.local_address
        )
        return connection

    def send(self, message: Any) -> bool:
        connection = self.connection
        if connection is None or not connection.connected:
            return False
        connection.send(message)
        return True

    def send_frames(self, frames: bytearray) -> bool:
        connection = self.connection
        if connection is None or not connection.connected:
            return False
        connection.send_frames(frames)
        return True

    def send_later(self, message: Any) -> bool:
        connection = self.connection
        if connection is None or not connection.connected:
            return False
        connection.send_later(message)
        return True

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.connection is not None:
            self.connection.close()


HttpRoute = Callable[[dict[str, list[str]]], tuple[int, str, bytes]]
HttpPost = Callable[[bytes], tuple[int, str, bytes]]
MAX_POST_BYTES = 64 * 1024


SettingsT = TypeVar("SettingsT", bound=Settings)


class Service(ConnectionOwner, Generic[SettingsT]):
    """Base of the bundled services, typed by their settings model (the catalog pairs each component with
    its model, so `self.settings` is the subclass's own); subclasses set `handlers` and override the hooks
    they need."""

    name = "service"

    def __init__(self, environment: Environment, settings: SettingsT) -> None:
        self.environment = environment
        self.settings = settings
        self.registry = CollectorRegistry()
        # process_start_time_seconds among them: a canary analysis counts a young process from zero.
        ProcessCollector(registry=self.registry)
        self.metrics = RequestMetrics(self.registry, self.name, environment.revision)
        self.handlers = {}
        if not environment.keys_dir.is_dir():
            raise ConfigError(
                f"TRADEPLANE_KEYS_DIR={environment.keys_dir}: no such directory; every session logs on with"
                " the keys kept there (services/README.md, Sessions)"
            )
        self.keyring = Keyring(environment.keys_dir)
        self.credentials = Credentials(self.name, self.keyring)
        self.identity = identity_bytes(self.name)
        self._grants: dict[str, dict[type, Callable[[Connection, Any], None]]] = {}
        self.connections: set[Connection] = set()  # every open connection, logged on or not
        self.per_peer: Counter[str] = Counter()
        self.sessions: set[Connection] = set()  # logged on
        self.draining = False
        self.routes: dict[str, HttpRoute] = {}
        self.post_routes: dict[str, HttpPost] = {}
        self.splits: dict[str, Any] = {}  # peer -> its AccountSplit (split.py), for callers of canaries
        self.links: list[PeerLink] = []
        self.wire_server: asyncio.AbstractServer | None = None
        self.ring_server: RingServer | None = None  # a co-located caller's rings (TRADEPLANE_RING_DIR)

    # --- hooks ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open files, start feeds; called before the wire port opens."""

    def ready(self) -> bool:
        """Whether the service can do its job (peers connected, state replayed)."""
        return True

    def reconfigure(self, settings: SettingsT) -> None:
        self.settings = settings

    async def drain(self) -> None:
        """Finish in-flight work after the listener closed; bounded by drainTimeoutSeconds."""

    async def stop(self) -> None:
        """Release resources after the drain."""

    def status(self) -> dict[str, Any]:
        """Extra fields for GET /status."""
        return {}

    # --- shared behaviour -------------------------------------------------------------------------

    def link(
        self,
        peer: str,
        handlers: dict[type, Callable[[Connection, Any], None]],
        on_up: Callable[[Connection], None] | None = None,
        on_down: Callable[[], None] | None = None,
        runs: dict[type, Callable[[Connection, FrameRun], None]] | None = None,
    ) -> PeerLink:
        """A link to a peer named by TRADEPLANE_<PEER>_ADDR; started with the service."""
        address = self.environment.peer(peer)
        if address is None:
            variable = f"TRADEPLANE_{peer.upper().replace('-', '_')}_ADDR"
            raise ConfigError(f"{self.name} needs {variable}=host:port")
        link = PeerLink(
            peer,
            address,
            handlers,
            self.metrics,
            self.credentials,
            on_up,
            on_down,
            self.environment.bind,
            runs,
        )
        self.links.append(link)
        return link

    def inject_latency(self, requests: int = 1) -> None:
        micros = self.settings.latencyInjectionMicros
        if micros:
            spin_for(micros * requests)

    def accept(self) -> Connection:
        return Connection(self, "client")

    def connection_made(self, connection: Connection) -> None:
        """A new connection gets a challenge and LOGON_REQUIRED for anything but the Logon answering it."""
        peer = connection.transport.get_extra_info("peername") if connection.transport else None
        connection.name = host = str(peer[0]) if peer else "unknown"
        self.connections.add(connection)
        self.per_peer[host] += 1
        if self.per_peer[host] > self.settings.maxConnectionsPerPeer:
            limit = self.settings.maxConnectionsPerPeer
            connection.refuse(Reason.TOO_MANY_CONNECTIONS, 0, 0, f"{host} has {limit} open", close=True)
            return
        connection.handlers = {Logon: self.on_logon}
        connection.challenge = Challenge(secrets.token_bytes(NONCE_BYTES), self.identity)
        connection.send(connection.challenge)

    def on_logon(self, connection: Connection, logon: Logon) -> None:
        identity = identity_text(logon.identity)
        type_id = layout_of(Logon).type_id
        sequence = connection.received_sequence
        grants = CALLERS.get(self.name, {})
        if identity not in grants:
            detail = f"{identity} may not log on to {self.name}"
            connection.refuse(Reason.NOT_AUTHORIZED, type_id, sequence, detail, close=True)
            return
        challenge = connection.challenge
        assert challenge is not None
        for key in self.keyring.keys(identity):
            if hmac.compare_digest(logon.proof, logon_proof(key, challenge, logon.identity, logon.nonce)):
                break
        else:
            detail = f"{identity}: no key proves this logon"
            connection.refuse(Reason.AUTHENTICATION_FAILED, type_id, sequence, detail, close=True)
            return
        connection.identity = identity
        connection.handlers = self._granted(identity)
        if all(LAYOUTS[type_id].cls in connection.handlers for type_id in self.batch_types):
            connection.decoder.batch_types = self.batch_types
        connection.send(LogonAck(self.identity, accept_proof(key, challenge, logon)))
        self.sessions.add(connection)
        log.info("session opened", extra=fields(peer=connection.name, identity=identity))
        self.logged_on(connection)

    def _granted(self, identity: str) -> dict[type, Callable[[Connection, Any], None]]:
        """The handlers of what `identity` may send here (built once per identity)."""
        granted = self._grants.get(identity)
        if granted is None:
            names = CALLERS[self.name][identity]
            granted = {cls: handler for cls, handler in self.handlers.items() if cls.__name__ in names}
            self._grants[identity] = granted
        return granted

    def unexpected(self, connection: Connection, message: Any, sequence: int) -> None:
        type_id = layout_of(type(message)).type_id
        if connection.identity is None:
            detail = f"{type(message).__name__} before Logon"
            connection.refuse(Reason.LOGON_REQUIRED, type_id, sequence, detail, close=True)
        elif type(message) in self.handlers:
            detail = f"{connection.identity} may not send {type(message).__name__} to {self.name}"
            connection.refuse(Reason.NOT_AUTHORIZED, type_id, sequence, detail)
        else:
            super().unexpected(connection, message, sequence)

    def connection_lost(self, connection: Connection) -> None:
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.per_peer[connection.name] -= 1
        if not self.per_peer[connection.name]:
            del self.per_peer[connection.name]
        if connection in self.sessions:
            self.sessions.discard(connection)
            self.session_lost(connection)

    async def supervise_sessions(self) -> None:
        """Close connections that never log on (idle before logon) or stall inside a frame (slow loris)."""
        while True:
            await asyncio.sleep(SESSION_SWEEP_SECONDS)
            now = time.perf_counter_ns()
            settings = self.settings
            for connection in list(self.connections):
                if connection.identity is None and (
                    now - connection.opened_ns > settings.logonTimeoutMillis * 1_000_000
                ):
                    detail = f"no Logon within {settings.logonTimeoutMillis} ms"
                    connection.refuse(Reason.LOGON_TIMEOUT, 0, 0, detail, close=True)
                elif connection.partial_since_ns and (
                    now - connection.partial_since_ns > settings.readTimeoutMillis * 1_000_000
                ):
                    detail = (
                        f"{connection.decoder.buffered} bytes of a frame for {settings.readTimeoutMillis} ms"
                    )
                    connection.refuse(Reason.READ_TIMEOUT, 0, 0, detail, close=True)

    def logged_on(self, connection: Connection) -> None:
        """A session logged on: it may now be sent anything."""

    def session_lost(self, connection: Connection) -> None:
        """A logged-on session went away (cancel-on-disconnect lives here)."""

    def status_document(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "revision": self.environment.revision,
            "ready": self.ready() and not self.draining,
            "draining": self.draining,
            "sessions": len(self.sessions),
            "peers": {link.name: link.connected for link in self.links},
            "requests": self.metrics.latency.count,
            "latencyMicros": self.metrics.latency_micros(),
            "settings": self.settings.model_dump(mode="json"),
            **self.status(),
        }


class HttpEndpoint:
    """/metrics, /healthz, /readyz, /status and the service's own read routes, over plain HTTP/1.1."""

    def __init__(self, service: Service[Any]) -> None:
        self.service = service

    def respond(self, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        service = self.service
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(service.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if service.draining:
                return 503, "text/plain", b"draining\n"
            # Ready means answering: the wire port opens after start() returns, a moment after this server.
            if service.wire_server is None or not service.ready():
                return 503, "text/plain", b"not ready\n"
            return 200, "text/plain", b"ready\n"
        if path == "/status":
            return 200, "application/json", json.dumps(service.status_document()).encode()
        route = service.routes.get(path)
        if route is not None:
            return route(query)
        return 404, "text/plain", f"no route {path}\n".encode()

    def post(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        route = self.service.post_routes.get(path)
        if route is None:
            return 405, "text/plain", f"no POST to {path}\n".encode()
        return route(body)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            length = 0
            while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    length = int(value)
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "POST":
                if length > MAX_POST_BYTES:
                    status, content_type, body = 400, "text/plain", b"body too large\n"
                else:
                    payload = await asyncio.wait_for(reader.readexactly(length), 10)
                    status, content_type, body = self.post(urlsplit(parts[1]).path, payload)
            elif len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, content_type, body = 405, "text/plain", b"only GET, and POST where a route takes it\n"
            else:
                url = urlsplit(parts[1])
                status, content_type, body = self.respond(url.path, parse_qs(url.query))
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if parts[:1] != ["HEAD"] else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class ConfigWatcher:
    """Reloads the config file when it changes (ConfigMap updates swap a symlink) or on SIGHUP."""

    def __init__(self, service: Service[Any]) -> None:
        self.service = service
        self.path = service.environment.config_path
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def reload(self) -> None:
        self._stamp = self._current_stamp()
        try:
            settings = load_settings(self.service.name, self.path)
        except ConfigError as error:
            log.error("config refused; keeping the previous settings", extra=fields(error=str(error)))
            return
        if settings != self.service.settings:
            self.service.reconfigure(settings)
            logging.getLogger().setLevel(settings.logLevel)
            log.info("config reloaded", extra=fields(path=str(self.path)))

    async def watch(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._current_stamp() != self._stamp:
                self.reload()


async def serve_service(service: Service[Any], started: Callable[[], None] | None = None) -> None:
    environment = service.environment
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = ConfigWatcher(service)
    loop.add_signal_handler(signal.SIGHUP, watcher.reload)

    http = HttpEndpoint(service)
    http_server = await asyncio.start_server(http.handle, environment.bind, environment.metrics_port)
    if environment.ring_dir is not None:
        # Before start(): a co-located caller that finds this service's address in a lease (risk's
        # partitions) must already find the rings that reach it.
        served = str(environment.advertised_address())
        service.ring_server = serve_ring(service.accept, environment.ring_dir, served)
    await service.start()
    for link in service.links:
        link.start()
    service.wire_server = await loop.create_server(
        service.accept, environment.bind, environment.port, reuse_address=True, backlog=1024
    )
    watch_task = loop.create_task(watcher.watch())
    sessions_task = loop.create_task(service.supervise_sessions())
    quiet_garbage_collector()
    log.info(
        "listening",
        extra=fields(
            wire=f"{environment.bind}:{environment.port}",
            rings=str(environment.ring_dir) if environment.ring_dir else None,
            metrics=environment.metrics_port,
        ),
    )
    if started is not None:
        started()
    await stop.wait()

    log.info("SIGTERM: draining")
    service.draining = True
    service.wire_server.close()
    if service.ring_server is not None:
        service.ring_server.stop_accepting()
    try:
        await asyncio.wait_for(service.drain(), service.settings.drainTimeoutSeconds)
    except TimeoutError:
        log.error("drain timed out; closing with work in flight")
    for connection in list(service.connections):
        connection.close()
    if service.ring_server is not None:
        service.ring_server.close()
    watch_task.cancel()
    sessions_task.cancel()
    for link in service.links:
        await link.stop()
    await service.stop()
    http_server.close()
    log.info("stopped")


def run(service_factory: Callable[[Environment, Any], Service[Any]], environment: Environment) -> int:
    """Load settings, build the service and serve it until SIGTERM; the process exit code."""
    component = environment.component
    try:
        settings = load_settings(component, environment.config_path)
    except ConfigError as error:
        print(f"tradeplane-svc {component}: {error}", file=sys.stderr)
        return 2
    configure_logging(component, environment.revision, settings.logLevel)
    try:
        service = service_factory(environment, settings)
    except (ConfigError, ValueError) as error:
        print(f"tradeplane-svc {component}: {error}", file=sys.stderr)
        return 2
    try:
        uvloop.run(serve_service(service))
    except OSError as error:
        log.error("cannot start", extra=fields(error=str(error)))
        return 1
    return 0


def run_for_life(coroutine: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
    """A task that must run as long as the service: should it end otherwise than canceled, the process
    stops (SIGTERM) rather than serve without it, and its replacement starts clean."""

    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            log.error("a task the service needs stopped", extra=fields(task=what), exc_info=task.exception())
            os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.get_running_loop().create_task(coroutine, name=what)
    task.add_done_callback(ended)
    return task


async def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True
