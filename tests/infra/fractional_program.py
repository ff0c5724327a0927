"""A program other than tradeplane_infra's: one TradingService asking for 1.5 cores, which the program's
own configuration checks would have refused. Only the policy pack stands in its way."""

from __future__ import annotations

import os

import pulumi_kubernetes as k8s

from tradeplane.api import API_VERSION, KIND


def main() -> None:
    k8s.apiextensions.CustomResource(
        "fractional",
        api_version=API_VERSION,
        kind=KIND,
        metadata={"name": "fractional", "namespace": os.environ["FRACTIONAL_NAMESPACE"]},
        spec={
            "component": "order",
            "image": "registry.example/tradeplane-services:0.1.0",
            "replicas": 1,
            "resources": {"cpus": 1.5, "memory": "1Gi", "hugepages": {"pageSize": "1Gi", "amount": "1Gi"}},
        },
    )
