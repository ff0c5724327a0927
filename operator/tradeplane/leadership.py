"""Leader election on a coordination.k8s.io Lease: of the operator replicas, one reconciles at a time.

Every replica watches and indexes (kopf runs standalone in each), so a standby holds the whole picture
and starts reconciling the moment it is elected. The rules are client-go's leader election:

- The holder renews the Lease every `retry_seconds`. It counts itself leader only until
  `renew_deadline_seconds` after the start of its last successful renewal, so a holder that cannot reach
  the API server (partitioned, starved, paused) stops acting on its own, before anyone may take over.
- A candidate takes the Lease only once it has seen the same record (same resourceVersion) for
  `lease_seconds` by its own clock, measured from when it first saw that record: no clock comparison
  between machines. Every write carries the resourceVersion it read, so of two candidates one wins.
- `renew_deadline_seconds < lease_seconds`: the old holder has stopped before the new one starts. The
  margin covers the clocks' rates differing, not their offsets.
- A graceful exit gives the Lease up (holder cleared), so the standby takes over at its next try.

Permissions it uses: leases get/patch on the named Lease, and create when it does not exist yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tradeplane.kube import ApiError, Kube

logger = logging.getLogger("tradeplane.leadership")

LEASE_API = "coordination.k8s.io/v1"
LEASE_KIND = "Lease"


@dataclass(frozen=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    lease_seconds: int = 4
    renew_deadline_seconds: float = 3.0
    retry_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.lease_seconds < 1:
            raise ValueError(f"lease_seconds must be at least 1, got {self.lease_seconds}")
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "need 0 < retry_seconds < renew_deadline_seconds < lease_seconds, got "
                f"{self.retry_seconds}, {self.renew_deadline_seconds}, {self.lease_seconds}"
            )


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    """Holds or waits for the Lease; `leading()` says whether this replica may act right now."""

    def __init__(
        self,
        kube: Kube,
        settings: LeaseSettings,
        on_elected: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.on_elected = on_elected
        self.clock = clock
        self._leading_until = float("-inf")
        self._seen_version: str | None = None
        self._seen_since = 0.0

    def leading(self) -> bool:
        return self.clock() < self._leading_until

    async def run(self) -> None:
        """Try to acquire or renew every `retry_seconds`, until cancelled; then give the Lease up."""
        try:
            while True:
                was_leading = self.leading()
                try:
                    await self._try()
                except (ApiError, OSError) as error:
                    # Not fatal: leadership lapses by itself at the renew deadline.
                    logger.warning("lease %s: %s", self.settings.name, error)
                if self.leading() and not was_leading:
                    logger.info("lease %s: elected (%s)", self.settings.name, self.settings.identity)
                    self.on_elected()
                elif was_leading and not self.leading():
                    logger.warning("lease %s: leadership lost", self.settings.name)
                await asyncio.sleep(self.settings.retry_seconds)
        finally:
            await asyncio.shield(self._release())

    async def _try(self) -> None:
        settings = self.settings
        started = self.clock()
        lease = await self.kube.get(LEASE_API, LEASE_KIND, settings.namespace, settings.name)
        if lease is None:
            await self._create(started)
            return
        spec = lease.get("spec") or {}
        version = lease["metadata"]["resourceVersion"]
        if version != self._seen_version:
            self._seen_version, self._seen_since = version, started
        holder = spec.get("holderIdentity") or ""
        if holder == settings.identity:
            await self._write(lease, {"renewTime": _micro_time()}, started)
        elif not holder or started - self._seen_since >= settings.lease_seconds:
            now = _micro_time()
            await self._write(
                lease,
                {
                    "holderIdentity": settings.identity,
                    "leaseDurationSeconds": settings.lease_seconds,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if holder else 0),
                },
                started,
            )

    async def _create(self, started: float) -> None:
        settings = self.settings
        now = _micro_time()
        manifest = {
            "apiVersion": LEASE_API,
            "kind": LEASE_KIND,
            "metadata": {"name": settings.name, "namespace": settings.namespace},
            "spec": {
                "holderIdentity": settings.identity,
                "leaseDurationSeconds": settings.lease_seconds,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            await self.kube.create(manifest)
        except ApiError as error:
            if error.conflict:
                return  # another replica created it first: it holds the Lease
            raise
        self._leading_until = started + settings.renew_deadline_seconds

    async def _write(self, lease: dict[str, Any], spec: dict[str, Any], started: float) -> None:
        """Patch the Lease on the condition that nobody wrote it since we read it."""
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        try:
            await self.kube.patch(LEASE_API, LEASE_KIND, self.settings.namespace, self.settings.name, patch)
        except ApiError as error:
            if error.conflict:
                return  # somebody else wrote it: read again at the next try
            raise
        self._leading_until = started + self.settings.renew_deadline_seconds

    async def _release(self) -> None:
        if not self.leading():
            return
        self._leading_until = float("-inf")
        settings = self.settings
        try:
            lease = await self.kube.get(LEASE_API, LEASE_KIND, settings.namespace, settings.name)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == settings.identity:
                patch = {
                    "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": None},
                }
                await self.kube.patch(LEASE_API, LEASE_KIND, settings.namespace, settings.name, patch)
                logger.info("lease %s: released", settings.name)
        except (ApiError, OSError) as error:
            logger.warning("lease %s: could not release: %s", settings.name, error)
