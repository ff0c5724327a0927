"""Replica ratio: the canary's share is its share of the ready pods behind one Service.

Every pod of both revisions sits behind the TradingService's one Service, so a caller's connections are
spread over pods, and the canary's share is canary / (stable + canary), at most 50 % (the canary never
outgrows the stable, which keeps its full size and stays warm). Coarse: with 2 stable pods the smallest
step is 33 %. The share is of connections, not of requests.
"""

from __future__ import annotations

from tradeplane.api import BASIS_POINTS, TradingServiceSpec
from tradeplane.traffic.base import Serving, WithoutTrafficObject

HALF = BASIS_POINTS // 2


class ReplicaRatioRouter(WithoutTrafficObject):
    per_revision_services = False
    sets_weight = False

    def selects(self, spec: TradingServiceSpec) -> bool:
        return True  # the default: it needs nothing but pods

    def canary_replicas(self, stable_replicas: int, weight: int) -> int:
        if stable_replicas == 0:
            return 0
        if weight >= HALF:
            return stable_replicas
        return min(max(round(stable_replicas * weight / (BASIS_POINTS - weight)), 1), stable_replicas)

    def served_weight(self, serving: Serving) -> int:
        ready = serving.stable_ready + serving.canary_ready
        return round(BASIS_POINTS * serving.canary_ready / ready) if ready else 0

    def reached(self, serving: Serving, replicas: int, weight: int) -> bool:
        return serving.canary_ready >= replicas
