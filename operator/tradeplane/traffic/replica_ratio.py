"""Replica ratio: the canary's share is its share of the ready pods behind one Service.

Every pod of both revisions sits behind the TradingService's one Service, so a caller's connections are
spread over pods, and the canary's share is canary / (stable + canary), at most 50 % (the canary never
outgrows the stable, which keeps its full size and stays warm). Coarse: with 2 stable pods the smallest
step is 33 %. The share is of connections, not of requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradeplane.api import TradingServiceSpec
from tradeplane.traffic.base import Backends, TrafficObject


class ReplicaRatioRouter:
    per_revision_services = False

    def selects(self, spec: TradingServiceSpec) -> bool:
        return True  # the default: it needs nothing but pods

    def canary_replicas(self, stable_replicas: int, weight: int) -> int:
        if stable_replicas == 0:
            return 0
        if weight >= 50:
            return stable_replicas
        return min(max(round(stable_replicas * weight / (100 - weight)), 1), stable_replicas)

    def served_weight(self, stable_ready: int, canary_ready: int, object_weight: int | None) -> int:
        serving = stable_ready + canary_ready
        return round(100 * canary_ready / serving) if serving else 0

    def reached(self, canary_ready: int, replicas: int, object_weight: int | None, weight: int) -> bool:
        return canary_ready >= replicas

    def traffic_object(self, spec: TradingServiceSpec) -> TrafficObject | None:
        return None

    def object_weight(self, live: Mapping[str, Any], backends: Backends) -> int | None:
        return None

    def object_patch(self, live: Mapping[str, Any], backends: Backends, weight: int) -> dict[str, Any] | None:
        return None
