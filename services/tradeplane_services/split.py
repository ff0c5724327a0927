"""A caller's side of an order-flow canary: one peer reached through its stable and its canary revision.

The stable revision is the peer's Service (TRADEPLANE_<PEER>_ADDR: on Kubernetes the stable Service
selects the stable revision only during an order-flow rollout); the canary's pods are named by the
routing the operator pushes (orderflow.py). Each new order goes by its account's bucket; an order stays on
the link its check went to for everything after (replace checks, exposure updates), so a revision never
hears of an order it did not book.

Sticky: a share comes into force once a canary pod is connected, and from then on the canary's accounts
stay with its revision; while none of its pods is reachable their orders are refused (RISK_UNAVAILABLE),
never checked by the stable, which knows nothing of what the canary booked for them. Only the end of the
rollout (a table without the share) or the lapse of the lease hands them back to the stable.

Fail-safe: the canary share holds only while the lease holds, counted on this process's monotonic clock
(the event loop's timer) from the last push; when it lapses the weight is 0 and new orders go to the
stable. Switching never drops an order: a link that leaves the routing keeps its session until every
check sent on it had time to be answered (or rejected by the caller's timeout).

Shadow mode: the stable answers every order. An order of an account below the weight is "shadowed": a
copy of its check goes to the canary after the stable's (with the next write, off the order's path), its
exposure updates follow (so the canary's limits see what the stable's see), and the canary's answers never
reach the caller's handlers: the check's answer is compared with the stable's (shadow.py), anything else
the canary says (a kill switch status) is dropped. A decision of 0 (OK) means the canary booked the order;
when the stable refuses an order the canary booked, the canary is told to release it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tradeplane_services.config import parse_address
from tradeplane_services.orderflow import (
    SHADOW,
    STABLE_BEFORE_ROUTING,
    RoutingAnswer,
    RoutingError,
    RoutingTable,
    bucket,
)
from tradeplane_services.protocol import FrameRun, Reason
from tradeplane_services.runtime import Connection, PeerLink, Service, fields, log
from tradeplane_services.shadow import OUTCOMES, ShadowComparisons

Decision = tuple[int, int]
"""A peer's answer to a request: (request id, decision), 0 meaning accepted."""


