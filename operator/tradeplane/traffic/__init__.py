"""Traffic routers: how a canary's share of the traffic is set and observed, one module per mechanism.

The rollout state machine decides a weight per step, in basis points; the router of the spec's mechanism
says how many canary pods that weight needs, whether it is reached, and what weight is actually served. A
mechanism that steers traffic through an object of its own (an HTTPRoute) names it, the controller reads
it before the reconcile and applies the router's patch after it; order flow's callers hold the routing
themselves and are pushed it (order_flow.py); a state shadow's canary takes no traffic at all
(state_shadow.py). Adding a mechanism: a module here implementing
`TrafficRouter`, its settings in `api.Rollout`, and one entry in `ROUTERS` (first match wins).
"""

from __future__ import annotations

from tradeplane.api import TradingServiceSpec
from tradeplane.traffic.base import Backends, Serving, TrafficObject, TrafficRouter
from tradeplane.traffic.http_route import HTTPRouteRouter
from tradeplane.traffic.order_flow import OrderFlowRouter
from tradeplane.traffic.replica_ratio import ReplicaRatioRouter
from tradeplane.traffic.state_shadow import StateShadowRouter

__all__ = ["ROUTERS", "Backends", "Serving", "TrafficObject", "TrafficRouter", "router_for"]
ROUTERS: tuple[TrafficRouter, ...] = (
    StateShadowRouter(),
    OrderFlowRouter(),
    HTTPRouteRouter(),
    ReplicaRatioRouter(),
)


def router_for(spec: TradingServiceSpec) -> TrafficRouter:
    return next(router for router in ROUTERS if router.selects(spec))
