"""`TradeplaneStack`: namespaces, the operator from the Helm chart, and the five bundled TradingServices."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from tradeplane.api import API_VERSION, KIND
from tradeplane_infra.services import spec_document, trading_service_specs
from tradeplane_infra.settings import Settings, split_image

RELEASE_NAME = "tradeplane"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def helm_values(settings: Settings) -> dict[str, Any]:
    """The chart's values: watch only the trading namespace, run the configured image, then the user's."""
    values: dict[str, Any] = {"watchNamespaces": [settings.namespace]}
    if settings.operatorImage:
        repository, tag, digest = split_image(settings.operatorImage)
        values["image"] = {"repository": repository, "tag": tag or "", "digest": digest or ""}
    return deep_merge(values, settings.helmValues)


class TradeplaneStack(pulumi.ComponentResource):
    trading_services: dict[str, k8s.apiextensions.CustomResource]

    def __init__(
        self,
        name: str,
        settings: Settings,
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("tradeplane:infra:TradeplaneStack", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        operator_namespace = k8s.core.v1.Namespace(
            f"{name}-operator", metadata={"name": settings.operatorNamespace}, opts=child
        )
        trading_namespace = k8s.core.v1.Namespace(
            f"{name}-trading", metadata={"name": settings.namespace}, opts=child
        )
        release = k8s.helm.v3.Release(
            f"{name}-operator",
            name=RELEASE_NAME,
            # Relative to the program's directory, so the state does not depend on the checkout's location.
            chart=os.path.relpath(settings.chart_dir),
            namespace=operator_namespace.metadata.name,
            values=helm_values(settings),
            # The chart's RBAC is namespaced to the watched namespace, which must exist first.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[trading_namespace])),
        )
        # The CRD comes with the chart.
        after_release = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[release]))
        self.trading_services = {
            service: k8s.apiextensions.CustomResource(
                f"{name}-{service}",
                api_version=API_VERSION,
                kind=KIND,
                metadata={
                    "name": service,
                    "namespace": trading_namespace.metadata.name,
                    "labels": {"app.kubernetes.io/part-of": "tradeplane"},
                },
                spec=spec_document(spec),
                opts=after_release,
            )
            for service, spec in trading_service_specs(settings).items()
        }
        self.register_outputs({})
