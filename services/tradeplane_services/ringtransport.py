"""Sessions over a pair of shared-memory rings, for services in one pod (or on one node): no syscall per
message, the same framed bytes and the same `Connection` as over TCP.

A ring directory (`shm:/dir` in a peer's address, `TRADEPLANE_RING_DIR` on the serving side) holds:

    to-server.ring, to-client.ring   the two single-producer single-consumer rings (core/src/ring.rs),
                                     each with its doorbell FIFO beside it (`.bell`)
    serves                           the server's own TCP address (risk's partition leases name it)
    server.lock, client.lock         flock()ed by the serving and the calling process while they live

One client at a time: a ring has exactly one producer and one consumer. The server creates both rings
(fresh files: a restarted server never shares memory with its predecessor's peer). A client takes the
client lock, skips what a previous session left unread, and opens a session with an OPEN record
carrying a random session number; the server answers ACCEPT with that number before the session's
first frame, so nothing of an earlier session reaches the new one. Either side that stops sends CLOSE;
either side that dies is noticed by the other within LIVENESS_SECONDS, as its lock falls free.

The API is asyncio's: `serve_ring(protocol_factory, directory)` as `loop.create_server`,
`open_ring(protocol_factory, directory)` as `loop.create_connection`; the protocol gets
`connection_made(transport)`, `data_received(bytes)`, `connection_lost(None)` and writes with
`transport.write(bytes)`. A full ring is backpressure: the writer keeps what did not fit and retries,
and counts it in `get_write_buffer_size()` (the Connection closes a peer that stops reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import struct
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tradeplane_services._wire import Ring
from tradeplane_services.config import RING_BYTES

TO_SERVER = "to-server.ring"
TO_CLIENT = "to-client.ring"
SERVER_LOCK = "server.lock"
SERVES = "serves"  # the TCP address of the same service: a caller that finds it elsewhere uses the rings
CLIENT_LOCK = "client.lock"
LIVENESS_SECONDS = 0.25
ACCEPT_TIMEOUT_SECONDS = 2.0
RETRY_FIRST_SECONDS = 0.0001  # a full ring: retry soon, then back off to RETRY_MOST_SECONDS
RETRY_MOST_SECONDS = 0.005

DATA, OPEN, ACCEPT, CLOSE = 0, 1, 2, 3
SESSION = struct.Struct("<Q")


def _lock(path: Path) -> int | None:
    """An exclusive flock on `path` (created if missing), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _held(path: Path) -> bool:
    """Whether a live process holds the lock at `path`."""
    try:
        fd = _lock(path)
    except FileNotFoundError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


class RingTransport(asyncio.Transport):
    """One end of a ring session: writes go to `outbound`, what `inbound` brings goes to the protocol."""

    def __init__(
        self,
        inbound: Ring,
        outbound: Ring,
        protocol: asyncio.Protocol,
        peer: str,
        on_closed: Callable[[RingTransport], None],
    ) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self.inbound = inbound
        self.outbound = outbound
        self._protocol = protocol
        self._peer = peer
        self._on_closed = on_closed
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = RETRY_FIRST_SECONDS
        self._closing = False
        self._started = False

    # --- asyncio.Transport ------------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self._peer, 0)}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        largest = self.outbound.largest
        data = bytes(data)
        for start in range(0, len(data), largest):
            chunk = data[start : start + largest]
            if self._backlog or not self.outbound.write(chunk):
                self._backlog.append(chunk)
                self._backlog_bytes += len(chunk)
        if self._backlog and self._retry is None:
            self._retry = self._loop.call_later(self._retry_delay, self._write_backlog)

    def get_write_buffer_size(self) -> int:
        return self._backlog_bytes

    def close(self) -> None:
        self._finish(send_close=True)

    def abort(self) -> None:
        self._finish(send_close=True)

    # --- the session ------------------------------------------------------------------------------

    def _write_backlog(self) -> None:
        self._retry = None
        while self._backlog and self.outbound.write(self._backlog[0]):
            self._backlog_bytes -= len(self._backlog.popleft())
        if self._backlog:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MOST_SECONDS)
            self._retry = self._loop.call_later(self._retry_delay, self._write_backlog)
        else:
            self._retry_delay = RETRY_FIRST_SECONDS

    def start(self) -> None:
        self._started = True
        self._protocol.connection_made(self)

    def deliver(self, data: bytes) -> None:
        if self._started and not self._closing:
            self._protocol.data_received(data)

    def _finish(self, send_close: bool) -> None:
        if self._closing:
            return
        self._closing = True
        if self._retry is not None:
            self._retry.cancel()
        if send_close:
            with contextlib.suppress(Exception):  # a full ring: the peer learns it from the lock instead
                self.outbound.write(b"", CLOSE)
        self._on_closed(self)
        if self._started:
            self._loop.call_soon(self._protocol.connection_lost, None)

    def lost(self) -> None:
        """The other side closed or died."""
        self._finish(send_close=False)


class _Reader:
    """Reads a ring on the event loop: woken by its doorbell, drains it, parks it again."""

    def __init__(self, ring: Ring, on_record: Callable[[int, bytes], None]) -> None:
        self.ring = ring
        self.on_record = on_record
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(ring.bell_fileno, self._ready)
        self._ready()

    def _ready(self) -> None:
        ring = self.ring
        ring.clear_bell()
        while True:
            for kind, payload in ring.drain():
                self.on_record(kind, payload)
            if ring.park():
                return

    def stop(self) -> None:
        self._loop.remove_reader(self.ring.bell_fileno)


