"""The event log on a real nats-server: appends stored once, reads, snapshots, and faults mid-stream.

The fault tests run the whole stack and kill -9 a part of it while two order sessions trade; afterwards
every fill a client was told of is in positions exactly once, whatever died.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from support import wait_for
from tradeplane_services.catalog import DIGESTS_ROUTE
from tradeplane_services.client import OrderSession, positions
from tradeplane_services.eventlog import STREAM, Append, EventLog, partition_of, subject, subject_filter
from tradeplane_services.natsserver import NatsServers
from tradeplane_services.protocol import (
    ExecType,
    ExecutionReport,
    Fill,
    ProtocolError,
    Reason,
    Side,
    encode,
    price_units,
    symbol_bytes,
)
from tradeplane_services.stack import Stack

AAPL = symbol_bytes("AAPL")
StackFactory = Callable[..., Stack]


def fill(sequence: int, account: int = 1, quantity: int = 5) -> Fill:
    return Fill(7, sequence, account, AAPL, int(Side.BUY), quantity, price_units(190), sequence, 0)


def with_log(servers: NatsServers, body: Callable[[EventLog], Any]) -> Any:
    async def run() -> Any:
        log = EventLog(servers.url.split(","))
        await log.open()
        try:
            return await body(log)
        finally:
            await log.close()

    return asyncio.run(run())


def test_an_event_appended_twice_is_stored_once_and_read_back_by_partition(nats_server: NatsServers) -> None:
    async def body(log: EventLog) -> tuple[list[int], list[int], list[Any], list[int]]:
        one, two = Append("fill", 1, [fill(1, 1), fill(2, 17)], "f-1"), Append("fill", 2, [fill(3, 2)], "f-3")
        first = await log.append([one, two])
        again = await log.append([one])
        everything = [event async for event in log.read(subject_filter("fill"))]
        partition_two = [event.sequence async for event in log.read(subject_filter("fill", 2))]
        return first, again, everything, partition_two

    first, again, everything, partition_two = with_log(nats_server, body)
    assert first == [1, 2] and again == [1], "the retry got the original event's sequence"
    assert [event.sequence for event in everything] == [1, 2]
    assert [m.fill_sequence for m in everything[0].messages] == [1, 2]
    assert everything[0].subject == subject("fill", 1)
    assert partition_two == [2]


def test_reading_stops_at_the_sequence_asked_for(nats_server: NatsServers) -> None:
    async def body(log: EventLog) -> list[int]:
        for n in range(1, 6):
            await log.append([Append("fill", 0, [fill(n)], f"f-{n}")])
        return [event.sequence async for event in log.read(subject_filter("fill"), start=2, stop=4)]

    assert with_log(nats_server, body) == [2, 3, 4]


def test_a_damaged_event_is_refused_naming_the_event_and_the_byte(nats_server: NatsServers) -> None:
    async def body(log: EventLog) -> None:
        assert log.js is not None
        two = encode(fill(1)) + encode(fill(2))
        await log.js.publish(subject("fill", 0), two[:-3])  # the second frame cut short
        async for _ in log.read(subject_filter("fill")):
            pass

    with pytest.raises(ProtocolError, match=r"at byte \d+: event 1 on tradeplane\.events\.0\.fill"):
        with_log(nats_server, body)


def test_a_follower_reads_every_event_once_in_order_across_its_server_killed_and_restarted(
    nats_server: NatsServers,
) -> None:
    """The follower's consumer dies with the server (kill -9); the client recreates it after the event
    it delivered last, so nothing is skipped and nothing comes twice."""

    async def body(log: EventLog) -> list[int]:
        seen: list[int] = []

        async def follow() -> None:
            async for event in log.read(subject_filter("fill", 3), 1, follow=True):
                seen.extend(message.fill_sequence for message in event.messages)

        async def until_seen(count: int) -> None:
            deadline = time.monotonic() + 20
            while len(seen) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

        async def append(numbers: range) -> None:
            for n in numbers:  # odd ones on the followed partition, even ones beside it
                await log.append([Append("fill", 3 if n % 2 else 4, [fill(n)], f"f-{n}")])

        follower = asyncio.create_task(follow())
        await append(range(1, 21))
        await until_seen(10)
        await asyncio.to_thread(nats_server.kill, 0)
        await asyncio.to_thread(nats_server.start_one, 0)
        await asyncio.to_thread(nats_server.wait_ready)
        await append(range(21, 41))
        await until_seen(20)
        await asyncio.sleep(1.5)  # two heartbeats: a redelivery would have come by now
        follower.cancel()
        return seen

    assert with_log(nats_server, body) == list(range(1, 41, 2))


def test_a_snapshot_is_replaced_only_by_a_later_one(nats_server: NatsServers) -> None:
    async def body(log: EventLog) -> tuple[bool, bool, bool, Any]:
        one, other = await log.snapshots(), await log.snapshots()  # two replicas
        stored = await one.save("position", {"sequence": 10})
        later = await other.save("position", {"sequence": 12})
        stale = await one.save("position", {"sequence": 11})
        return stored, later, stale, await one.load("position")

    assert with_log(nats_server, body) == (True, True, False, {"sequence": 12})


PAIRS = 300


Book = dict[tuple[int, bytes], int]


# While the log is down risk cannot make an acceptance durable: it refuses (fail closed) instead.
FAIL_CLOSED = (Reason.RISK_UNAVAILABLE, Reason.PARTITION_TAKEOVER)
QUIET_SECONDS = 3.0


def trade_through(stack: Stack, faults: dict[int, Callable[[], None]]) -> tuple[Book, int, int]:
    """Two order sessions send crossing pairs, running `faults[n]` before pair n. Every order trades in full
    but those refused fail-closed and the partners they left: those are canceled once nothing moves.
    Returns what the clients were told (net quantity per (account, symbol)), the fills and the refusals."""
    sessions = [OrderSession(stack.address("order")), OrderSession(stack.address("order"))]
    accounts: list[dict[int, int]] = [{}, {}]
    for pair in range(PAIRS):
        if pair in faults:
            faults[pair]()
        index = pair % 2
        symbol = ("AAPL", "MSFT")[pair // 2 % 2]
        price = price_units(190 if symbol == "AAPL" else 420)
        quantity = 1 + pair  # distinct orders: the duplicate check stays out of the way
        buyer, seller = 1 + pair % 3 + 10 * index, 4 + pair % 2 + 10 * index
        accounts[index][sessions[index].new_order(Side.BUY, symbol, quantity, price, account=buyer)] = buyer
        accounts[index][sessions[index].new_order(Side.SELL, symbol, quantity, price, account=seller)] = (
            seller
        )
        time.sleep(0.002)
    told: Counter[tuple[int, bytes]] = Counter()
    fills = refused = 0
    for session, open_orders in zip(sessions, accounts, strict=True):
        # Every order trades in full in the end (as much is bought as sold at one price), though not
        # always against its own pair: orders of the two sessions interleave.
        deadline = time.monotonic() + 60
        moved = time.monotonic()
        canceling: dict[int, int] = {}  # cancel's client order id -> the order's
        while open_orders:
            assert time.monotonic() < deadline, f"{len(open_orders)} orders never traded in full"
            if not canceling and time.monotonic() - moved > QUIET_SECONDS:
                canceling = {session.cancel(original): original for original in open_orders}
            for message in session.receive(1):
                if not isinstance(message, ExecutionReport):
                    continue
                moved = time.monotonic()
                if message.exec_type == ExecType.REJECTED and message.reason in FAIL_CLOSED:
                    del open_orders[message.client_order_id]
                    refused += 1
                    continue
                if message.exec_type == ExecType.CANCELED:
                    del open_orders[canceling.get(message.client_order_id, message.client_order_id)]
                    continue
                assert message.exec_type in (ExecType.NEW, ExecType.TRADE), f"not traded: {message}"
                if message.exec_type == ExecType.TRADE:
                    sign = 1 if message.side == Side.BUY else -1
                    told[open_orders[message.client_order_id], message.symbol] += sign * message.last_quantity
                    fills += 1
                    if message.leaves_quantity == 0:
                        del open_orders[message.client_order_id]
        session.close()
    return dict(told), fills, refused


def booked(stack: Stack) -> Book:
    return {(r.account, r.symbol): r.quantity for r in positions(stack.address("position"), 0)}


FAULTS: dict[str, tuple[int, Callable[[Stack], None], Callable[[Stack], None]]] = {
    # victim: (event log servers, kill, restart)
    "position": (1, lambda s: s.kill("position", signal.SIGKILL), lambda s: s.start_one("position")),
    # Its replacement takes the partitions over once the leases expire; orders are refused meanwhile.
    "risk": (1, lambda s: s.kill("risk", signal.SIGKILL), lambda s: s.start_one("risk")),
    "nats-server": (1, lambda s: s.events.kill(0), lambda s: s.events.start_one(0)),
    "one of three nats-servers (R3)": (3, lambda s: s.events.kill(1), lambda s: s.events.start_one(1)),
}


@pytest.mark.parametrize("victim", sorted(FAULTS))
def test_every_fill_a_client_was_told_of_is_in_positions_exactly_once_across_a_kill_9(
    make_stack: StackFactory, victim: str
) -> None:
    servers, kill, restart = FAULTS[victim]
    stack = make_stack({"position": {"snapshotEveryEvents": 25}}, event_log_servers=servers)
    told, fills, refused = trade_through(stack, {100: lambda: kill(stack), 180: lambda: restart(stack)})
    assert refused == 0 or victim != "position", "risk answers while position is down"
    assert fills >= 2 * (PAIRS - refused)
    stack.wait_ready(components=("position",))
    wait_for(lambda: booked(stack) == told, timeout=15, what="positions to equal the fills the clients got")
    assert stack.status("position")["fills"] == fills, "a fill was applied twice"
    assert stack.status("execution")["unstoredFills"] == 0

    async def replicas(log: EventLog) -> int:
        assert log.js is not None
        return int((await log.js.stream_info(STREAM)).config.num_replicas or 1)

    assert with_log(stack.events, replicas) == servers
    # A fresh replica replays a snapshot and the tail into the same state.
    stack.kill("position", signal.SIGKILL)
    stack.start_one("position")
    stack.wait_ready(components=("position",))
    status = stack.status("position")
    assert booked(stack) == told and status["fills"] == fills
    assert 0 < status["snapshotSequence"] <= status["sequence"]


def test_the_desk_dumps_an_account_and_replays_to_a_sequence(nats_server: NatsServers) -> None:
    async def body(log: EventLog) -> None:
        await log.append([Append("fill", 1, [fill(1, 1, 5), fill(2, 17, 6)], "d-1")])
        await log.append([Append("fill", 1, [fill(3, 1, 7)], "d-3")])

    with_log(nats_server, body)

    def desk(*args: str) -> str:
        command = [sys.executable, "-m", "tradeplane_services", "log", "--event-log", nats_server.url, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "2 events, sequences 1-2" in desk("info")
    dump = desk("dump", "--account", "1")
    assert "2 fills of account 1" in dump and "account=17" not in dump
    assert "qty=       5" in desk("replay", "--to-sequence", "1", "--account", "1")
    assert "qty=      12" in desk("replay", "--to-sequence", "2", "--account", "1")


def test_the_desk_names_a_bad_event_log_address() -> None:
    command = [sys.executable, "-m", "tradeplane_services", "log", "--event-log", "http://x:4222", "info"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "'http://x:4222' is not a nats:// or tls:// URL" in result.stderr


def test_a_position_canary_reads_the_same_log_and_aborting_it_loses_nothing(make_stack: StackFactory) -> None:
    """A canary of position is one more projection of the log: started mid-stream it catches up from the
    stable's snapshot and the tail; aborted (its pod deleted), it takes nothing with it."""
    stack = make_stack({"position": {"snapshotEveryEvents": 25}})
    canary_fills: list[int] = []

    def start_canary() -> None:
        stack.start_one("position-1")

    def abort_canary() -> None:
        stack.wait_ready(components=("position-1",))
        canary_fills.append(stack.status("position-1")["fills"])
        assert stack.kill("position-1", signal.SIGTERM) == 0

    told, fills, refused = trade_through(stack, {60: start_canary, 200: abort_canary})
    assert refused == 0 and canary_fills[0] > 0, "the canary projected the fills before its abort"
    wait_for(lambda: booked(stack) == told, timeout=15, what="positions to equal the fills the clients got")
    assert stack.status("position")["fills"] == fills
    # The stable's next replica starts from whichever snapshot is latest, the canary's included.
    stack.kill("position", signal.SIGKILL)
    stack.start_one("position")
    stack.wait_ready(components=("position",))
    assert booked(stack) == told and stack.status("position")["fills"] == fills


