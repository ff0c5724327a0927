"""State shadow: the canary of a log projection serves no client; it is judged by its state, not its answers.

A projection (position) is rebuilt from the event log by every replica, so a canary needs no traffic to
show what it would answer: it replays and follows the same log, and at the same log sequence it must hold
the same state as the stable. Each revision gets a Service of its own (the stable one, named as clients
know it, selects the stable revision only; `<name>-canary` the canary, for the operator and people to
inspect), so no client ever reads from the canary. The step's weight sets only how many canary pods run,
a share of the stable's; the weight served is 0. A step is reached when those pods are ready (a position
pod is ready once it has caught up with the log).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tradeplane.api import TradingServiceSpec
from tradeplane.traffic.base import Backends, Serving, TrafficObject, share_replicas


class StateShadowRouter:
    per_revision_services = True
    sets_weight = False

    def selects(self, spec: TradingServiceSpec) -> bool:
        return spec.rollout.stateShadow is not None

    def canary_replicas(self, stable_replicas: int, weight: int) -> int:
        return share_replicas(stable_replicas, weight)

    def served_weight(self, serving: Serving) -> int:
        return 0  # no client reaches the canary

    def reached(self, serving: Serving, replicas: int, weight: int) -> bool:
        return serving.canary_ready >= replicas

    def traffic_object(self, spec: TradingServiceSpec) -> TrafficObject | None:
        return None

    def object_weight(self, live: Mapping[str, Any], backends: Backends) -> int | None:
        return None

    def object_patch(self, live: Mapping[str, Any], backends: Backends, weight: int) -> dict[str, Any] | None:
        return None
