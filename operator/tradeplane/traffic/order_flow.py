"""Order flow: the callers of the service split its orders by account, at basis-point resolution.

A Service balances connections, and trading sessions live all day, so a replica ratio splits sessions, not
orders. Here each revision gets a Service of its own (the stable one, named as the callers know it,
selects the stable revision only; `<name>-canary` the canary) and the callers (order, for risk) keep a
session to each and route every new order by its account's bucket (tradeplane_services.orderflow): exact
to a basis point across accounts, an account on one revision for the whole rollout. The canary needs
only its share of the stable's pods.

The routing reaches the callers as a push: every reconcile of a rollout (one a second) the operator
POSTs the `RoutingTable` (the canary's ready pods, the weight, the rollout's salt, the lease) to each
caller pod's HTTP port, and reads back the weight the caller holds and its counters of orders routed per
revision: `status.actualWeight` is the canary's share of what the callers counted in the last
COUNT_WINDOW_SECONDS, not a pod count. Why a push rather than callers watching the API: the lease is the
point. A caller renews nothing by itself; if the operator dies, is partitioned, or loses its leadership,
the pushes stop and every caller's canary share falls to zero within `leaseSeconds`, with no API server
in the loop (a watch would keep serving the last routing it saw). A rollback is the next push, in the
same reconcile as the failing verdict. It uses what the operator already needs for the scrape provider:
the pods' addresses and their HTTP port, which the callers' NetworkPolicy opens to the operator's pods
(rendering.network_policy); no RBAC beyond reading pods, no ServiceAccount token in the trading pods.
A forged push can at most send orders to another process that proves it holds the peer's session key.

In shadow mode (`orderFlow.mode: shadow`) the same table says which accounts' checks are copied to the
canary; the stable answers them all (tradeplane_services.split).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tradeplane.api import BASIS_POINTS, TradingServiceSpec
from tradeplane.naming import Owner
from tradeplane.traffic.base import Serving, WithoutTrafficObject, share_replicas
from tradeplane_services.orderflow import RoutingAnswer, RoutingTable

COUNT_WINDOW_SECONDS = 5.0
"""The span of orders `status.actualWeight` is measured over."""


class OrderFlowRouter(WithoutTrafficObject):
    per_revision_services = True
    sets_weight = True

    def selects(self, spec: TradingServiceSpec) -> bool:
        return spec.rollout.orderFlow is not None

    def canary_replicas(self, stable_replicas: int, weight: int) -> int:
        return share_replicas(stable_replicas, weight)

    def served_weight(self, serving: Serving) -> int:
        return serving.counted_weight or 0

    def reached(self, serving: Serving, replicas: int, weight: int) -> bool:
        return serving.canary_ready >= replicas and serving.held_weight == weight


def routing_table(
    owner: Owner,
    spec: TradingServiceSpec,
    stable_revision: str,
    canary_revision: str | None,
    canary_endpoints: Iterable[str],
    weight: int,
) -> RoutingTable:
    """What the callers hold: without a canary, weight 0 and no canary pods (the last push of a rollout);
    `canary_endpoints` are its ready pods."""
    if spec.rollout.orderFlow is None:
        raise ValueError("spec.rollout.orderFlow is not set: the service's callers route nothing")
    canary = tuple(sorted(canary_endpoints)) if canary_revision is not None else ()
    revision = canary_revision or stable_revision
    return RoutingTable(
        peer=spec.component,
        stable_revision=stable_revision,
        canary_revision=revision,
        canary=canary,
        # With no ready canary pod the share stays: callers holding it keep the canary's accounts with
        # it (refused meanwhile), callers not holding it yet take it once a pod is there to connect to.
        weight_basis_points=weight if canary_revision is not None else 0,
        # Per rollout: another canary places the accounts afresh; the same one, after an operator
        # restart, exactly as before.
        salt=f"{owner.namespace}/{owner.name}/{revision}",
        lease_seconds=spec.rollout.orderFlow.leaseSeconds,
        mode=spec.rollout.orderFlow.mode,
    )


@dataclass(frozen=True)
class CallerReport:
    """What the callers answered the last routing pushes."""

    answers: tuple[RoutingAnswer, ...] | None
    """The last push's answers; None when a caller did not answer it (or there is none)."""
    counted_weight: int | None
    """The canary's share of the orders they counted in the window; None without orders."""

    def held_weight(self, canary_revision: str) -> int | None:
        """The weight every caller holds for `canary_revision`: the lowest when they differ (a push that
        did not land yet). A caller holding another revision's share holds none of this one's: a new
        canary replacing one mid-step is not reached on the old one's answers. None when a caller did not
        answer."""
        if not self.answers:
            return None
        return min(
            answer.weight_basis_points if answer.canary_revision in (None, canary_revision) else 0
            for answer in self.answers
        )


@dataclass
class RoutedCounts:
    """The callers' counters of routed orders, turned into the canary's recent share of the orders.

    Each caller pod's counters are cumulative since its process started; a counter that went down means
    a restart, and counts from zero again.
    """

    window: float = COUNT_WINDOW_SECONDS
    _last: dict[str, dict[str, int]] = field(default_factory=dict)
    _increases: deque[tuple[float, dict[str, int]]] = field(default_factory=deque)

    def observe(self, now: float, caller: str, routed: Mapping[str, int]) -> None:
        before = self._last.get(caller)
        restarted = before is not None and any(n < before.get(revision, 0) for revision, n in routed.items())
        if before is not None:
            base = {} if restarted else before
            increase = {revision: n - base.get(revision, 0) for revision, n in routed.items()}
            self._increases.append((now, increase))
        self._last[caller] = dict(routed)
        while self._increases and self._increases[0][0] < now - self.window:
            self._increases.popleft()

    def forget(self, callers: Iterable[str]) -> None:
        """Callers no longer pushed to (pods gone): their last counters would only go stale."""
        for caller in set(self._last) - set(callers):
            del self._last[caller]

    def canary_share(self, stable_revisions: Iterable[str]) -> int | None:
        """Basis points of the window's orders that went to any revision but the stable; None without
        orders."""
        stable = set(stable_revisions)
        total = off_stable = 0
        for _, increase in self._increases:
            for revision, count in increase.items():
                total += count
                if revision not in stable:
                    off_stable += count
        return round(BASIS_POINTS * off_stable / total) if total else None
