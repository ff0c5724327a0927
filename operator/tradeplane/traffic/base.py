"""The interface every traffic router implements, and the objects it speaks of. Weights are basis points."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tradeplane.api import BASIS_POINTS, TradingServiceSpec


@dataclass(frozen=True)
class TrafficObject:
    """The object a mechanism steers traffic with, in the TradingService's namespace."""

    api_version: str
    kind: str
    name: str
    field: str
    """The spec field that names it, for messages."""


@dataclass(frozen=True)
class Backends:
    """The stable and canary Services of one TradingService, as a traffic object refers to them."""

    stable: str
    canary: str


@dataclass(frozen=True)
class Serving:
    """What serves the canary now, as the reconcile observed it."""

    stable_ready: int = 0
    canary_ready: int = 0
    held_weight: int | None = None
    """The canary's weight where the mechanism holds it (the route's backends, the weight every caller
    acknowledged); None when nothing holds one (no route, no caller answered)."""
    counted_weight: int | None = None
    """The canary's share of the requests the callers counted lately; None when nothing was counted."""


class TrafficRouter(Protocol):
    per_revision_services: bool
    """Whether stable and canary need a Service each (the object splits between them), rather than one
    Service selecting every pod."""
    sets_weight: bool
    """Whether the mechanism is told a weight (a route, the callers), rather than following the pods."""

    def selects(self, spec: TradingServiceSpec) -> bool:
        """Whether this mechanism is the one the spec asks for."""
        ...

    def canary_replicas(self, stable_replicas: int, weight: int) -> int:
        """Canary pods for a weight; never more than the stable, which keeps its size."""
        ...

    def served_weight(self, serving: Serving) -> int:
        """The canary's share as served now."""
        ...

    def reached(self, serving: Serving, replicas: int, weight: int) -> bool:
        """Whether the step's weight is in force."""
        ...

    def traffic_object(self, spec: TradingServiceSpec) -> TrafficObject | None: ...

    def object_weight(self, live: Mapping[str, Any], backends: Backends) -> int | None:
        """The canary's weight on the live traffic object; None when the object does not route here."""
        ...

    def object_patch(self, live: Mapping[str, Any], backends: Backends, weight: int) -> dict[str, Any] | None:
        """The merge patch that sets the canary's weight on the object; None when it already holds."""
        ...


class WithoutTrafficObject:
    """For mechanisms that steer no object of the API (the pods, the callers): nothing to read or patch."""

    def traffic_object(self, spec: TradingServiceSpec) -> TrafficObject | None:
        return None

    def object_weight(self, live: Mapping[str, Any], backends: Backends) -> int | None:
        return None

    def object_patch(self, live: Mapping[str, Any], backends: Backends, weight: int) -> dict[str, Any] | None:
        return None


def share_replicas(stable_replicas: int, weight: int) -> int:
    """Canary pods to serve `weight` of what the stable serves: at least one, at most the stable's count."""
    if stable_replicas == 0:
        return 0
    return min(max(math.ceil(stable_replicas * weight / BASIS_POINTS), 1), stable_replicas)
