"""Who owns which account partition of risk: leases in a JetStream key-value bucket.

Accounts are spread over `PARTITIONS` partitions (`partition_of`). Each partition has at most one risk
replica answering for it, the holder of its lease: the key `partition.<n>` of the bucket
`tradeplane-risk-leases`, holding the owner's identity, the address order reaches it at, and whether it
has finished rebuilding the partition's exposure (`serving`). Each risk replica also keeps a key
`member.<identity>` alive, so replicas that own nothing yet are seen.

- A lease is taken with a revision-checked write: `create` when the key is free, `update` with the
  revision observed when it expired, so of two replicas trying at once one wins.
- The owner renews its leases every quarter of the lease duration, each with the revision it wrote last;
  a renewal that finds another revision has lost the lease and the owner drops the partition.
- A lease expires when its revision has not changed for a lease duration, as each observer measures it
  on its own monotonic clock from the moment it saw the revision: no clocks are compared between hosts.
- Partition n is preferred by the live member at index n % members in sorted order. A replica claims
  free or expired partitions it is preferred for and hands over (deletes) the lease of one partition it
  holds that another live member is preferred for at a time, so ownership spreads when a replica joins
  and comes back to one when others die. It hands over only to a member it has seen live for a whole
  lease duration: a replica that went quiet for a moment (a long replay, a loaded host) and came back
  must not be handed partitions it may lose again at once, over and over.
- A renewal round writes the member key and every lease at once, so its length is one round trip to the
  log whatever the number of partitions held.

Why a lease and not a JetStream consumer with one active owner: a lease record is something order can
read to find the owner and its address, and the desk can show; a consumer tells neither. The lease is
not what keeps two writers apart, though: a replica that lost its lease without noticing (a long pause)
is fenced by the event log itself (`EventLog.append_fenced`, risk.py), so safety never depends on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from tradeplane_services.eventlog import LEASE_BUCKET, PARTITIONS, EventLog
from tradeplane_services.runtime import fields, log

PARTITION_PREFIX = "partition."
MEMBER_PREFIX = "member."
RENEWALS_PER_LEASE = 4
STALE_WATCH_SECONDS = 5.0


def partition_key(partition: int) -> str:
    return f"{PARTITION_PREFIX}{partition}"


def member_key(identity: str) -> str:
    return f"{MEMBER_PREFIX}{identity}"


def replica_identity(configured: str | None) -> str:
    """A risk replica's lease owner id: TRADEPLANE_REPLICA (the pod name), else host name and process id;
    made a valid key (letters, digits, - _ =)."""
    text = configured or f"{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9_=-]", "-", text)[:64]


WRITER_NAME = re.compile(r"[A-Za-z0-9_=-]{1,32}")
"""A journal writer's name: one subject token, and what a PartitionClaim's 32-byte owner field holds."""


def journal_writer(identity: str, incarnation: int) -> str:
    """A risk process's name on its journal and its claims: the head of its identity and a digest of the
    identity and the process's start, so no two processes ever write one journal, not even a container
    restarted under its pod's name."""
    digest = hashlib.blake2b(f"{identity}/{incarnation}".encode(), digest_size=4).hexdigest()
    return f"{identity[:23]}-{digest}"


def preferred_owner(partition: int, members: list[str]) -> str:
    ordered = sorted(members)
    return ordered[partition % len(ordered)]


@dataclass(frozen=True)
class Lease:
    owner: str
    address: str  # host:port order reaches the owner at
    serving: bool  # the owner has rebuilt the partition's exposure and answers for it
    revision: int

    def encode(self) -> bytes:
        return json.dumps({"owner": self.owner, "address": self.address, "serving": self.serving}).encode()

    @classmethod
    def decode(cls, data: bytes, revision: int) -> Lease:
        """A lease record; a malformed one is a ValueError naming the field."""
        try:
            document = json.loads(data)
        except ValueError as error:
            raise ValueError(f"not JSON: {error}") from None
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object")
        for name, kind in (("owner", str), ("address", str), ("serving", bool)):
            if not isinstance(document.get(name), kind):
                raise ValueError(f"{name}: expected a {kind.__name__}, got {document.get(name)!r}")
        return cls(document["owner"], document["address"], document["serving"], revision)