class AccountSplit(Collector):
    """Orders to `peer`, split by account between its stable and canary revisions."""

    def __init__(
        self,
        service: Service[Any],
        peer: str,
        handlers: dict[type, Callable[[Connection, Any], None]],
        on_down: Callable[[], None],
        answer_within: Callable[[], float],
        decision_of: Callable[[Any], Decision | None],
        release: Callable[[int], Any],
        runs: dict[type, Callable[[Connection, FrameRun], None]] | None = None,
    ) -> None:
        self.service = service
        self.peer = peer
        self.handlers = handlers
        self.answer_within = answer_within
        """Seconds within which a check sent on a link is answered or rejected: how long a link that left
        the routing keeps its session."""
        self.decision_of = decision_of
        """The (request id, decision) a message from the peer answers, None for anything else."""
        self.release = release
        """The message that frees what the peer booked for a request (shadow: the stable refused it)."""
        self.stable = service.link(peer, handlers, on_down=on_down, runs=runs)
        """The stable's link; `runs` handle what it sends together (see `follows_no_order`)."""
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
        self.routed: Counter[str] = Counter()  # orders per revision of the peer (shadow: copied to)
        self.mode = ""
        self._shadowed: dict[int, PeerLink] = {}  # order_id -> the canary link its copies go to
        self.comparisons = ShadowComparisons(self._answer_within_ns())
        self._canary_handlers = {kind: self._from_canary(handler) for kind, handler in handlers.items()}
        service.registry.register(self)
        service.splits[peer] = self

    @property
    def connected(self) -> bool:
        return self.stable.connected

    # --- the order path -----------------------------------------------------------------------------

    def route(self, account: int, order_id: int, new: bool) -> PeerLink | None:
        """The link for an order's check: the one that booked it, else by the account's bucket; None when
        the account's revision is the canary and no canary pod is connected: the order is refused rather
        than checked by the stable, which knows nothing of what the canary booked for the account."""
        booked = self._booked.get(order_id)
        if booked is not None:
            return booked
        weight = self.weight
        if not weight or (position := bucket(account, self._salt)) >= weight:
            if new:
                self.routed[self._stable_revision] += 1
            return self.stable
        if new:
            self.routed[self._canary_revision] += 1
        chosen = self._connected_canary(position)
        if self.mode == SHADOW:  # the stable answers every order; a copy goes where it can
            if chosen is not None:
                self._shadowed[order_id] = chosen
            return self.stable
        if chosen is not None:
            self._booked[order_id] = chosen
        return chosen

    @property
    def follows_no_order(self) -> bool:
        """No order is tied to a revision: nothing is routed to a canary, booked there or copied there, so
        every check goes to the stable (`route` is not needed) and its answers need no `decided` each."""
        return not (self.weight or self._booked or self._shadowed or self.comparisons)

    def routed_to_stable(self, checks: int) -> None:
        """`checks` new orders' checks went to the stable without `route` (see `follows_no_order`)."""
        self.routed[self._stable_revision] += checks

    def _connected_canary(self, position: int) -> PeerLink | None:
        """The account's canary pod, or another connected one of the same revision."""
        links = self._canary_order
        if not links:
            return None
        preferred = links[position % len(links)]
        if preferred.connected:
            return preferred
        return next((link for link in links if link.connected), None)

    def decided(self, order_id: int, decision: int, booked: bool) -> None:
        """The peer answered an order's check; one it refused (`booked` False) hears nothing more."""
        self.comparisons.stable_decided(order_id, decision)
        if not booked:
            self._booked.pop(order_id, None)
            shadow = self._shadowed.pop(order_id, None)
            if shadow is not None:
                # The canary may have booked it: it would hold that exposure for ever.
                shadow.send_later(self.release(order_id))

    def copy(self, order_id: int, message: Any, check: bool, done: bool, sent: bool) -> None:
        """Shadow: the canary's copy of a message `sent` to the stable for a shadowed order (a new order's
        check when `check`); after a `done` one the order is forgotten."""
        link = self._shadowed.pop(order_id, None) if done else self._shadowed.get(order_id)
        if link is None or not sent:
            return
        if check:
            self.comparisons.copied(order_id, self._canary_revision, time.perf_counter_ns())
        link.send_later(message)

    def sweep(self, now_ns: int) -> None:
        """Copies the canary did not answer in time are counted unanswered (and forgotten)."""
        self.comparisons.answer_within_ns = self._answer_within_ns()
        self.comparisons.expire(now_ns)

    def _answer_within_ns(self) -> int:
        return round(self.answer_within() * 1e9)

    def _from_canary(self, handler: Callable[[Connection, Any], None]) -> Callable[[Connection, Any], None]:
        """A canary's answer reaches the caller only for an order it booked live; in shadow mode nothing
        else it says does either (its kill switch status, say)."""

        def handle(connection: Connection, message: Any) -> None:
            decision = self.decision_of(message)
            if decision is None:
                if self.mode != SHADOW:
                    handler(connection, message)
                return
            order_id, reason = decision
            if order_id in self._booked:
                handler(connection, message)
            elif self.comparisons.canary_decided(order_id, reason) and reason != Reason.OK:
                self._shadowed.pop(order_id, None)  # not booked there: it hears nothing more
            # Anything else answers a copy: a late one, or a replace's.

        return handle

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
        same_canary = table.canary_revision == self._canary_revision
        self._stable_revision = table.stable_revision
        self._canary_revision = table.canary_revision
        self.mode = table.mode
        if table.canary or not same_canary:
            self._connect(table.canary, same_canary)
        # else: the canary has no ready pod just now; its accounts stay with it (and wait) meanwhile.
        self.table = table
        self._lapse = asyncio.get_running_loop().call_later(table.lease_seconds, self._lapsed)
        # A share comes into force once a canary pod is connected (so the operator sees it held only
        # then), and stays with its revision from then on, connected or not, while the lease holds.
        pinned = same_canary and self.weight > 0
        connected = any(link.connected for link in self._canary_order)
        self._hold(table.weight_basis_points if pinned or connected else 0)
        return self.answer()

    def _canary_up(self, endpoint: str, _: Connection) -> None:
        """A canary pod logged on: the share waiting for one comes into force now, not at the next push."""
        current = self.table is not None and endpoint in self.table.canary
        if current and self.table is not None and self._lapse is not None and not self.weight:
            self._hold(self.table.weight_basis_points)

    def _hold(self, weight: int) -> None:
        if weight == self.weight:
            return
        self.weight = weight
        assert self.table is not None
        log.info(
            "routing changed",
            extra=fields(
                peer=self.peer,
                canary=self.table.canary_revision,
                mode=self.table.mode,
                weight_basis_points=weight,
                lease_seconds=self.table.lease_seconds,
            ),
        )

    def answer(self) -> RoutingAnswer:
        return RoutingAnswer(self.peer, self.weight, dict(self.routed), self._canary_revision)

    def _lapsed(self) -> None:
        self._lapse = None
        if self.weight:
            log.warning(
                "routing lease lapsed: canary share back to 0",
                extra=fields(peer=self.peer, canary=self._canary_revision, weight_basis_points=self.weight),
            )
        self.weight = 0

    def _connect(self, endpoints: tuple[str, ...], same_canary: bool) -> None:
        """Links to the canary's pods at `endpoints`. A new canary revision gets new links only: its pod
        may have the address an old revision's pod had, and a link kept from then may still be logged
        on to that pod's process, which would answer for accounts it never held."""
        gone = [endpoint for endpoint in self.canary if endpoint not in endpoints or not same_canary]
        for endpoint in gone:
            link = self.canary.pop(endpoint)
            asyncio.get_running_loop().create_task(self._retire(link))
        for endpoint in endpoints:
            if endpoint not in self.canary:
                link = PeerLink(
                    self.peer,
                    parse_address(endpoint, "canary"),
                    self._canary_handlers,
                    self.service.metrics,
                    self.service.credentials,
                    on_up=partial(self._canary_up, endpoint),
                    source=self.service.environment.bind,
                )
                link.start()
                self.canary[endpoint] = link
        self._canary_order = [self.canary[endpoint] for endpoint in endpoints]

    async def _retire(self, link: PeerLink) -> None:
        # Checks already sent on it are answered there (or time out into a rejection) before it closes.
        await asyncio.sleep(self.answer_within())
        for orders in (self._booked, self._shadowed):
            for order_id in [order_id for order_id, booked in orders.items() if booked is link]:
                del orders[order_id]
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
            "ordersShadowed": len(self._shadowed),
            "comparisonsPending": len(self.comparisons),
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
        decisions = CounterMetricFamily(
            "tradeplane_shadow_decisions",
            "Shadow rollouts: checks copied to a peer's canary revision, by how its decision compared "
            "with the stable's (match, mismatch, unanswered: the canary did not answer in time, "
            "stable_unanswered).",
            labels=[*labels, "peer", "peer_revision", "outcome"],
        )
        comparisons = self.comparisons
        for revision in sorted({revision for revision, _ in comparisons.outcomes}):
            for outcome in OUTCOMES:
                count = comparisons.outcomes[(revision, outcome)]
                decisions.add_metric([*labels.values(), self.peer, revision, outcome], count)
        yield decisions
        mismatches = CounterMetricFamily(
            "tradeplane_shadow_mismatches",
            "Shadow rollouts: mismatched decisions by the stable's and the canary's reason.",
            labels=[*labels, "peer", "peer_revision", "stable_reason", "canary_reason"],
        )
        for (revision, stable, canary), count in sorted(comparisons.mismatches.items()):
            names = [*labels.values(), self.peer, revision, _reason_name(stable), _reason_name(canary)]
            mismatches.add_metric(names, count)
        yield mismatches


def _reason_name(code: int) -> str:
    try:
        return Reason(code).name
    except ValueError:
        return str(code)


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
