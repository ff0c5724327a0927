"""The bundled components, each defined once: its service class, settings, wire port and callers.

Everything that needs to know the bundled components reads them here: `tradeplane-svc` (which class a
process runs, which settings it validates), the local stack (ports, peers, start order), the sessions
(who may log on to whom and send what), and the operator (the API's component names and default ports,
the peers it wires into each pod, the NetworkPolicies, the CRD). Adding a service is one new module and
one entry in `BUNDLED`: see services/README.md, "Adding a bundled service".
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Any

from tradeplane_services.settings import (
    AnalyticsSettings,
    ExecutionSettings,
    MarketDataSettings,
    OrderSettings,
    PositionSettings,
    RiskSettings,
    Settings,
)

ADMIN = "admin"  # operators of the platform: the kill switch
CLIENT = "client"  # trading clients: order entry, positions, market data
CUSTOM = "custom"  # the API's name for any image that is not a bundled component


class UnknownComponent(ValueError):
    """A component name that is not in the catalog."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown component {name!r}: expected one of {', '.join(BUNDLED)}")


@dataclass(frozen=True)
class BundledComponent:
    name: str
    service: str
    """`module:Class` of its Service, imported on demand: each process loads only its own service."""
    settings: type[Settings]
    port: int
    """Wire-protocol port: part of the API (`spec.port` defaults to it) and the local stack's port."""
    callers: Mapping[str, tuple[str, ...]]
    """Who may log on to it (a bundled component's name, ADMIN or CLIENT) and the messages each may send,
    by the protocol's class names; heartbeats are always allowed."""
    rendered_defaults: Mapping[str, Any] = field(default_factory=dict)
    """Settings the operator writes into the component's ConfigMap unless `spec.config` overrides them."""
    server_urls: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Settings that name a server outside the stack by http(s) URL, with the server's default ports
    (http, https) for a URL that names none: its NetworkPolicy lets it reach that port."""
    ring_reachable: bool = True
    """Whether a co-located caller may reach it over shared-memory rings (ringtransport.py) instead of TCP;
    not market-data, whose feed is UDP beside its TCP subscriptions."""
    split_by: tuple[str, ...] = ()
    """Callers that split their orders to it by account (split.py), so its canaries can take an exact
    share of the orders (`spec.rollout.orderFlow`)."""
    projects_log: bool = False
    """Whether it is a projection of the event log that answers DIGESTS_ROUTE, so its canaries can run as
    a state shadow (`spec.rollout.stateShadow`): replaying the same log, compared with the stable at the
    same log sequences, serving no client."""

    @property
    def peer_variable(self) -> str:
        """The variable its callers read its `host:port` from."""
        return f"TRADEPLANE_{self.name.upper().replace('-', '_')}_ADDR"

    @property
    def bundled_callers(self) -> list[str]:
        return [caller for caller in self.callers if caller in BUNDLED]

    @property
    def takes_clients(self) -> bool:
        """Whether identities from outside the stack (trading clients, admins) log on to it."""
        return any(caller not in BUNDLED for caller in self.callers)

    def service_class(self) -> Any:
        module, _, name = self.service.partition(":")
        return getattr(importlib.import_module(module), name)


def _catalog(*components: BundledComponent) -> dict[str, BundledComponent]:
    return {component.name: component for component in components}


BUNDLED: dict[str, BundledComponent] = _catalog(
    BundledComponent(
        "order",
        "tradeplane_services.order:OrderService",
        OrderSettings,
        7001,
        {CLIENT: ("NewOrder", "CancelOrder", "ReplaceOrder")},
        {"riskTimeoutMillis": 500},
    ),
    BundledComponent(
        "risk",
        "tradeplane_services.risk:RiskService",
        RiskSettings,
        7002,
        {"order": ("RiskCheck", "RiskUpdate"), ADMIN: ("SetKillSwitch",)},
        {"killSwitch": "ACTIVE"},
        split_by=("order",),
    ),
    BundledComponent(
        "market-data",
        "tradeplane_services.marketdata:MarketDataService",
        MarketDataSettings,
        7003,
        # Subscriptions and replay requests are TCP on the wire port; the UDP feed itself goes to the
        # multicast group or each subscriber's own port.
        {
            identity: ("Subscribe", "ReplayRequest")
            for identity in ("risk", "position", "analytics", CLIENT, ADMIN)
        },
        {"ticksPerSecond": 10_000},
        ring_reachable=False,
    ),
    BundledComponent(
        "execution",
        "tradeplane_services.execution:ExecutionService",
        ExecutionSettings,
        7004,
        # Nothing reaches execution except through order, whose orders pass risk first.
        {"order": ("RouteOrder", "CancelRoute", "ReplaceRoute")},
        {"venue": "simulated"},
    ),
    BundledComponent(
        "position",
        "tradeplane_services.position:PositionService",
        PositionSettings,
        7005,
        # Fills reach position through the event log, never over a session.
        {CLIENT: ("PositionQuery",), ADMIN: ("PositionQuery",)},
        {"snapshotEveryEvents": 1000},
        projects_log=True,
    ),
    BundledComponent(
        "analytics",
        "tradeplane_services.analytics:AnalyticsService",
        AnalyticsSettings,
        7006,
        {},  # answers over HTTP only (its metrics port); nobody calls it over a session
        server_urls={"clickhouseUrl": (8123, 8443)},  # a ClickHouse server instead of chDB in the pod
    ),
)
CALLERS: dict[str, Mapping[str, tuple[str, ...]]] = {name: entry.callers for name, entry in BUNDLED.items()}
IDENTITIES = (*BUNDLED, ADMIN, CLIENT)


def component(name: str) -> BundledComponent:
    try:
        return BUNDLED[name]
    except KeyError:
        raise UnknownComponent(name) from None


def callees(name: str) -> list[str]:
    """The bundled components `name` opens sessions to."""
    return [callee for callee, entry in BUNDLED.items() if name in entry.callers]


def ring_callees(name: str) -> list[str]:
    """The bundled components `name` calls that may share its pod and be reached over rings."""
    return [callee for callee in callees(name) if BUNDLED[callee].ring_reachable]


def splitting_callers(name: str) -> tuple[str, ...]:
    """The bundled components that split their orders to `name` by account; none for a custom one."""
    entry = BUNDLED.get(name)
    return entry.split_by if entry is not None else ()


def splits_orders(name: str) -> bool:
    """Whether `name` splits its orders to some peer by account (and so takes routing pushes)."""
    return any(name in entry.split_by for entry in BUNDLED.values())


ORDER_FLOW_COMPONENTS = tuple(name for name, entry in BUNDLED.items() if entry.split_by)
"""The components whose canaries can take an order-flow share."""
STATE_SHADOW_COMPONENTS = tuple(name for name, entry in BUNDLED.items() if entry.projects_log)
"""The components whose canaries can run as a state shadow."""
DIGESTS_ROUTE = "/digests"
"""GET on the metrics port of a log projection: `{"sequence", "digest", "history": [[sequence, digest],
...]}`, digests as 16 hex digits, the history oldest first (position.py says what a digest covers)."""


def start_order() -> tuple[str, ...]:
    """Every bundled component after the ones it calls, so each finds its peers listening."""
    return tuple(TopologicalSorter({name: callees(name) for name in BUNDLED}).static_order())