class LeaseTable:
    """The bucket as last seen, kept current by a watcher: leases and members by key, and when each
    key's revision was last seen to change (monotonic seconds)."""

    def __init__(self) -> None:
        self.leases: dict[str, Lease] = {}
        self.changed_at: dict[str, float] = {}
        self.synced = asyncio.Event()  # the bucket's contents at start have been read
        self.version = 0  # counts the changes applied: what was derived from an older version is stale

    def partition(self, partition: int) -> Lease | None:
        return self.leases.get(partition_key(partition))

    def expired(self, key: str, now: float, duration: float) -> bool:
        return key in self.leases and now - self.changed_at[key] >= duration

    def live_members(self, now: float, duration: float) -> list[str]:
        return [
            lease.owner
            for key, lease in self.leases.items()
            if key.startswith(MEMBER_PREFIX) and not self.expired(key, now, duration)
        ]

    def owners(self) -> dict[int, Lease | None]:
        return {partition: self.partition(partition) for partition in range(PARTITIONS)}

    def apply(self, key: str, value: bytes | None, revision: int, deleted: bool) -> None:
        lease = None
        if not deleted:
            try:
                lease = Lease.decode(value or b"", revision)
            except ValueError as error:
                log.error("lease record ignored", extra=fields(key=key, error=str(error)))
        previous = self.leases.get(key)
        if lease is None:
            self.leases.pop(key, None)
            self.changed_at.pop(key, None)
        elif previous is None or previous.revision != revision:
            self.leases[key] = lease
            self.changed_at[key] = time.monotonic()
        self.version += 1

    async def follow(self, event_log: EventLog) -> None:
        """Watch the bucket for ever; after a reconnect the watch starts over from the bucket's contents."""
        while True:
            try:
                kv = await event_log.bucket(LEASE_BUCKET)
                watcher = await kv.watchall()
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("lease bucket unavailable; retrying", extra=fields(error=repr(error)))
                await asyncio.sleep(0.5)
                continue
            reconnects = event_log.reconnects
            present: set[str] | None = set()  # keys in the bucket when the watch started, until all read
            quiet_since = time.monotonic()
            try:
                while reconnects == event_log.reconnects:
                    try:
                        entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                    except nats.errors.TimeoutError:
                        # Owners renew several times a lease: a watch this quiet while leases are held
                        # may have lost its consumer with a killed server, without a reconnect here.
                        if self.leases and time.monotonic() - quiet_since > STALE_WATCH_SECONDS:
                            log.warning("lease watch quiet; watching again")
                            break
                        continue
                    quiet_since = time.monotonic()
                    if entry is None:  # the bucket's contents at start are all read
                        if present is not None:  # what was deleted while we were away goes too
                            for key in set(self.leases) - present:
                                self.apply(key, None, 0, deleted=True)
                            present = None
                        self.synced.set()
                        continue
                    deleted = entry.operation in ("DEL", "PURGE")
                    if present is not None and not deleted:
                        present.add(entry.key)
                    self.apply(entry.key, entry.value, entry.revision or 0, deleted)
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("lease watch lost; watching again", extra=fields(error=repr(error)))
                await asyncio.sleep(0.2)
            finally:
                await _quietly_stop(watcher)


async def _quietly_stop(watcher: KeyValue.KeyWatcher) -> None:
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]
    except (TimeoutError, nats.errors.Error) as error:
        log.debug("lease watcher not stopped cleanly", extra=fields(error=repr(error)))


