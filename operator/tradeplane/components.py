"""What a bundled component needs beyond its spec: protocol, command, config defaults, peers.

The services read their settings from `TRADEPLANE_CONFIG` (the operator's ConfigMap, top-level camelCase
keys as in `spec.config`) and where to listen and whom to call from `TRADEPLANE_*` environment variables.
Peers are addressed by Service DNS name, `<component>.<namespace>.svc:<port>`: the bundled stack names its
TradingServices after their components (see samples/), so each finds the others without lookups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tradeplane.api import BUNDLED_PORTS, Component, TradingServiceSpec
from tradeplane_services.roles import CALLERS

SERVICE_COMMAND = "tradeplane-svc"
CONFIG_DIR = "/etc/tradeplane"
CONFIG_FILE = "config.yaml"
STATE_DIR = "/var/lib/tradeplane"
# Session keys: a Secret volume of its own (a mount inside the read-only config volume cannot be made).
KEYS_DIR = "/etc/tradeplane-keys"
PRESTOP_SLEEP_SECONDS = 5
DEFAULT_DRAIN_SECONDS = 10
# Margin past the drain for the process to exit after finishing in-flight work.
EXIT_MARGIN_SECONDS = 5
# The components other services call, and the variable each caller reads its address from.
PEER_VARIABLES: dict[str, str] = {
    Component.RISK: "TRADEPLANE_RISK_ADDR",
    Component.EXECUTION: "TRADEPLANE_EXECUTION_ADDR",
    Component.MARKET_DATA: "TRADEPLANE_MARKET_DATA_ADDR",
}


@dataclass(frozen=True)
class ComponentDefaults:
    config: Mapping[str, Any] = field(default_factory=dict)


BUNDLED: dict[str, ComponentDefaults] = {
    Component.ORDER: ComponentDefaults(config={"riskTimeoutMillis": 500}),
    Component.RISK: ComponentDefaults(config={"killSwitch": "ACTIVE"}),
    # Subscriptions and replay requests are TCP on the wire port; the UDP feed itself goes to the multicast
    # group or each subscriber's own port, so it needs no Service port.
    Component.MARKET_DATA: ComponentDefaults(config={"ticksPerSecond": 10_000}),
    Component.EXECUTION: ComponentDefaults(config={"venue": "simulated"}),
    Component.POSITION: ComponentDefaults(config={"snapshotEveryEvents": 1000}),
}
CUSTOM = ComponentDefaults()


def defaults(spec: TradingServiceSpec) -> ComponentDefaults:
    return BUNDLED.get(spec.component, CUSTOM)


def container_name(spec: TradingServiceSpec) -> str:
    return "service" if spec.component == Component.CUSTOM else str(spec.component)


def command(spec: TradingServiceSpec) -> list[str]:
    if spec.component == Component.CUSTOM:
        return list(spec.command)
    return [SERVICE_COMMAND, str(spec.component)]


def config(spec: TradingServiceSpec) -> dict[str, Any]:
    """The component's defaults, overridden key by key (deeply) by `spec.config`."""
    return _merge(dict(defaults(spec).config), spec.config)


def calling_components(spec: TradingServiceSpec) -> list[str]:
    """The bundled components that open sessions to this one."""
    return [caller for caller in CALLERS.get(spec.component, {}) if caller in BUNDLED_PORTS]


def called_components(spec: TradingServiceSpec) -> list[str]:
    """The bundled components this one opens sessions to."""
    return [callee for callee, callers in CALLERS.items() if spec.component in callers]


def takes_clients(spec: TradingServiceSpec) -> bool:
    """Whether identities from outside the stack (trading clients, admins) log on to this component;
    a custom component's callers are unknown, so it is treated as taking them."""
    return spec.component == Component.CUSTOM or any(c not in BUNDLED_PORTS for c in CALLERS[spec.component])


def session_identities(spec: TradingServiceSpec) -> list[str]:
    """Whose session keys a bundled component's pod holds: its own (to log on to its peers) and its
    callers' (to check their logons). Custom components hold none."""
    if spec.component == Component.CUSTOM:
        return []
    return [str(spec.component), *CALLERS[spec.component]]


def drain_seconds(spec: TradingServiceSpec) -> int:
    """How long the service may take to drain on SIGTERM (its `drainTimeoutSeconds` setting)."""
    value = spec.config.get("drainTimeoutSeconds", DEFAULT_DRAIN_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return DEFAULT_DRAIN_SECONDS  # the service refuses such a value itself, naming the key
    return math.ceil(value)


def termination_grace_seconds(spec: TradingServiceSpec) -> int:
    """preStop sleep (endpoints go first), then the drain, then a margin to exit."""
    return PRESTOP_SLEEP_SECONDS + drain_seconds(spec) + EXIT_MARGIN_SECONDS


def environment(
    spec: TradingServiceSpec, namespace: str, revision: str, service: str
) -> list[dict[str, Any]]:
    """The container's env: where to listen, the revision it runs, its config file and its peers."""
    variables: list[dict[str, Any]] = [
        {"name": "TRADEPLANE_SERVICE", "value": service},
        {"name": "TRADEPLANE_REVISION", "value": revision},
        {"name": "TRADEPLANE_CONFIG", "value": f"{CONFIG_DIR}/{CONFIG_FILE}"},
        {"name": "TRADEPLANE_BIND", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # A stable name per replica: risk's partition lease owner id (it advertises podIP:port to order).
        {"name": "TRADEPLANE_REPLICA", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TRADEPLANE_PORT", "value": str(spec.wire_port)},
        {"name": "TRADEPLANE_METRICS_PORT", "value": str(spec.metricsPort)},
        {"name": "TRADEPLANE_STATE_DIR", "value": STATE_DIR},
    ]
    if spec.component != Component.CUSTOM:
        variables.append({"name": "TRADEPLANE_KEYS_DIR", "value": KEYS_DIR})
        variables += [
            # Only the peers it calls: what its NetworkPolicy lets it reach, and all it needs to find.
            {"name": PEER_VARIABLES[peer], "value": f"{peer}.{namespace}.svc:{BUNDLED_PORTS[peer]}"}
            for peer in called_components(spec)
        ]
    if spec.component != Component.CUSTOM and spec.eventLog is not None:
        variables += [
            {"name": "TRADEPLANE_EVENT_LOG", "value": ",".join(spec.eventLog.servers)},
            {"name": "TRADEPLANE_EVENT_LOG_REPLICAS", "value": str(spec.eventLog.replicas)},
        ]
    return variables


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged
