"""The five bundled TradingServices, built through the operator's own API models.

Pulumi and `kubectl apply` send the same documents: each spec is a `tradeplane.api.TradingServiceSpec`,
so a field the CRD does not know fails here, in Python, before it reaches an API server. Component
settings left empty get the operator's defaults.
"""

from __future__ import annotations

from typing import Any

from tradeplane.api import HugePages, Resources, TradingServiceSpec
from tradeplane_infra.settings import Settings


def trading_service_specs(settings: Settings) -> dict[str, TradingServiceSpec]:
    """Service name to spec, for the bundled components."""
    return {
        component: TradingServiceSpec(
            component=component,
            image=settings.image,
            replicas=service.replicas,
            resources=Resources(
                cpus=service.cpus,
                memory=service.memory,
                hugepages=HugePages(pageSize="1Gi", amount=f"{service.hugepages1Gi}Gi"),
            ),
            config=service.config,
        )
        for component, service in settings.services.by_component().items()
    }


def spec_document(spec: TradingServiceSpec) -> dict[str, Any]:
    document: dict[str, Any] = spec.model_dump(exclude_none=True, mode="json")
    return document