def test_a_replica_from_a_snapshot_and_one_replaying_everything_digest_alike_at_every_common_sequence(
    make_stack: StackFactory,
) -> None:
    """Two position processes on one real log: `position` replays from sequence 1 and follows, `position-1`
    starts later from the snapshot `position` stored; at every sequence both recorded, their digests are
    equal, and they cover the new events both followed."""
    stack = make_stack({"position": {"snapshotEveryEvents": 10}}, components=("position",))
    prices = [190, 185, 193, 188, 201, 176]

    def trade(first: int, last: int) -> None:
        async def body(log: EventLog) -> None:
            for n in range(first, last + 1):
                side, account = Side.BUY if n % 3 else Side.SELL, 1 + n % 4
                record = Fill(7, n, account, AAPL, int(side), 5 + n % 7, price_units(prices[n % 6]), n, 0)
                await log.append([Append("fill", partition_of(account), [record], f"digest-{n}")])

        with_log(stack.events, body)

    def digests(name: str) -> dict[str, Any]:
        with urllib.request.urlopen(stack.metrics_url(name, DIGESTS_ROUTE), timeout=5) as response:
            document: dict[str, Any] = json.load(response)
        return document

    trade(1, 60)
    wait_for(lambda: digests("position")["sequence"] == 60, timeout=15, what="position to follow 60 events")
    wait_for(lambda: stack.status("position")["snapshotSequence"] >= 50, timeout=15, what="a snapshot")
    stack.start_one("position-1")
    stack.wait_ready(components=("position-1",))
    trade(61, 120)
    for name in ("position", "position-1"):
        wait_for(lambda name=name: digests(name)["sequence"] == 120, timeout=15, what=f"{name} at 120")
    replayed, restored = digests("position"), digests("position-1")
    assert replayed["history"][0][0] == 1, "position recorded every event from the first"
    snapshot_sequence = restored["history"][0][0]
    assert 50 <= snapshot_sequence <= 60, "position-1 started from the snapshot, not from sequence 1"
    history = dict(map(tuple, replayed["history"]))
    common = [(sequence, digest) for sequence, digest in restored["history"] if sequence in history]
    assert len(common) == 121 - snapshot_sequence
    assert all(history[sequence] == digest for sequence, digest in common)
    assert len({digest for _, digest in common}) > 1, "the digest moved with the fills"
