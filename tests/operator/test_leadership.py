"""Leader election on a Lease, against the real API server: one leader at a time, even across a partition."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tradeplane.kube import Kube
from tradeplane.leadership import LEASE_API, LEASE_KIND, Leadership, LeaseSettings

pytestmark = pytest.mark.cluster

SETTINGS = LeaseSettings(
    name="operators",
    namespace="",
    identity="a",
    lease_seconds=2,
    renew_deadline_seconds=1.5,
    retry_seconds=0.2,
)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def until(condition: object, timeout: float, what: str) -> float:
    """Poll every 10 ms; the moment (monotonic) the condition held."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


def test_a_partitioned_leader_stops_before_the_standby_takes_over(kube_env: Path, namespace: str) -> None:
    async def scenario() -> None:
        settings = replace(SETTINGS, namespace=namespace)
        first = Leadership(Kube.from_environment(str(kube_env)), settings)
        second = Leadership(Kube.from_environment(str(kube_env)), replace(settings, identity="b"))
        tasks = [asyncio.create_task(first.run())]
        overlaps = 0

        async def watch_overlap() -> None:
            nonlocal overlaps
            while True:
                overlaps += first.leading() and second.leading()
                await asyncio.sleep(0.005)

        try:
            await until(first.leading, timeout=30, what="the first candidate elected (it creates the Lease)")
            tasks += [asyncio.create_task(second.run()), asyncio.create_task(watch_overlap())]
            # While the leader renews, three lease durations go by and the standby never leads.
            await asyncio.sleep(3 * settings.lease_seconds)
            assert first.leading() and not second.leading()

            # The leader loses the API server: its renewals fail from now on.
            partitioned_kube = first.kube
            first.kube = Kube(httpx.AsyncClient(base_url=f"https://127.0.0.1:{closed_port()}"))
            partitioned = time.monotonic()
            stopped = await until(lambda: not first.leading(), timeout=30, what="the leader to stand down")
            elected = await until(second.leading, timeout=30, what="the standby elected")
            assert overlaps == 0, "both candidates counted themselves leader at once"
            assert stopped - partitioned <= settings.renew_deadline_seconds + 0.5
            assert elected > stopped
            lease = await second.kube.get(LEASE_API, LEASE_KIND, namespace, settings.name)
            assert lease is not None
            assert (lease["spec"]["holderIdentity"], lease["spec"]["leaseTransitions"]) == ("b", 1)
            await first.kube.close()
            first.kube = partitioned_kube
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await first.kube.close()
            await second.kube.close()

        # Cancelled (a graceful exit), the leader gave the Lease up: nobody holds it.
        kube = Kube.from_environment(str(kube_env))
        try:
            lease = await kube.get(LEASE_API, LEASE_KIND, namespace, settings.name)
        finally:
            await kube.close()
        assert lease is not None and not lease["spec"].get("holderIdentity")

    asyncio.run(scenario())


def test_lease_settings_refuse_a_renew_deadline_past_the_lease() -> None:
    with pytest.raises(ValueError, match="renew_deadline_seconds < lease_seconds"):
        replace(SETTINGS, renew_deadline_seconds=2.5)
