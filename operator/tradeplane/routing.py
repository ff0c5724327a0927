"""The routing push edge: order-flow routing to every caller pod, and what they answer back.

Each reconcile of an orderFlow service POSTs its `RoutingTable` to `http://<caller pod>:<metricsPort>/routing`
(why a push, and why it is safe, in traffic/order_flow.py). The answers (the weight each caller holds,
its counters of orders per revision) are kept per service for the next reconcile: `report` is what the
rollout sees of the callers. A caller that does not answer leaves the held weight unknown, so no step
counts as reached until every caller holds it; that caller's own lease takes it back to the stable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx

from tradeplane.traffic.order_flow import CallerReport, RoutedCounts
from tradeplane_services.orderflow import RoutingAnswer, RoutingError, RoutingTable

logger = logging.getLogger("tradeplane")

PUSH_TIMEOUT_SECONDS = 0.5
"""Well inside the one-second tick and any lease: a caller this slow is treated as not holding it."""
ServiceKey = tuple[str, str]


@dataclass
class _Callers:
    counts: RoutedCounts = field(default_factory=RoutedCounts)
    answers: list[RoutingAnswer] | None = None
    """The last push's answers; None when a caller did not answer it."""


@dataclass
class RoutingPushes:
    timeout: float = PUSH_TIMEOUT_SECONDS
    clock: Callable[[], float] = time.monotonic
    _services: dict[ServiceKey, _Callers] = field(default_factory=dict)
    _client: httpx.AsyncClient | None = None

    def report(self, key: ServiceKey, stable_revisions: Iterable[str]) -> CallerReport:
        callers = self._services.get(key)
        if callers is None:
            return CallerReport(None, None)
        answers = None if callers.answers is None else tuple(callers.answers)
        return CallerReport(answers, callers.counts.canary_share(stable_revisions))

    async def push(self, key: ServiceKey, table: RoutingTable, endpoints: Sequence[str]) -> int:
        """Push to every caller pod at once; keep their answers for the next `report`. Answers how many
        pushes failed."""
        callers = self._services.setdefault(key, _Callers())
        client = self._http()
        body = table.document()
        results = await asyncio.gather(*(self._push_one(client, endpoint, body) for endpoint in endpoints))
        now = self.clock()
        answers: list[RoutingAnswer] | None = []
        failed = 0
        for endpoint, result in zip(endpoints, results, strict=True):
            if isinstance(result, RoutingAnswer):
                callers.counts.observe(now, endpoint, result.routed)
                if answers is not None:
                    answers.append(result)
                continue
            answers = None
            failed += 1
            logger.warning("%s/%s: routing push to caller %s failed: %s", key[0], key[1], endpoint, result)
        callers.counts.forget(endpoints)
        callers.answers = answers
        return failed

    async def withdraw(self, key: ServiceKey, table: RoutingTable, endpoints: Sequence[str]) -> None:
        """Push a canary-free table to callers that are running but not ready: one may still hold a
        canary share from when it was ready, and its clients' sessions outlive its readiness. Best effort:
        their answers count for nothing, and one that does not answer falls back by its lease."""
        if table.weight_basis_points != 0 or not endpoints:
            return
        client, body = self._http(), table.document()
        results = await asyncio.gather(*(self._push_one(client, endpoint, body) for endpoint in endpoints))
        for endpoint, result in zip(endpoints, results, strict=True):
            if not isinstance(result, RoutingAnswer):
                logger.info("%s/%s: unready caller %s not told: %s", key[0], key[1], endpoint, result)

    def forget(self, key: ServiceKey) -> None:
        self._services.pop(key, None)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    async def _push_one(
        self, client: httpx.AsyncClient, endpoint: str, body: dict[str, object]
    ) -> RoutingAnswer | Exception:
        try:
            response = await client.post(f"http://{endpoint}/routing", json=body)
        except httpx.HTTPError as error:
            return RuntimeError(str(error) or type(error).__name__)
        if response.status_code != 200:
            return RuntimeError(f"HTTP {response.status_code}: {response.text.strip()}")
        try:
            return RoutingAnswer.from_document(response.json())
        except (RoutingError, ValueError) as error:
            return error
