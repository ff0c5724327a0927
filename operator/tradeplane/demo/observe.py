"""What the demo's screen shows, read from where it lives: the API server, the pods' own /metrics, position.

Latency comes from the services' own microsecond histograms through the same scrape provider the canary
analysis uses, so the figures on screen are the ones the gates judge.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tradeplane.api import BUNDLED_PORTS, DEFAULT_METRICS_PORT, GROUP, PLURAL, VERSION
from tradeplane.labels import NAME_LABEL, REVISION_LABEL
from tradeplane.measurement import Measurement, Target
from tradeplane.providers.scrape import ScrapeProvider
from tradeplane_services.client import positions
from tradeplane_services.config import Address
from tradeplane_services.protocol import price_value, symbol_text
from tradeplane_services.sessions import Credentials

LATENCY_WINDOW = "5s"


@dataclass(frozen=True)
class Pod:
    name: str
    service: str
    revision: str
    node: str
    uid: str
    ip: str


@dataclass(frozen=True)
class Position:
    account: int
    symbol: str
    quantity: int
    realized: float


@dataclass(frozen=True)
class Snapshot:
    services: list[dict[str, Any]]
    pods: list[Pod]
    latency: dict[tuple[str, str], Measurement]
    """(service, revision) -> the last window's figures from the pods' own histograms."""
    positions: list[Position]
    events: list[dict[str, Any]] = field(default_factory=list)

    def service(self, name: str) -> dict[str, Any]:
        return next((item for item in self.services if item["metadata"]["name"] == name), {})

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.service(name).get("status") or {}
        return status

    def pods_of(self, service: str, revision: str | None = None) -> list[Pod]:
        return [pod for pod in self.pods if pod.service == service and revision in (None, pod.revision)]


class Observer:
    """Reads one Snapshot of a namespace per call; keeps the scrape history between calls."""

    def __init__(self, kubeconfig: Path, namespace: str, creds: Credentials) -> None:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.creds = creds  # a client's, to read positions with
        self.scraper = ScrapeProvider()

    def snapshot(self) -> Snapshot:
        listed: dict[str, Any] = self.custom.list_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, self.namespace, PLURAL
        )
        services = sorted(listed["items"], key=lambda item: item["metadata"]["name"])
        pods = self._pods()
        return Snapshot(
            services=services,
            pods=pods,
            latency=asyncio.run(self._latency(services, pods)),
            positions=self._positions(services, pods),
            events=self._events(),
        )

    def running_pods(self, service: str) -> list[Pod]:
        return [pod for pod in self._pods(f"{NAME_LABEL}={service}") if pod.service == service]

    def _pods(self, selector: str = "") -> list[Pod]:
        found: list[Any] = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return [
            Pod(
                pod.metadata.name,
                pod.metadata.labels.get(NAME_LABEL, ""),
                pod.metadata.labels.get(REVISION_LABEL, ""),
                pod.spec.node_name or "",
                pod.metadata.uid,
                pod.status.pod_ip,
            )
            for pod in found
            if pod.status.phase == "Running" and pod.status.pod_ip and pod.metadata.deletion_timestamp is None
        ]

    async def _latency(
        self, services: list[dict[str, Any]], pods: list[Pod]
    ) -> dict[tuple[str, str], Measurement]:
        ports = {item["metadata"]["name"]: _metrics_port(item) for item in services}
        targets = [
            Target(
                self.namespace,
                service,
                revision,
                tuple(f"{pod.ip}:{ports[service]}" for pod in pods if (pod.service, pod.revision) == key),
            )
            for key in sorted({(pod.service, pod.revision) for pod in pods if pod.service in ports})
            for service, revision in [key]
        ]
        results = await asyncio.gather(
            *(self.scraper.measure(target, LATENCY_WINDOW) for target in targets), return_exceptions=True
        )
        return {
            (target.service, target.revision): result
            for target, result in zip(targets, results, strict=True)
            if isinstance(result, Measurement)
        }

    def _positions(self, services: list[dict[str, Any]], pods: list[Pod]) -> list[Position]:
        position = next((item for item in services if item["spec"]["component"] == "position"), None)
        holders = [pod for pod in pods if position and pod.service == position["metadata"]["name"]]
        if not position or not holders:
            return []
        port = position["spec"].get("port") or BUNDLED_PORTS["position"]
        try:
            reports = positions(Address(holders[0].ip, port), timeout=1.0, creds=self.creds)
        except (OSError, RuntimeError):
            return []  # position is restarting: the next snapshot asks again
        return sorted(
            (
                Position(
                    report.account,
                    symbol_text(report.symbol),
                    report.quantity,
                    price_value(report.realized_pnl),
                )
                for report in reports
            ),
            key=lambda p: (p.account, p.symbol),
        )

    def _events(self) -> list[dict[str, Any]]:
        found: list[Any] = self.core.list_namespaced_event(self.namespace).items
        events = [
            {
                "time": event.last_timestamp or event.event_time or event.metadata.creation_timestamp,
                "type": event.type,
                "reason": event.reason,
                "object": event.involved_object.name,
                "message": event.message,
            }
            for event in found
            if event.involved_object.kind == "TradingService"
        ]
        return sorted(events, key=lambda event: event["time"])


def _metrics_port(item: dict[str, Any]) -> int:
    return int(item["spec"].get("metricsPort") or DEFAULT_METRICS_PORT)
