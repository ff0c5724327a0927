"""Pre-trade risk in the spirit of SEC 15c3-5 and the FIA guidance, as a pure engine plus its service.

Checks, in the order that decides the reason code of an order failing several:

    kill switch HALTED, message-rate throttle (token bucket per account), unknown symbol, restricted
    symbol, max quantity, no reference price, price collar against the last trade, max notional,
    duplicate order, kill switch REDUCING (only position-reducing orders), position limit, credit limit,
    firm credit limit.

Position limit: per account and symbol, |filled position + open orders on the order's side + the order|.
Credit: per account, notional of open orders plus notional already executed (a daily credit line).
Firm credit: the same summed over every account, against `firmCreditLimit`. Partitioned, each partition
owner sees only its accounts, so the limit is split into equal shares, one per partition: the shares add
up to the limit whatever the replica count (what a skewed book loses is the price of no coordination on
the order path). Unpartitioned, one replica sees every account and checks the whole.
Duplicate: an accepted order with the same (account, symbol, side, quantity, price) inside the window,
recognised by a 64-bit fingerprint of those fields.

The state and the checks are compiled (core/src/risk.rs): `check` decides one order in well under a
microsecond, `check_batch` a run of RiskCheck records in one call, deciding each in turn exactly as `check`
would (a property test holds it to that).

With an event log, limits are firm-wide: each account partition is answered for by one risk replica at a
time (leases, partitions.py), which rebuilds the partition's exposure from the log before it answers and
logs every acceptance before it answers it (PartitionLedger). Without one, each replica keeps its own
exposure: run one.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, NamedTuple, Self

import nats.errors
import numpy as np
from nats.js.kv import KeyValue

from tradeplane_services._wire import RiskBook
from tradeplane_services.config import Environment
from tradeplane_services.eventlog import (
    JOURNALS,
    KILL_SWITCH_KIND,
    LEASE_BUCKET,
    PARTITIONS,
    REFUSAL_KIND,
    RELEASE_KIND,
    RISK_KIND,
    Append,
    Entry,
    Event,
    EventLog,
    Fenced,
    Snapshots,
    decode_event,
    journal_subject,
    partition_of,
    partition_of_subject,
    subject,
    subject_filter,
)
from tradeplane_services.marketdata import subscribe_if_published
from tradeplane_services.partitions import (
    WRITER_NAME,
    LeaseTable,
    PartitionOwner,
    journal_writer,
    replica_identity,
)
from tradeplane_services.protocol import (
    PRICE_SCALE,
    PROTOCOL_VERSION,
    Fill,
    FrameRun,
    KillSwitchChange,
    KillSwitchState,
    KillSwitchStatus,
    OrderType,
    PartitionClaim,
    ProtocolError,
    Reason,
    Refusal,
    Release,
    Reservation,
    RiskCheck,
    RiskResult,
    RiskUpdate,
    SetKillSwitch,
    Side,
    encode,
    layout_of,
    symbol_bytes,
    symbol_text,
)
from tradeplane_services.runtime import (
    Connection,
    Service,
    cancel_and_wait,
    fields,
    log,
    run_for_life,
    wait_until,
)
from tradeplane_services.settings import RiskSettings

OK, PARTITION_TAKEOVER = int(Reason.OK), int(Reason.PARTITION_TAKEOVER)
REASON_NAMES = {int(reason): reason.name for reason in Reason}
# Events replayed between turns of the event loop in a takeover: lease renewals run between slices.
REPLAY_SLICE_EVENTS = 64
CHECK_DTYPE = layout_of(RiskCheck).dtype
RESULT_LAYOUT = layout_of(RiskResult)
# The protocol's codes and the RiskCheck record layout, as the compiled book reads them.
BOOK_CODES = {
    **{member.name: int(member) for member in (*Side, *OrderType, *KillSwitchState)},
    **{reason.name: int(reason) for reason in Reason},
}
CHECK_RECORD = {"size": CHECK_DTYPE.itemsize, **layout_of(RiskCheck).offsets}


def limits(settings: RiskSettings, symbols: list[bytes], firm_shares: int) -> dict[str, Any]:
    """RiskSettings in wire units (prices x PRICE_SCALE, nanoseconds), as `RiskBook.configure` takes
    them; the firm credit limit as the share of one of `firm_shares` buckets."""
    firm = settings.firmCreditLimit
    restricted = {symbol_bytes(name) for name in settings.restrictedSymbols}
    return {
        "firm_credit_share": None if firm is None else int(firm * PRICE_SCALE) // firm_shares,
        "max_quantity": settings.maxOrderQuantity,
        "max_notional": int(settings.maxOrderNotional * PRICE_SCALE),
        "collar": settings.priceCollarPercent / 100,
        "max_position": settings.maxPosition,
        "credit_limit": int(settings.creditLimit * PRICE_SCALE),
        "rate_per_ns": settings.maxMessagesPerSecond / 1e9,
        "burst": max(1.0, settings.maxMessagesPerSecond),
        "duplicate_window_ns": settings.duplicateWindowMillis * 1_000_000,
        "restricted": [symbol in restricted for symbol in symbols],
        "kill_switch": int(settings.killSwitch),
    }


class RiskEngine(RiskBook):
    """Risk state of every account and the checks, compiled (core/src/risk.rs); no I/O, time is passed in.

    This class adds what is Python's: the settings, the log's records and the snapshot documents.
    """

    def __new__(cls, settings: RiskSettings, partitioned: bool = False) -> Self:
        # Firm credit buckets: one per partition when partitions have owners of their own, else one.
        firm_shares = PARTITIONS if partitioned else 1
        symbols = [symbol_bytes(name) for name in settings.symbols]
        return super().__new__(cls, symbols, PARTITIONS, firm_shares, BOOK_CODES, CHECK_RECORD)

    def __init__(self, settings: RiskSettings, partitioned: bool = False) -> None:
        self.firm_shares = PARTITIONS if partitioned else 1
        self.symbols = [symbol_bytes(name) for name in settings.symbols]
        self.symbol_index = {symbol: index for index, symbol in enumerate(self.symbols)}
        self.configure(**limits(settings, self.symbols, self.firm_shares))
        for partition in range(PARTITIONS if partitioned else 0):
            self.set_served(partition, False)  # until its ledger serves it (PartitionLedger.serving)

    def reconfigure(self, settings: RiskSettings) -> None:
        if [symbol_bytes(name) for name in settings.symbols] != self.symbols:
            raise ValueError("symbols cannot change while the service runs; restart it")
        self.configure(**limits(settings, self.symbols, self.firm_shares))

    def update_prices(self, symbols: np.ndarray[Any, Any], prices: np.ndarray[Any, Any]) -> None:
        """Last trade prices from a market-data batch (later ticks of a symbol win)."""
        self.update_prices_packed(
            np.ascontiguousarray(symbols, dtype="S8").tobytes(),
            np.ascontiguousarray(prices, dtype="<i8").tobytes(),
        )

    def check_batch(self, checks: np.ndarray[Any, Any] | bytes, now_ns: int) -> np.ndarray[Any, Any] | None:
        """Reasons for a run of RiskCheck records (CHECK_DTYPE), each decided and booked as `check` would
        one by one; None, nothing booked, when a record holds a field the decoder refuses or a symbol not
        configured: the caller then decodes and checks the run frame by frame."""
        records = checks if isinstance(checks, bytes) else checks.tobytes()
        reasons = self.check_records(records, now_ns)
        return None if reasons is None else np.frombuffer(reasons, dtype="<u2")

    def apply_update(self, update: RiskUpdate) -> None:
        if update.filled_quantity:
            self.on_fill(update.order_id, update.filled_quantity, update.fill_price)
        if update.done:
            self.on_done(update.order_id)

    def account_of(self, order_id: int) -> int | None:
        booking = self.booking(order_id)
        return None if booking is None else booking[0]

    # --- the event log's records and snapshots of a partition -----------------------------------------

    def reservation(self, check: RiskCheck) -> Reservation:
        """The log record of an order `check` just accepted (`reservation_run` builds a run's at once)."""
        order_id, account, symbol, side, _, quantity, _, is_replace = check
        booking = self.booking(order_id)
        if booking is None:
            raise KeyError(f"order {order_id} is not open")
        return Reservation(order_id, account, symbol, side, quantity, booking[4], is_replace)

    def book_reservation(self, reservation: Reservation) -> None:
        """Replay an accepted order: book its exposure as the check did (a replace: instead of the old)."""
        self.replay_reservation(*reservation)

    def apply_fill(self, fill: Fill) -> None:
        """A fill from the log; one of an order booked elsewhere still moves the position and credit."""
        self.replay_fill(fill.order_id, fill.account, fill.symbol, fill.side, fill.quantity, fill.price)

    def partition_state(self, partition: int) -> dict[str, Any]:
        """The exposure of the partition's accounts as JSON: positions and open quantities by symbol,
        credit used, and open orders (their bookings). Throttle and duplicate state are not exposure."""
        names = [symbol_text(symbol) for symbol in self.symbols]
        accounts, orders = self.partition_exposure(partition)
        return {
            "accounts": [
                [account, credit, {names[index]: list(cell) for index, *cell in held}]
                for account, credit, held in accounts
            ],
            "orders": [
                [order_id, account, names[index], side, quantity, credit_price]
                for order_id, account, index, side, quantity, credit_price in orders
            ],
        }

    def restore_partition(self, partition: int, state: dict[str, Any]) -> None:
        """Put back what `partition_state` gave, after forgetting the partition; symbols no longer
        configured are left out."""
        index_of = self.symbol_index.get
        accounts = [
            (
                account,
                credit,
                [
                    (index, position, open_buy, open_sell)
                    for name, (position, open_buy, open_sell) in held.items()
                    if (index := index_of(symbol_bytes(name))) is not None
                ],
            )
            for account, credit, held in state["accounts"]
        ]
        orders = [
            (order_id, account, index, side, quantity, credit_price)
            for order_id, account, name, side, quantity, credit_price in state["orders"]
            if (index := index_of(symbol_bytes(name))) is not None
        ]
        self.restore_exposure(partition, accounts, orders)


class PartitionLedger:
    """One partition this replica holds the lease of: its takeover, its follower, its logged facts.

    Takeover (`claim`): seal the journal of the replica whose claim is the partition's last, then append a
    PartitionClaim to the partition's risk subject expecting that claim there (so two claimants cannot
    both win), load the partition's latest snapshot, replay its events and the journals' reservations of
    its accounts after the snapshot up to the claim (reservations, fills, releases; in one read with the
    partitions it takes over at the same time: Replays), then answer. Until then, and from the moment the
    lease is lost, checks of the partition are refused with PARTITION_TAKEOVER.

    An accepted order is answered only once its Reservation is in the log, in this replica's journal
    (Journal), so a replica that lost the partition cannot add exposure beside its new owner. Fills
    (appended by execution) and releases reach the exposure through the log, in log order: a fill never
    lands before the reservation it fills, a release never before a fill of its order.

    The owner's exposure is the fold of the partition's events up to the last one it read, plus its own
    reservations. When none are in flight and it has read past its last append, the two are the same:
    only then, every `snapshotEveryEvents` events, it stores a snapshot (key `risk.<partition>` of the
    snapshot bucket, replaced only by a later one).
    """

    def __init__(self, service: RiskService, partition: int, lease_revision: int) -> None:
        assert service.event_log is not None
        self.service = service
        self.event_log = service.event_log
        self.engine = service.engine
        self.partition = partition
        self.lease_revision = lease_revision
        self._serving = False
        self.stopped = False
        self.last_sequence = 0  # of the claim, or of the last journal event holding our reservations
        self.in_flight = 0  # reservations waiting for the journal
        self.commits = 0
        self.facts: list[tuple[str, Release | Refusal]] = []  # (kind, fact) not yet logged
        self.logging_facts: asyncio.Task[None] | None = None
        self.applied_fills: dict[int, int] = {}  # execution source -> last fill sequence applied
        self.claimed_at = time.perf_counter()
        self.takeover_seconds: float | None = None
        self.replayed_events = 0
        self.snapshot_sequence = 0  # the snapshot loaded at takeover, or the last one tried
        self.damaged_events = 0
        service.replays.claiming(self)
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"partition-{partition}")
        self.task.add_done_callback(self._ended)

    @property
    def serving(self) -> bool:
        """Its checks are decided here; the engine's runs are declined while it is not."""
        return self._serving

    @serving.setter
    def serving(self, serving: bool) -> None:
        self._serving = serving
        self.engine.set_served(self.partition, serving)

    async def run(self) -> None:
        self.engine.forget_partition(self.partition)
        await self.claim()
        await self.load_snapshot()
        await self.service.replays.replay(self)
        if self.stopped:
            return
        every = self.service.settings.snapshotEveryEvents
        # Nothing of ours in flight yet: the state is the fold up to the claim, worth keeping if long.
        replayed_far = self.last_sequence - self.snapshot_sequence >= every
        document = self.snapshot_document(self.last_sequence) if replayed_far else None
        self.serving = True
        self.service.owner.wake.set()
        self.takeover_seconds = time.perf_counter() - self.claimed_at
        log.info(
            "partition taken over",
            extra=fields(
                partition=self.partition,
                replayedEvents=self.replayed_events,
                claimSequence=self.last_sequence,
                snapshotSequence=self.snapshot_sequence,
                seconds=round(self.takeover_seconds, 4),
            ),
        )
        if document is not None:
            await self.save_snapshot(document)
        tail = self.event_log.read(
            subject_filter("*", self.partition), self.last_sequence + 1, follow=True, damaged=self.damaged
        )
        async for event in self._until_stopped(tail):
            self.apply(event, replaying=False)
            quiet = self.in_flight == 0 and event.sequence >= self.last_sequence
            if quiet and self.serving and event.sequence - self.snapshot_sequence >= every:
                await self.save_snapshot(self.snapshot_document(event.sequence))

    async def claim(self) -> None:
        """Seal, then claim. The seal is this claim appended to the journal of the replica whose claim is
        the partition's last, so that replica's next journal append fails and its reservations of the
        partition are all before this claim. Every claim is appended only after its predecessor's journal
        was sealed, so every earlier owner's is."""
        claim = PartitionClaim(self.partition, self.lease_revision, self.service.writer.encode())
        on = subject(RISK_KIND, self.partition)
        while True:
            previous = await self.event_log.last_on(on, damaged=self.damaged)
            last = 0 if previous is None else previous.sequence
            writers = {writer_of(message) for message in previous.messages} if previous else set()
            for writer in sorted(writer for writer in writers if writer is not None):
                seal_id = f"seal-{self.partition}-{self.lease_revision}-{last}"
                await self.event_log.append([Entry(journal_subject(writer), [claim], seal_id)])
            event = Append(
                RISK_KIND, self.partition, [claim], f"claim-{self.partition}-{self.lease_revision}"
            )
            try:
                self.last_sequence = await self.event_log.append_fenced(event, last)
                return
            except Fenced:
                continue  # another replica claimed after we looked: seal its journal too

    async def _until_stopped(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Events while this ledger holds the partition. Its task's cancellation can be lost (in Python
        3.11 asyncio.wait_for drops one that races a message), and a stopped ledger that read on would
        fold events into the state its successor rebuilds, or fence that successor with its claim."""
        async for event in events:
            if self.stopped:
                return
            yield event

    def damaged(self, error: ProtocolError) -> None:
        """A frame no risk replica wrote (each writes what its own protocol version decodes): foreign input
        on the partition's subjects, passed over loudly rather than stopping the partition for good."""
        self.damaged_events += 1
        log.error("undecodable event on a risk partition passed over", extra=fields(error=str(error)))

    @property
    def snapshot_key(self) -> str:
        return f"risk.{self.partition}"

    async def load_snapshot(self) -> None:
        """The partition's exposure as of the latest snapshot before the claim; none: replay from 1."""
        try:
            document = await self.service.snapshots.load(self.snapshot_key)
        except (TimeoutError, nats.errors.Error) as error:
            log.warning("risk snapshot unavailable; replaying all", extra=fields(error=repr(error)))
            return
        if document is None or document["sequence"] >= self.last_sequence:
            return
        self.engine.restore_partition(self.partition, document["state"])
        self.applied_fills = {int(source): last for source, last in document["fills"].items()}
        self.snapshot_sequence = document["sequence"]

    def snapshot_document(self, sequence: int) -> dict[str, Any]:
        self.snapshot_sequence = sequence  # a failed try is tried again snapshotEveryEvents later
        return {
            "sequence": sequence,
            "fills": {str(source): last for source, last in self.applied_fills.items()},
            "state": self.engine.partition_state(self.partition),
        }

    async def save_snapshot(self, document: dict[str, Any]) -> None:
        sequence = document["sequence"]
        try:
            await self.service.snapshots.save(self.snapshot_key, document)
        except (TimeoutError, nats.errors.Error) as error:  # only takeover time depends on it
            log.warning("risk snapshot not stored", extra=fields(error=repr(error), sequence=sequence))

    def apply(self, event: Event, replaying: bool) -> None:
        engine = self.engine
        for message in event.messages:
            kind = type(message)
            if kind is Fill:
                if message.fill_sequence > self.applied_fills.get(message.source, 0):
                    self.applied_fills[message.source] = message.fill_sequence
                    engine.apply_fill(message)
            elif kind is Release:
                engine.on_done(message.order_id)
            elif kind is Reservation:
                # Ours are booked when accepted; the journals hold every partition's.
                if replaying and partition_of(message.account) == self.partition:
                    engine.book_reservation(message)
            elif kind is PartitionClaim and not replaying and message.lease_revision != self.lease_revision:
                # Fenced after ours, so newer: another replica's claim, or this replica's own after its
                # lease lapsed (then this ledger was stopped first and reads no further).
                log.warning("partition claimed under another lease", extra=fields(partition=self.partition))
                self.service.lose(self.partition)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.stopped:
            return
        # Following the log ends only with the partition; anything else leaves it to another replica.
        error = task.exception()
        log.error("partition follower stopped", extra=fields(partition=self.partition), exc_info=error)
        self.service.lose(self.partition)

    def release(self, release: Release) -> None:
        self._log_fact(RELEASE_KIND, release)

    def refuse(self, refusal: Refusal) -> None:
        self._log_fact(REFUSAL_KIND, refusal)

    def _log_fact(self, kind: str, fact: Release | Refusal) -> None:
        self.facts.append((kind, fact))
        if self.logging_facts is None:
            self.logging_facts = asyncio.get_running_loop().create_task(self._append_facts())

    async def _append_facts(self) -> None:
        """Releases and refusals are facts, not decisions an answer waits for: any replica may log them,
        unfenced, one event per kind per batch (its id unique under this lease: a retry is stored once)."""
        while self.facts:
            facts, self.facts = self.facts, []
            self.commits += 1
            by_kind: dict[str, list[Release | Refusal]] = {}
            for kind, fact in facts:
                by_kind.setdefault(kind, []).append(fact)
            batch = f"{self.partition}-{self.lease_revision}-{self.commits}"
            appends = [
                Append(kind, self.partition, list(of_kind), f"{kind}-{batch}")
                for kind, of_kind in by_kind.items()
            ]
            await self.event_log.append(appends)
        self.logging_facts = None

    def stop(self) -> None:
        """Lost: refuse from now on; commits in flight finish (logged, they are the next owner's too)."""
        self.serving, self.stopped = False, True
        self.task.cancel()
        self.service.replays.abandon(self)

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.logging_facts is not None

    def status(self) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "leaseRevision": self.lease_revision,
            "takeoverSeconds": self.takeover_seconds,
            "replayedEvents": self.replayed_events,
            "snapshotSequence": self.snapshot_sequence,
            "damagedEvents": self.damaged_events,
        }