class RingServer:
    """Serves one ring directory: one session at a time, each through a protocol from the factory."""

    def __init__(
        self, protocol_factory: Callable[[], asyncio.Protocol], directory: Path, capacity: int, serves: str
    ) -> None:
        self.directory = directory
        self._factory = protocol_factory
        directory.mkdir(parents=True, exist_ok=True)
        lock = _lock(directory / SERVER_LOCK)
        if lock is None:
            raise OSError(f"shm:{directory}: another process serves these rings")
        self._lock_fd = lock
        self._inbound = Ring.create(directory / TO_SERVER, capacity)
        self._outbound = Ring.create(directory / TO_CLIENT, capacity)
        staging = directory / f"{SERVES}.new"
        staging.write_text(serves)
        staging.replace(directory / SERVES)
        self._session: RingTransport | None = None
        self._accepting = True
        # last: the reader drains at once, and a client may have opened a session already
        self._reader = _Reader(self._inbound, self._on_record)
        self._watch = asyncio.get_running_loop().create_task(self._watch_client())

    def _on_record(self, kind: int, payload: bytes) -> None:
        if kind == DATA:
            if self._session is not None:
                self._session.deliver(payload)
        elif kind == OPEN and self._accepting:
            if self._session is not None:
                self._session.lost()
            self._outbound.write(payload, ACCEPT)
            protocol = self._factory()
            self._session = RingTransport(
                self._inbound, self._outbound, protocol, f"shm:{self.directory}", self._closed
            )
            self._session.start()
        elif kind == CLOSE and self._session is not None:
            self._session.lost()

    def _closed(self, transport: RingTransport) -> None:
        if self._session is transport:
            self._session = None

    async def _watch_client(self) -> None:
        while True:
            await asyncio.sleep(LIVENESS_SECONDS)
            if self._session is not None and not _held(self.directory / CLIENT_LOCK):
                self._session.lost()

    def stop_accepting(self) -> None:
        """Draining: the session in progress goes on, a new one is not answered."""
        self._accepting = False

    def close(self) -> None:
        self._watch.cancel()
        if self._session is not None:
            self._session.close()
        self._reader.stop()
        os.close(self._lock_fd)


def serve_ring(
    protocol_factory: Callable[[], asyncio.Protocol],
    directory: Path,
    serves: str,
    capacity: int = RING_BYTES,
) -> RingServer:
    """Create the rings in `directory` and serve sessions on them (as loop.create_server); `serves` is
    the same service's TCP address."""
    return RingServer(protocol_factory, directory, capacity, serves)


def ring_serves(directory: Path) -> str | None:
    """The TCP address of the service serving the rings in `directory`, None before it started."""
    try:
        return (directory / SERVES).read_text()
    except FileNotFoundError:
        return None


async def open_ring(
    protocol_factory: Callable[[], asyncio.Protocol], directory: Path
) -> tuple[RingTransport, asyncio.Protocol]:
    """A session over the rings a server created in `directory` (as loop.create_connection); OSError when
    no server is there or another client holds them."""
    if not _held(directory / SERVER_LOCK):
        raise ConnectionRefusedError(f"shm:{directory}: no server holds these rings")
    lock = _lock(directory / CLIENT_LOCK)
    if lock is None:
        raise ConnectionRefusedError(f"shm:{directory}: another client holds these rings")
    try:
        inbound, outbound = Ring.open(directory / TO_CLIENT), Ring.open(directory / TO_SERVER)
    except BaseException:
        os.close(lock)
        raise
    session = SESSION.pack(secrets.randbits(64))
    accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    protocol = protocol_factory()
    transport: RingTransport | None = None

    def on_record(kind: int, payload: bytes) -> None:
        if transport is None:
            return
        if kind == ACCEPT and payload == session and not accepted.done():
            accepted.set_result(None)
            transport.start()
        elif kind == DATA:
            transport.deliver(payload)  # dropped until this session's ACCEPT
        elif kind == CLOSE and accepted.done():
            transport.lost()

    def closed(_: RingTransport) -> None:
        reader.stop()
        watch.cancel()
        os.close(lock)

    async def watch_server() -> None:
        file_id = inbound.file_id
        while True:
            await asyncio.sleep(LIVENESS_SECONDS)
            path = directory / TO_CLIENT
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if (stat.st_dev, stat.st_ino) == file_id and _held(directory / SERVER_LOCK):
                    continue
            assert transport is not None
            transport.lost()
            if not accepted.done():
                accepted.set_exception(ConnectionResetError(f"shm:{directory}: the server went away"))

    while inbound.read() is not None:  # what an earlier session left unread is not ours
        pass
    transport = RingTransport(inbound, outbound, protocol, f"shm:{directory}", closed)
    reader = _Reader(inbound, on_record)
    watch = asyncio.get_running_loop().create_task(watch_server())
    if not outbound.write(session, OPEN):
        transport.lost()
        raise ConnectionRefusedError(f"shm:{directory}: the server's ring is full")
    try:
        await asyncio.wait_for(asyncio.shield(accepted), ACCEPT_TIMEOUT_SECONDS)
    except TimeoutError:
        transport.lost()
        raise ConnectionRefusedError(f"shm:{directory}: no answer to the session's opening") from None
    return transport, protocol
