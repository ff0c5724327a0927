"""The shared-memory rings between co-located services: the ring itself across real processes (a reader
killed with SIGKILL and started again, a writer held back by a full ring), and order -> risk sessions over
rings in a real stack, through a risk restart."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support import wait_for
from tradeplane_services import ringtransport
from tradeplane_services._wire import Ring, RingError
from tradeplane_services.client import OrderSession
from tradeplane_services.config import ConfigError, RingAddress, parse_peer_address, read_environment
from tradeplane_services.protocol import ExecType, OrderStatus, Reason, Side, price_units
from tradeplane_services.stack import Stack

StackFactory = Callable[..., Stack]
RECORD = struct.Struct("<QQ")  # sequence number, and a checksum of it: a torn or overwritten record shows
PAD = 40


def record(sequence: int) -> bytes:
    return RECORD.pack(sequence, sequence * 0x9E3779B97F4A7C15 % (1 << 64)) + bytes([sequence % 251]) * PAD


def sequence_of(payload: bytes) -> int:
    sequence, check = RECORD.unpack_from(payload)
    assert check == sequence * 0x9E3779B97F4A7C15 % (1 << 64), f"record {sequence} is damaged"
    assert payload[RECORD.size :] == bytes([sequence % 251]) * PAD, f"record {sequence} is damaged"
    return sequence


PRODUCER = """
import struct, sys
from tradeplane_services._wire import Ring
ring = Ring.open(sys.argv[1])
count, full = int(sys.argv[2]), 0
for sequence in range(count):
    check = sequence * 0x9E3779B97F4A7C15 % (1 << 64)
    payload = struct.pack("<QQ", sequence, check) + bytes([sequence % 251]) * 40
    if not ring.write(payload):
        full += 1  # backpressure: nothing was written; wait for room
        assert ring.write_waiting(payload, 60.0)
print(full, flush=True)
"""

CONSUMER = """
import sys, time
from tradeplane_services._wire import Ring
ring = Ring.open(sys.argv[1])
last, pause = int(sys.argv[2]), float(sys.argv[4])
with open(sys.argv[3], "ab", buffering=0) as seen:
    while True:
        record = ring.read_waiting(30.0)
        assert record is not None, "nothing to read"
        seen.write(record[1][:16])
        if int.from_bytes(record[1][:8], "little") == last:
            break
        if pause:
            time.sleep(pause)
"""


def run(script: str, *arguments: str | Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, arguments)], stdout=subprocess.PIPE
    )


def read_seen(path: Path) -> list[int]:
    data = path.read_bytes() if path.exists() else b""
    return [RECORD.unpack_from(data, at)[0] for at in range(0, len(data) - len(data) % 16, 16)]


def test_a_reader_killed_mid_stream_and_started_again_finds_the_ring_whole(tmp_path: Path) -> None:
    path = tmp_path / "orders.ring"
    Ring.create(path, 4096)  # 73 records of 64 bytes: the writer soon waits for the reader
    total = 20_000
    producer = run(PRODUCER, path, total)
    first = run(CONSUMER, path, total - 1, tmp_path / "first", 0.0002)  # slow: killed long before the end
    wait_for(lambda: len(read_seen(tmp_path / "first")) > 2000, timeout=30, what="the first reader going")
    first.send_signal(signal.SIGKILL)
    first.wait()
    seen_first = read_seen(tmp_path / "first")
    ring = Ring.open(path)
    time.sleep(0.2)  # the writer, facing a full ring with nobody reading, must wait, not overwrite
    assert producer.poll() is None
    assert ring.pending <= ring.capacity

    second = run(CONSUMER, path, total - 1, tmp_path / "second", 0)
    assert second.wait(60) == 0
    assert producer.wait(60) == 0
    waits = int((producer.stdout.read() if producer.stdout else b"0").strip())
    assert waits > 0, "the writer never found the ring full"
    seen_second = read_seen(tmp_path / "second")
    # Every record came out whole and in order; the kill can cost at most the one record the first reader
    # had taken from the ring and not yet written down.
    assert seen_first == list(range(len(seen_first)))
    resumed = seen_second[0]
    assert resumed in (len(seen_first), len(seen_first) + 1)
    assert seen_second == list(range(resumed, total))
    assert ring.read() is None


def test_a_writer_facing_a_full_ring_is_refused_and_overwrites_nothing(tmp_path: Path) -> None:
    path = tmp_path / "full.ring"
    Ring.create(path, 4096)
    producer = run(PRODUCER, path, 200)
    time.sleep(0.5)
    assert producer.poll() is None, "the writer went on with nobody reading"
    ring = Ring.open(path)
    written = ring.pending // 64
    assert 0 < written < 200
    assert ring.write(b"x" * 2040) is False  # no room: refused whole
    assert [sequence_of(ring.read()[1]) for _ in range(written)] == list(range(written))  # type: ignore[index]
    remaining = []
    while len(remaining) < 200 - written and (item := ring.read_waiting(10.0)) is not None:
        remaining.append(sequence_of(item[1]))
    assert remaining == list(range(written, 200))
    assert producer.wait(30) == 0


def test_a_file_that_is_no_ring_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "other.ring"
    Ring.create(path, 4096)
    data = bytearray(path.read_bytes())
    data[0:8] = b"NOTARING"
    path.write_bytes(bytes(data))
    with pytest.raises(RingError, match=r"^ring magic: "):
        Ring.open(path)
    with pytest.raises(RingError, match=r"^ring capacity: 6000 is not a power of two"):
        Ring.create(tmp_path / "odd.ring", 6000)
    with pytest.raises(OSError, match=r"missing\.ring"):
        Ring.open(tmp_path / "missing.ring")


def test_a_session_opened_while_the_server_starts_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted server creates its rings; a waiting client can write its OPEN before the server's reader
    has started, and the reader's first drain must find a server ready to accept it."""
    session = b"\x07" * 8
    create = Ring.create

    def create_with_an_open_waiting(path: Path, capacity: int) -> Ring:
        ring = create(path, capacity)
        if path.name == ringtransport.TO_SERVER:
            assert ring.write(session, ringtransport.OPEN)
        return ring

    monkeypatch.setattr(Ring, "create", staticmethod(create_with_an_open_waiting))

    async def serve_once() -> tuple[int, bytes] | None:
        server = ringtransport.serve_ring(asyncio.Protocol, tmp_path, "127.0.0.1:1")
        try:
            return Ring.open(tmp_path / ringtransport.TO_CLIENT).read()
        finally:
            server.close()

    assert asyncio.run(serve_once()) == (ringtransport.ACCEPT, session)


