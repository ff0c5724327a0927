"""The whole program: a trading cluster for the configured target, with tradeplane installed on it."""

from __future__ import annotations

import pulumi

from tradeplane_infra.cluster import TradingCluster
from tradeplane_infra.settings import NAMESPACE, ConfigError, Settings, parse_settings, read_config
from tradeplane_infra.stack import TradeplaneStack


def deploy(settings: Settings) -> dict[str, pulumi.Input[object]]:
    """Declares every resource; returns the stack outputs."""
    cluster = TradingCluster("tradeplane", settings)
    stack = TradeplaneStack("tradeplane", settings, provider=cluster.provider)
    nodes = settings.trading_nodes()
    return {
        "target": settings.target,
        "kubeconfig": cluster.kubeconfig,
        "tradingNodes": {"type": nodes.name, "count": nodes.count, "hugepages1Gi": nodes.hugepages_1gi},
        "tradingServices": sorted(stack.trading_services),
    }


def main() -> None:
    """The program as the engine runs it: read and check the stack config, then declare everything."""
    try:
        settings = parse_settings(read_config(pulumi.Config(NAMESPACE).get))
    except ConfigError as error:
        raise pulumi.RunError(f"invalid stack configuration:\n{error}") from None
    for name, value in deploy(settings).items():
        pulumi.export(name, value)
