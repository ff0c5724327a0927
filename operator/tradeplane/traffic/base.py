"""The interface every traffic router implements, and the objects it speaks of."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tradeplane.api import TradingServiceSpec


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


class TrafficRouter(Protocol):
    per_revision_services: bool
    """Whether stable and canary need a Service each (the object splits between them), rather than one
    Service selecting every pod."""

    def selects(self, spec: TradingServiceSpec) -> bool:
        """Whether this mechanism is the one the spec asks for."""
        ...

    def canary_replicas(self, stable_replicas: int, weight: int) -> int:
        """Canary pods for a weight; never more than the stable, which keeps its size."""
        ...

    def served_weight(self, stable_ready: int, canary_ready: int, object_weight: int | None) -> int:
        """The canary's share as served now, percent."""
        ...

    def reached(self, canary_ready: int, replicas: int, object_weight: int | None, weight: int) -> bool:
        """Whether the step's weight is in force."""
        ...

    def traffic_object(self, spec: TradingServiceSpec) -> TrafficObject | None: ...

    def object_weight(self, live: Mapping[str, Any], backends: Backends) -> int | None:
        """The canary's weight on the live traffic object; None when the object does not route here."""
        ...

    def object_patch(self, live: Mapping[str, Any], backends: Backends, weight: int) -> dict[str, Any] | None:
        """The merge patch that sets the canary's weight on the object; None when it already holds."""
        ...