def test_peer_addresses_take_shm_directories_except_for_market_data() -> None:
    assert parse_peer_address("shm:/dev/hugepages/risk", "V") == RingAddress(Path("/dev/hugepages/risk"))
    with pytest.raises(ConfigError, match="TRADEPLANE_RISK_ADDR='shm:risk': expected shm:/absolute"):
        read_environment("order", None, {"TRADEPLANE_RISK_ADDR": "shm:risk"})
    with pytest.raises(ConfigError, match="TRADEPLANE_MARKET_DATA_ADDR='shm:/x': expected host:port"):
        read_environment("risk", None, {"TRADEPLANE_MARKET_DATA_ADDR": "shm:/x"})
    with pytest.raises(ConfigError, match="TRADEPLANE_RING_DIR='rings': expected an absolute"):
        read_environment("risk", None, {"TRADEPLANE_RING_DIR": "rings"})


def test_orders_pass_risk_over_rings_and_again_after_risk_is_killed(make_stack: StackFactory) -> None:
    stack = make_stack(components=("execution", "market-data", "risk", "order"), co_located=("risk",))
    assert os.path.exists(stack.ring_dir("risk") / "to-server.ring")
    price = price_units(190)

    def trade(account: int) -> bool:
        """A buy and a sell that cross; False while risk takes its partitions over (after a restart)."""
        with OrderSession(stack.address("order")) as buyer, OrderSession(stack.address("order")) as seller:
            buy = buyer.report_for(buyer.new_order(Side.BUY, "AAPL", 100, price, account=account))
            if buy.reason == Reason.PARTITION_TAKEOVER:
                return False
            assert buy.order_status == OrderStatus.NEW
            sell = seller.new_order(Side.SELL, "AAPL", 100, price, account=account + 1)
            assert seller.report_for(sell, ExecType.TRADE).order_status == OrderStatus.FILLED
        return True

    assert trade(21)
    assert ring_only(stack.status("order")["peers"])
    stack.kill("risk")
    stack.start_one("risk")
    stack.wait_ready(components=("risk", "order"))
    wait_for(lambda: stack.status("order")["peers"]["risk"] is True, timeout=10, what="order on risk's rings")
    accounts = iter(range(31, 1000, 2))
    wait_for(lambda: trade(next(accounts)), timeout=20, what="orders through the restarted risk")
    assert ring_only(stack.status("order")["peers"])


def ring_only(peers: dict[str, bool]) -> bool:
    """Order reaches risk through the rings alone: no TCP session to the co-located partition owner."""
    return peers["risk"] and not any(name.startswith("risk ") for name in peers)
