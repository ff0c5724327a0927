"""HTTPRoute: a Gateway API route splits the traffic between a stable and a canary Service by weight.

The spec names the route (`spec.rollout.httpRoute`); the user owns it, the operator only sets the weights
of this service's backends in it (a merge patch of its rules). Each revision gets a Service of its own, and
the canary needs only its share of the stable's capacity. Any weight 0-100 is exact for HTTP requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tradeplane.api import TradingServiceSpec
from tradeplane.traffic.base import Backends, TrafficObject

ROUTE_API = "gateway.networking.k8s.io/v1"


class HTTPRouteRouter:
    per_revision_services = True

    def selects(self, spec: TradingServiceSpec) -> bool:
        return spec.rollout.httpRoute is not None

    def canary_replicas(self, stable_replicas: int, weight: int) -> int:
        if stable_replicas == 0:
            return 0
        return min(max(math.ceil(stable_replicas * weight / 100), 1), stable_replicas)

    def served_weight(self, stable_ready: int, canary_ready: int, object_weight: int | None) -> int:
        return object_weight or 0

    def reached(self, canary_ready: int, replicas: int, object_weight: int | None, weight: int) -> bool:
        return canary_ready >= replicas and object_weight == weight

    def traffic_object(self, spec: TradingServiceSpec) -> TrafficObject | None:
        route = spec.rollout.httpRoute
        if route is None:
            return None
        return TrafficObject(ROUTE_API, "HTTPRoute", route.name, "spec.rollout.httpRoute")

    def object_weight(self, live: Mapping[str, Any], backends: Backends) -> int | None:
        return route_canary_weight(_rules(live), backends.stable, backends.canary)

    def object_patch(self, live: Mapping[str, Any], backends: Backends, weight: int) -> dict[str, Any] | None:
        rules = _rules(live)
        split = route_rules(rules, backends.stable, backends.canary, weight)
        return None if split == rules else {"spec": {"rules": split}}


def _rules(live: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(live.get("spec", {}).get("rules") or [])


def route_rules(
    rules: list[dict[str, Any]], stable_service: str, canary_service: str, canary_weight: int
) -> list[dict[str, Any]]:
    """An HTTPRoute's rules with this service's traffic split: stable 100 - weight, canary weight.

    A rule is this service's when a backendRef names its stable or canary Service; its backends become
    exactly those two (the canary left out at weight 0). Other rules and their backends stay as they are.
    """
    split: list[dict[str, Any]] = []
    for rule in rules:
        backends = rule.get("backendRefs") or []
        ours = [ref for ref in backends if ref.get("name") in (stable_service, canary_service)]
        if not ours:
            split.append(rule)
            continue
        template = {key: value for key, value in ours[0].items() if key not in ("name", "weight")}
        refs = [{**template, "name": stable_service, "weight": 100 - canary_weight}]
        if canary_weight > 0:
            refs.append({**template, "name": canary_service, "weight": canary_weight})
        split.append({**rule, "backendRefs": refs})
    return split


def route_canary_weight(rules: list[dict[str, Any]], stable_service: str, canary_service: str) -> int | None:
    """The canary's percent in the first rule routing to this service; None when no rule does."""
    for rule in rules:
        refs = {ref.get("name"): ref.get("weight", 1) for ref in rule.get("backendRefs") or []}
        if stable_service in refs or canary_service in refs:
            total = refs.get(stable_service, 0) + refs.get(canary_service, 0)
            return round(100 * refs.get(canary_service, 0) / total) if total else 0
    return None