class Replays:
    """Partitions a replica takes over together replay the log together.

    The journals hold the reservations of every partition, so k partitions replayed apart (a replica
    taking over a dead peer's half) would each read and decode every journal event: k times the work,
    while none of them answers. One read of the journals and the k partitions' subjects, from the
    earliest snapshot to the latest claim, split by partition as it goes, replaces them. A read starts
    once none of this replica's partitions is still claiming (a claim takes a few appends, and a dead
    peer's leases are taken in one lease round), and each partition serves as soon as the read passes its
    own claim, not once the whole read ends."""

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log
        self.claims: set[PartitionLedger] = set()
        self.waiting: dict[PartitionLedger, asyncio.Future[None]] = {}
        self.reading: set[asyncio.Task[None]] = set()
        self.reads = 0
        self.replayed_partitions = 0

    def claiming(self, ledger: PartitionLedger) -> None:
        self.claims.add(ledger)

    def replay(self, ledger: PartitionLedger) -> asyncio.Future[None]:
        """Done once `ledger` has applied the log after its snapshot up to its claim."""
        self.claims.discard(ledger)
        self.waiting[ledger] = done = asyncio.get_running_loop().create_future()
        self._start_when_claimed()
        return done

    def abandon(self, ledger: PartitionLedger) -> None:
        self.claims.discard(ledger)
        self.waiting.pop(ledger, None)
        self._start_when_claimed()

    def _start_when_claimed(self) -> None:
        if self.claims or not self.waiting:
            return
        group, self.waiting = self.waiting, {}
        self.reads += 1
        self.replayed_partitions += len(group)
        task = asyncio.get_running_loop().create_task(self._read(group), name="partition-replay")
        self.reading.add(task)
        task.add_done_callback(self.reading.discard)

    async def _read(self, group: dict[PartitionLedger, asyncio.Future[None]]) -> None:
        try:
            await self._apply(group)
        except Exception as error:  # each ledger's follower ends with it, and its partition goes
            for done in group.values():
                if not done.done():
                    done.set_exception(error)
        finally:
            for done in group.values():
                if not done.done():
                    done.cancel()

    async def _apply(self, group: dict[PartitionLedger, asyncio.Future[None]]) -> None:
        # By claim: a ledger is done once the read passes its claim, and then serves and follows alone.
        unfinished = sorted(group, key=lambda ledger: ledger.last_sequence)
        replaying = {ledger.partition: ledger for ledger in unfinished}
        start = min(ledger.snapshot_sequence for ledger in group) + 1
        filters = (JOURNALS, *(subject_filter("*", partition) for partition in sorted(replaying)))
        damage: list[ProtocolError] = []  # the damaged event comes next, empty
        read = self.event_log.read(filters, start, unfinished[-1].last_sequence, damaged=damage.append)
        events = 0
        async for event in read:
            while unfinished[0].last_sequence < event.sequence:
                finished = unfinished.pop(0)
                del replaying[finished.partition]
                _resolve(group[finished])
            partition = partition_of_subject(event.subject)
            if partition is None:  # a journal: every partition's reservations, each to its own ledger
                reservations = reservations_by_partition(event.messages)
                targets = [(ledger, reservations.get(ledger.partition, [])) for ledger in unfinished]
            else:  # the partition's own subject, read on until the last claim of the group
                ledger = replaying.get(partition)
                targets = [] if ledger is None else [(ledger, event.messages)]
            for ledger, messages in targets:
                if ledger.stopped or event.sequence <= ledger.snapshot_sequence:
                    continue
                if damage:
                    ledger.damaged(damage[0])
                ledger.apply(Event(event.sequence, event.subject, messages), replaying=True)
                ledger.replayed_events += 1
            damage.clear()
            events += 1
            if events % REPLAY_SLICE_EVENTS == 0:
                await asyncio.sleep(0)  # a fetched batch is replayed without a pause: let the leases renew
        for ledger in unfinished:
            _resolve(group[ledger])

    def status(self) -> dict[str, Any]:
        return {"reads": self.reads, "partitions": self.replayed_partitions}


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():  # a stopped ledger's was cancelled with its task
        done.set_result(None)