class PartitionOwner:
    """A risk replica's side of the leases: keeps itself a member, claims, renews and hands over.

    `claimed(partition, lease_revision)` starts the takeover (fence, replay, serve); `lost(partition)`
    stops answering for it at once; `serving(partition)` says whether its takeover is done (the lease
    tells order so)."""

    def __init__(
        self,
        identity: str,
        address: str,
        table: LeaseTable,
        claimed: Callable[[int, int], None],
        lost: Callable[[int], None],
        serving: Callable[[int], bool],
        duration: Callable[[], float],
    ) -> None:
        self.identity = identity
        self.address = address
        self.table = table
        self.claimed = claimed
        self.lost = lost
        self.serving = serving
        self.duration = duration
        self.owned: dict[int, int] = {}  # partition -> revision of our last write of its lease
        self.member_revision = 0
        self.live_since: dict[str, float] = {}  # member -> when this replica last saw it come alive
        self.wake = asyncio.Event()  # a partition started serving: say so now, not at the next renewal

    def lease(self, partition: int) -> bytes:
        return Lease(self.identity, self.address, self.serving(partition), 0).encode()

    async def run(self, kv: KeyValue) -> None:
        await self.table.synced.wait()
        while True:
            started = time.monotonic()
            try:
                await self.tick(kv, started)
            except (TimeoutError, nats.errors.Error) as error:
                # The fence in the log keeps writers apart; here only takeover time suffers.
                log.warning("lease round failed", extra=fields(error=repr(error)))
            interval = self.duration() / RENEWALS_PER_LEASE
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.0, interval - (time.monotonic() - started)))

    async def tick(self, kv: KeyValue, now: float) -> None:
        member = Lease(self.identity, self.address, True, 0).encode()
        owned = list(self.owned.items())
        renew = (kv.update(partition_key(number), self.lease(number), revision) for number, revision in owned)
        member_write, *renewals = await asyncio.gather(
            kv.put(member_key(self.identity), member), *renew, return_exceptions=True
        )
        failures: list[BaseException] = []
        if isinstance(member_write, BaseException):
            failures.append(member_write)
        else:
            self.member_revision = member_write
        for (partition, _), renewal in zip(owned, renewals, strict=True):
            if isinstance(renewal, nats.js.errors.KeyWrongLastSequenceError):
                log.warning("partition lease lost", extra=fields(partition=partition))
                self.drop(partition)
            elif isinstance(renewal, BaseException):
                failures.append(renewal)
            elif partition in self.owned:  # not dropped while the writes were in flight
                self.owned[partition] = renewal
        if failures:  # the renewals that went through are kept: their revisions are the ones to expect
            raise failures[0]
        duration = self.duration()
        members = sorted({*self.table.live_members(now, duration), self.identity})
        self.live_since = {member: self.live_since.get(member, now) for member in members}
        handed_over = False
        claimable: list[tuple[int, Lease | None]] = []
        for partition in range(PARTITIONS):
            preferred = preferred_owner(partition, members)
            if partition in self.owned:
                settled = now - self.live_since[preferred] >= duration
                if preferred != self.identity and settled and not handed_over and self.serving(partition):
                    await self.hand_over(kv, partition, preferred)
                    handed_over = True
                continue
            if preferred != self.identity:
                continue
            lease = self.table.partition(partition)
            if lease is None or self.table.expired(partition_key(partition), now, duration):
                claimable.append((partition, lease))
        # At once: the partitions of a dead peer are taken over, and replayed (risk.py: Replays), together.
        await asyncio.gather(*(self.claim(kv, partition, lease) for partition, lease in claimable))

    async def claim(self, kv: KeyValue, partition: int, expired: Lease | None) -> None:
        key, value = partition_key(partition), self.lease(partition)
        try:
            if expired is None:
                revision = await kv.create(key, value)
            else:
                revision = await kv.update(key, value, expired.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another replica was quicker
        previous = expired.owner if expired else None
        log.info("partition lease taken", extra=fields(partition=partition, previousOwner=previous))
        self.owned[partition] = revision
        self.claimed(partition, revision)

    async def hand_over(self, kv: KeyValue, partition: int, to: str) -> None:
        revision = self.owned[partition]
        self.drop(partition)
        log.info("handing a partition over", extra=fields(partition=partition, to=to))
        await kv.delete(partition_key(partition), last=revision)

    def drop(self, partition: int) -> None:
        self.owned.pop(partition, None)
        self.lost(partition)

    async def release_all(self, kv: KeyValue) -> None:
        """On SIGTERM: every lease goes at once, so others take over without waiting for expiry."""
        for partition, revision in list(self.owned.items()):
            self.drop(partition)
            try:
                await kv.delete(partition_key(partition), last=revision)
            except (TimeoutError, nats.errors.Error) as error:
                log.warning("lease not released", extra=fields(partition=partition, error=repr(error)))
        try:
            await kv.delete(member_key(self.identity), last=self.member_revision)
        except (TimeoutError, nats.errors.Error) as error:
            log.warning("membership not released", extra=fields(error=repr(error)))


def describe_owners(owners: dict[int, Lease | None]) -> dict[str, Any]:
    """Partition -> owner (and whether it serves yet) for /status and the desk."""
    return {
        str(partition): None if lease is None else {"owner": lease.owner, "serving": lease.serving}
        for partition, lease in owners.items()
    }
