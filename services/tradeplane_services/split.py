"""A caller's side of an order-flow canary: one peer reached through its stable and its canary revision.

The stable revision is the peer's Service (TRADEPLANE_<PEER>_ADDR: on Kubernetes the stable Service
selects the stable revision only during an order-flow rollout); the canary's pods are named by the
routing the operator pushes (orderflow.py). Each new order goes by its account's bucket; an order stays on
the link its check went to for everything after (replace checks, exposure updates), so a revision never
hears of an order it did not book.

Fail-safe: the canary share holds only while the lease holds, counted on this process's monotonic clock
(the event loop's timer) from the last push; when it lapses the weight is 0 and new orders go to the
stable. Switching never drops an order: a link that leaves the routing keeps its session until every
check sent on it had time to be answered (or rejected by the caller's timeout).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tradeplane_services.config import parse_address
from tradeplane_services.orderflow import (
    STABLE_BEFORE_ROUTING,
    RoutingAnswer,
    RoutingError,
    RoutingTable,
    bucket,
)
from tradeplane_services.runtime import Connection, PeerLink, Service, fields, log


class AccountSplit(Collector):
    """Orders to `peer`, split by account between its stable and canary revisions."""

    def __init__(
        self,
        service: Service[Any],
        peer: str,
        handlers: dict[type, Callable[[Connection, Any], None]],
        on_down: Callable[[], None],
        answer_within: Callable[[], float],
    ) -> None:
        self.service = service
        self.peer = peer
        self.handlers = handlers
        self.answer_within = answer_within
        """Seconds within which a check sent on a link is answered or rejected: how long a link that left
        the routing keeps its session."""
        self.stable = service.link(peer, handlers, on_down=on_down)
        self.table: RoutingTable | None = None
        self.weight = 0
        """Basis points in force: the table's while its lease holds, else 0."""
        self.canary: dict[str, PeerLink] = {}
        self._canary_order: list[PeerLink] = []
        self._salt = b""
        self._stable_revision = STABLE_BEFORE_ROUTING
        self._canary_revision = ""
        self._booked: dict[int, PeerLink] = {}  # order_id -> the canary link that booked it
        self._lapse: asyncio.TimerHandle | None = None
        self.routed: Counter[str] = Counter()  # orders per revision of the peer
        service.registry.register(self)
        service.splits[peer] = self

    @property
    def connected(self) -> bool:
        return self.stable.connected

    # --- the order path -----------------------------------------------------------------------------

    def route(self, account: int, order_id: int, new: bool) -> PeerLink:
        """The link for an order's check: the one that booked it, else by the account's bucket."""
        booked = self._booked.get(order_id)
        if booked is not None:
            return booked
        link = self.stable
        revision = self._stable_revision
        weight = self.weight
        if weight:
            position = bucket(account, self._salt)
            if position < weight:
                links = self._canary_order
                chosen = links[position % len(links)]
                if chosen.connected:
                    link, revision = chosen, self._canary_revision
                    self._booked[order_id] = chosen
                # A canary pod that is not connected: the stable answers rather than nobody.
        if new:
            self.routed[revision] += 1
        return link

    def decided(self, order_id: int, booked: bool) -> None:
        """The peer answered an order's check; one it refused (`booked` False) hears nothing more."""
        if not booked:
            self._booked.pop(order_id, None)

    def update_link(self, order_id: int, done: bool) -> PeerLink:
        """The link for an exposure update: where the order was booked; forgotten once it is done."""
        booked = self._booked.pop(order_id, None) if done else self._booked.get(order_id)
        return booked if booked is not None else self.stable

    # --- the routing --------------------------------------------------------------------------------

    def apply(self, table: RoutingTable) -> RoutingAnswer:
        """Take a pushed routing: new canary links, the weight, the lease renewed from now."""
        if table.peer != self.peer:
            raise RoutingError(f"peer: this split routes {self.peer}, not {table.peer}")
        if self._lapse is not None:
            self._lapse.cancel()
        if self.table is None or table.salt != self.table.salt:
            # A new rollout: accounts are placed afresh, and no order of the last one is pinned.
            self._salt = table.salt_key
        self._stable_revision = table.stable_revision
        self._canary_revision = table.canary_revision
        self._connect(table.canary)
        was = self.weight
        self.table = table
        self.weight = table.weight_basis_points
        self._lapse = asyncio.get_running_loop().call_later(table.lease_seconds, self._lapsed)
        if was != self.weight:
            log.info(
                "routing changed",
                extra=fields(
                    peer=self.peer,
                    canary=table.canary_revision,
                    weight_basis_points=self.weight,
                    lease_seconds=table.lease_seconds,
                ),
            )
        return self.answer()

    def answer(self) -> RoutingAnswer:
        return RoutingAnswer(self.peer, self.weight, dict(self.routed))

    def _lapsed(self) -> None:
        self._lapse = None
        if self.weight:
            log.warning(
                "routing lease lapsed: canary share back to 0",
                extra=fields(peer=self.peer, canary=self._canary_revision, weight_basis_points=self.weight),
            )
        self.weight = 0

    def _connect(self, endpoints: tuple[str, ...]) -> None:
        for endpoint in endpoints:
            if endpoint not in self.canary:
                link = PeerLink(
                    self.peer,
                    parse_address(endpoint, "canary"),
                    self.handlers,
                    self.service.metrics,
                    self.service.credentials,
                    source=self.service.environment.bind,
                )
                link.start()
                self.canary[endpoint] = link
        for endpoint in [endpoint for endpoint in self.canary if endpoint not in endpoints]:
            link = self.canary.pop(endpoint)
            asyncio.get_running_loop().create_task(self._retire(link))
        self._canary_order = [self.canary[endpoint] for endpoint in endpoints]

    async def _retire(self, link: PeerLink) -> None:
        # Checks already sent on it are answered there (or time out into a rejection) before it closes.
        await asyncio.sleep(self.answer_within())
        for order_id in [order_id for order_id, booked in self._booked.items() if booked is link]:
            del self._booked[order_id]
        await link.stop()

    async def stop(self) -> None:
        if self._lapse is not None:
            self._lapse.cancel()
        for link in self.canary.values():
            await link.stop()

    # --- what the operator and Prometheus read ------------------------------------------------------

    def document(self) -> dict[str, Any]:
        return {
            **(self.table.document() if self.table else {"peer": self.peer}),
            "weightInForce": self.weight,
            "routed": dict(self.routed),
            "ordersOnCanary": len(self._booked),
            "canaryConnected": {endpoint: link.connected for endpoint, link in self.canary.items()},
        }

    def collect(self) -> Iterator[Metric]:
        labels = self.service.metrics.labels
        routed = CounterMetricFamily(
            "tradeplane_routed_orders",
            "New orders sent to a peer, by the peer's revision (order-flow canaries).",
            labels=[*labels, "peer", "peer_revision"],
        )
        for revision, count in sorted(self.routed.items()):
            routed.add_metric([*labels.values(), self.peer, revision], count)
        yield routed
        weight = GaugeMetricFamily(
            "tradeplane_routing_weight_basis_points",
            "The canary's share of new orders in force (0 once the routing lease lapsed).",
            labels=[*labels, "peer"],
        )
        weight.add_metric([*labels.values(), self.peer], self.weight)
        yield weight


def routing_route(service: Service[Any]) -> Callable[[bytes], tuple[int, str, bytes]]:
    """POST /routing: take the operator's routing for one of the service's splits; answer what it holds."""

    def take(body: bytes) -> tuple[int, str, bytes]:
        try:
            table = RoutingTable.from_document(json.loads(body or b"null"))
            split = service.splits.get(table.peer)
            if split is None:
                raise RoutingError(f"peer: {service.name} splits no orders to {table.peer}")
            answer = split.apply(table)
        except (RoutingError, ValueError) as error:
            return 400, "text/plain", f"routing refused: {error}\n".encode()
        return 200, "application/json", json.dumps(answer.document()).encode()

    return take