def reservations_by_partition(messages: list[Any]) -> dict[int, list[Reservation]]:
    """A journal event's reservations by their accounts' partitions (its claims are seals: not replayed)."""
    by_partition: dict[int, list[Reservation]] = {}
    for message in messages:
        if type(message) is Reservation:
            by_partition.setdefault(partition_of(message.account), []).append(message)
    return by_partition


def writer_of(message: Any) -> str | None:
    """The journal writer a claim names (None: not a claim, or a name no journal subject can carry)."""
    if type(message) is not PartitionClaim:
        return None
    writer = message.owner.rstrip(b"\0").decode("ascii", "replace")
    return writer if WRITER_NAME.fullmatch(writer) else None


def answer_checks(
    connection: Connection, order_ids: np.ndarray[Any, Any], reasons: np.ndarray[Any, Any]
) -> None:
    """RiskResults for a run of checks, built at once and sent in one write."""
    results = np.zeros(len(order_ids), dtype=RESULT_LAYOUT.dtype)
    results["length"] = RESULT_LAYOUT.size
    results["type"] = RESULT_LAYOUT.type_id
    results["version"] = PROTOCOL_VERSION
    results["order_id"] = order_ids
    results["reason"] = reasons
    connection.send_run(results)


class Reserved(NamedTuple):
    """Reservations of one read (one check, or a run's), waiting for the journal: what an append carries
    for them and what answers them once it is stored."""

    ledgers: list[tuple[PartitionLedger, int]]  # the partitions they fall in, and how many in each
    reservations: bytes  # their Reservation frames
    answers: bytearray  # the RiskResult OK frames that answer them, in the same order
    connection: Connection
    received_ns: int

    @classmethod
    def one(cls, ledger: PartitionLedger, reservation: Reservation, connection: Connection) -> Reserved:
        answer = bytearray(encode(RiskResult(reservation.order_id, OK)))
        return cls([(ledger, 1)], encode(reservation), answer, connection, connection.received_ns)

    @property
    def orders(self) -> int:
        return len(self.answers) // RESULT_LAYOUT.size


