"""Splitting an HTTPRoute's backends between the stable and the canary Service."""

from __future__ import annotations

from typing import Any

from tradeplane.traffic.http_route import route_canary_weight, route_rules

OTHER_RULE = {"matches": [{"path": {"value": "/other"}}], "backendRefs": [{"name": "other", "port": 80}]}


def rules(*backends: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"matches": [{"path": {"value": "/orders"}}], "backendRefs": list(backends)}, OTHER_RULE]


def test_the_service_rule_gets_both_backends_with_the_weights() -> None:
    split = route_rules(rules({"name": "order", "port": 9100}), "order", "order-canary", 25)
    assert split[0]["backendRefs"] == [
        {"name": "order", "port": 9100, "weight": 75},
        {"name": "order-canary", "port": 9100, "weight": 25},
    ]
    assert split[0]["matches"] == [{"path": {"value": "/orders"}}]
    assert split[1] == OTHER_RULE


def test_weight_zero_leaves_the_stable_alone() -> None:
    live = rules(
        {"name": "order", "port": 9100, "weight": 50}, {"name": "order-canary", "port": 9100, "weight": 50}
    )
    split = route_rules(live, "order", "order-canary", 0)
    assert split[0]["backendRefs"] == [{"name": "order", "port": 9100, "weight": 100}]


def test_the_canary_weight_is_read_back() -> None:
    assert route_canary_weight(rules({"name": "order", "port": 1}), "order", "order-canary") == 0
    split = route_rules(rules({"name": "order", "port": 1}), "order", "order-canary", 5)
    assert route_canary_weight(split, "order", "order-canary") == 5
    assert route_canary_weight([OTHER_RULE], "order", "order-canary") is None


def test_rules_of_other_services_are_untouched() -> None:
    assert route_rules([OTHER_RULE], "order", "order-canary", 50) == [OTHER_RULE]