class Journal:
    """This replica's reservations, of every partition it holds, as one event per turn of the loop on a
    subject only this process writes (`journal_subject`), each expecting the previous one as the subject's
    last: one durable append per turn however many partitions the turn's orders fall in.

    A partition's next owner seals this journal before it claims the partition (PartitionLedger.claim), so
    the next append here fails. The journal then reads what came after its last append, gives up each
    partition sealed under a newer lease than the one it holds it under, and appends the rest again. A
    reservation is answered OK only once appended: before its partition's next claim, so in what the next
    owner replays, or never."""

    def __init__(self, service: RiskService, event_log: EventLog) -> None:
        self.service = service
        self.event_log = event_log
        self.subject = journal_subject(service.writer)
        self.last_sequence = 0  # a new writer's subject is empty
        self.pending: list[Reserved] = []
        self.committing: asyncio.Task[None] | None = None
        self.commits = 0
        self.seals = 0

    def reserve(self, reserved: Reserved) -> None:
        for ledger, count in reserved.ledgers:
            ledger.in_flight += count
        self.pending.append(reserved)
        if self.committing is None:
            self.committing = asyncio.get_running_loop().create_task(self._commit())

    async def _commit(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            live: list[Reserved] = []
            for reserved in batch:
                if all(ledger.serving for ledger, _ in reserved.ledgers):
                    live.append(reserved)
                else:
                    live.extend(self._give_up_lost(reserved))
            if not live:
                continue
            self.commits += 1
            reservations = b"".join(reserved.reservations for reserved in live)
            event = Entry(self.subject, reservations, f"journal-{self.service.writer}-{self.commits}")
            try:
                sequence = await self.event_log.append_fenced(event, self.last_sequence)
            except Fenced:
                await self._read_seals()
                self.pending = live + self.pending
                continue
            self.last_sequence = sequence
            for reserved in live:
                for ledger, count in reserved.ledgers:
                    ledger.last_sequence = sequence
                    ledger.in_flight -= count
                if reserved.connection.connected:
                    reserved.connection.send_frames(reserved.answers)
                self.service.metrics.record(reserved.received_ns, reserved.orders)
        self.committing = None

    def _give_up_lost(self, reserved: Reserved) -> list[Reserved]:
        """The reservations of partitions no longer served here are answered PARTITION_TAKEOVER (never
        logged: the order must not trade); the others stay, one Reserved each."""
        ledgers = {ledger.partition: ledger for ledger, _ in reserved.ledgers}
        kept: list[Reserved] = []
        connection = reserved.connection
        for reservation in decode_event(reserved.reservations, self.subject):
            ledger = ledgers[partition_of(reservation.account)]
            if ledger.serving:
                one = Reserved.one(ledger, reservation, connection)
                kept.append(one._replace(received_ns=reserved.received_ns))
                continue
            ledger.in_flight -= 1
            if connection.connected:
                connection.send(RiskResult(reservation.order_id, PARTITION_TAKEOVER))
            self.service.metrics.record(reserved.received_ns)
        return kept

    async def _read_seals(self) -> None:
        async for event in self.event_log.read(self.subject, self.last_sequence + 1, damaged=self.damaged):
            for message in event.messages:
                if type(message) is not PartitionClaim:
                    continue
                self.seals += 1
                ledger = self.service.ledgers.get(message.partition)
                if ledger is not None and ledger.lease_revision < message.lease_revision:
                    log.warning(
                        "partition sealed by a newer owner", extra=fields(partition=message.partition)
                    )
                    self.service.lose(message.partition)
            self.last_sequence = event.sequence

    @staticmethod
    def damaged(error: ProtocolError) -> None:
        log.error("undecodable event in a risk journal passed over", extra=fields(error=str(error)))

    def status(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "lastSequence": self.last_sequence,
            "commits": self.commits,
            "seals": self.seals,
        }


class RiskService(Service[RiskSettings]):
    """Answers RiskCheck with RiskResult, books fills and completions, owns the kill switch."""

    name = "risk"

    def __init__(self, environment: Environment, settings: RiskSettings) -> None:
        super().__init__(environment, settings)
        self.engine = RiskEngine(settings, partitioned=bool(environment.event_log))
        self.handlers = {
            RiskCheck: self.on_check,
            RiskUpdate: self.on_update,
            SetKillSwitch: self.on_kill_switch,
        }
        self.batch_types = {layout_of(RiskCheck).type_id: settings.batchThreshold}
        self.market_data = subscribe_if_published(environment, self.on_ticks, self.metrics)
        self.event_log: EventLog | None = None
        self.ledgers: dict[int, PartitionLedger] = {}
        self.replica = replica_identity(environment.replica)
        # Kill-switch events are named by replica, process start and move: unique, so only a retry of
        # the same append is dropped as a duplicate.
        self.incarnation = time.time_ns()
        self.writer = journal_writer(self.replica, self.incarnation)
        self.kill_switch_moves = 0
        self.kill_switch_appends: set[asyncio.Task[list[int]]] = set()
        self.leases = LeaseTable()
        self.owner = PartitionOwner(
            self.replica,
            str(environment.advertised_address()),
            self.leases,
            self.take_over,
            self.give_up,
            self.serving,
            lambda: self.settings.partitionLeaseMillis / 1000,
        )
        self.lease_bucket: KeyValue | None = None
        self.snapshots: Snapshots
        self.tasks: list[asyncio.Task[None]] = []
        if environment.event_log:
            self.event_log = EventLog(environment.event_log, environment.event_log_replicas, "risk")
            self.journal = Journal(self, self.event_log)
            self.replays = Replays(self.event_log)
        else:
            log.warning("TRADEPLANE_EVENT_LOG is not set: limits hold per replica; run one risk replica")

    async def start(self) -> None:
        if self.market_data is not None:
            await self.market_data.start()
        if self.event_log is None:
            return
        await self.event_log.open()
        self.snapshots = await self.event_log.snapshots()
        self.lease_bucket = await self.event_log.bucket(LEASE_BUCKET)
        self.tasks = [
            run_for_life(self.leases.follow(self.event_log), "watching the partition leases"),
            run_for_life(self.owner.run(self.lease_bucket), "holding partition leases"),
        ]

    async def drain(self) -> None:
        if self.event_log is None or self.lease_bucket is None:
            return
        # Ended before the leases go: a lease round still running could claim a partition again.
        await cancel_and_wait(*self.tasks)
        for partition in list(self.ledgers):
            self.ledgers[partition].serving = False
        await wait_until(lambda: not any(ledger.busy for ledger in self.ledgers.values()), 5.0)
        await self.owner.release_all(self.lease_bucket)

    async def stop(self) -> None:
        await cancel_and_wait(*self.tasks)
        if self.market_data is not None:
            await self.market_data.stop()
        if self.event_log is not None:
            await self.event_log.close()

    def ready(self) -> bool:
        log_ready = self.event_log is None or self.event_log.connected
        return log_ready and (self.market_data is None or self.market_data.expected is not None)

    # --- partitions (with an event log) ---------------------------------------------------------------

    def take_over(self, partition: int, lease_revision: int) -> None:
        self.give_up(partition)
        self.ledgers[partition] = PartitionLedger(self, partition, lease_revision)

    def give_up(self, partition: int) -> None:
        ledger = self.ledgers.pop(partition, None)
        if ledger is not None:
            ledger.stop()
            self.engine.forget_partition(partition)

    def lose(self, partition: int) -> None:
        """The log says another replica owns the partition: stop answering and let the lease go."""
        if partition in self.owner.owned:
            self.owner.drop(partition)
        else:
            self.give_up(partition)

    def serving(self, partition: int) -> bool:
        ledger = self.ledgers.get(partition)
        return ledger is not None and ledger.serving

    def on_ticks(self, ticks: np.ndarray[Any, Any]) -> None:
        self.engine.update_prices(ticks["symbol"], ticks["last_price"])

    def logged_on(self, connection: Connection) -> None:
        connection.send(KillSwitchStatus(self.engine.kill_switch))

    def on_check(self, connection: Connection, check: RiskCheck) -> None:
        self.inject_latency()
        ledger = None
        if self.event_log is not None:
            ledger = self.ledgers.get(partition_of(check.account))
            if ledger is None or not ledger.serving:
                connection.send(RiskResult(check.order_id, PARTITION_TAKEOVER))
                self.metrics.decisions[REASON_NAMES[PARTITION_TAKEOVER]] += 1
                self.metrics.record(connection.received_ns)
                return
        reason = self.engine.check(*check[:7], time.perf_counter_ns(), check.is_replace)
        self.metrics.decisions[REASON_NAMES[reason]] += 1
        if ledger is not None and reason == OK:
            self.journal.reserve(Reserved.one(ledger, self.engine.reservation(check), connection))
            return
        if ledger is not None:
            ledger.refuse(Refusal(check.order_id, check.account, reason))
        connection.send(RiskResult(check.order_id, reason))
        self.metrics.record(connection.received_ns)

    def on_run(self, connection: Connection, run: FrameRun) -> None:
        reasons = self.engine.check_batch(run.data, time.perf_counter_ns())
        if reasons is None:  # e.g. a partition in takeover: each check refused its own way
            connection.dispatch_one_by_one(run)
            return
        checks = np.frombuffer(run.data, dtype=CHECK_DTYPE)
        if (reasons == OK).all():  # the usual run: counted without sorting it
            self.metrics.decisions[REASON_NAMES[OK]] += run.frames
        else:
            for reason, count in Counter(reasons.tolist()).items():
                self.metrics.decisions[REASON_NAMES[reason]] += count
        self.inject_latency(run.frames)
        if self.event_log is None:
            answer_checks(connection, checks["order_id"], reasons)
            self.metrics.record(connection.received_ns, run.frames)
            return
        # Every acceptance waits for the journal; a refusal is answered now and logged beside it.
        accepted = reasons == OK
        if accepted.any():
            reservations, answers, per_partition = self.engine.reservation_run(run.data, reasons.tobytes())
            ledgers = [(self.ledgers[p], count) for p, count in enumerate(per_partition) if count]
            self.journal.reserve(Reserved(ledgers, reservations, answers, connection, connection.received_ns))
        if accepted.all():
            return
        refused = checks[~accepted]
        for order_id, account, reason in zip(
            refused["order_id"].tolist(),
            refused["account"].tolist(),
            reasons[~accepted].tolist(),
            strict=True,
        ):
            self.ledgers[partition_of(account)].refuse(Refusal(order_id, account, reason))
        answer_checks(connection, refused["order_id"], reasons[~accepted])
        self.metrics.record(connection.received_ns, len(refused))

    def on_update(self, connection: Connection, update: RiskUpdate) -> None:
        if self.event_log is None:
            self.engine.apply_update(update)
            return
        # With the log, fills come from the log (execution appends them before anyone hears of them).
        account = self.engine.account_of(update.order_id) if update.done else None
        ledger = None if account is None else self.ledgers.get(partition_of(account))
        if ledger is not None and account is not None:
            ledger.release(Release(update.order_id, account))

    def on_kill_switch(self, connection: Connection, message: SetKillSwitch) -> None:
        self.set_kill_switch(message.state, f"session {connection.name}")
        connection.send(KillSwitchStatus(self.engine.kill_switch))
        self.metrics.record(connection.received_ns)

    def set_kill_switch(self, state: int, by: str) -> None:
        if state == self.engine.kill_switch:
            return
        self.engine.kill_switch = state
        log.warning("kill switch moved", extra=fields(state=KillSwitchState(state).name, by=by))
        if self.event_log is not None:
            self._log_kill_switch(KillSwitchChange(state, self.replica.encode()[:32]))
        for session in self.sessions:
            session.send(KillSwitchStatus(state))

    def _log_kill_switch(self, change: KillSwitchChange) -> None:
        """Appended after the switch moved: a halt never waits for the log."""
        assert self.event_log is not None
        self.kill_switch_moves += 1
        event_id = f"killswitch-{self.replica}-{self.incarnation}-{self.kill_switch_moves}"
        append = self.event_log.append([Append(KILL_SWITCH_KIND, 0, [change], event_id)])
        task = asyncio.get_running_loop().create_task(append)
        self.kill_switch_appends.add(task)
        task.add_done_callback(self._kill_switch_logged)

    def _kill_switch_logged(self, task: asyncio.Task[list[int]]) -> None:
        self.kill_switch_appends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("kill switch move not logged", extra=fields(error=repr(task.exception())))

    def reconfigure(self, settings: RiskSettings) -> None:
        previous = self.settings
        current_switch = self.engine.kill_switch
        try:
            self.engine.reconfigure(settings)
        except ValueError as error:
            log.error("config refused", extra=fields(error=str(error)))
            return
        super().reconfigure(settings)
        self.batch_types[layout_of(RiskCheck).type_id] = settings.batchThreshold
        # The file moves the switch only when its own value changes; a switch thrown over the wire stays.
        self.engine.kill_switch = current_switch
        if settings.killSwitch != previous.killSwitch:
            self.set_kill_switch(settings.killSwitch, "config")

    def status(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "killSwitch": KillSwitchState(engine.kill_switch).name,
            "accounts": len(engine.accounts()),
            "openOrders": engine.open_order_count,
            "referencePrices": {
                symbol.rstrip(b"\0").decode(): int(price)
                for symbol, price in zip(engine.symbols, engine.reference, strict=True)
            },
            "marketData": self.market_data.stats.as_dict() if self.market_data else None,
            "replica": self.replica if self.event_log is not None else None,
            "partitions": {str(p): ledger.status() for p, ledger in sorted(self.ledgers.items())},
            "journal": self.journal.status() if self.event_log is not None else None,
            "replays": self.replays.status() if self.event_log is not None else None,
        }
