"""The Kubernetes kinds the operator reads and writes, defined once: API path, plural, scope, and which
of them are a TradingService's children (applied by the operator and watched for drift)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from tradeplane.api import API_VERSION, KIND, PLURAL


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{quote(namespace)}" if self.namespaced and namespace else ""
        path = f"{root}{scope}/{self.plural}"
        if name:
            path += f"/{quote(name)}"
        return path + (f"/{subresource}" if subresource else "")


CHILD_KINDS = (
    Kind("apps/v1", "Deployment", "deployments"),
    Kind("v1", "Service", "services"),
    Kind("v1", "ConfigMap", "configmaps"),
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    Kind("apps/v1", "ControllerRevision", "controllerrevisions"),
    Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
)
KINDS: dict[tuple[str, str], Kind] = {
    (kind.api_version, kind.kind): kind
    for kind in (
        *CHILD_KINDS,
        Kind(API_VERSION, KIND, PLURAL),
        Kind("v1", "Pod", "pods"),
        Kind("v1", "Node", "nodes", namespaced=False),
        Kind("v1", "Event", "events"),
        Kind("v1", "Namespace", "namespaces", namespaced=False),
        Kind("apps/v1", "ReplicaSet", "replicasets"),
        Kind("node.k8s.io/v1", "RuntimeClass", "runtimeclasses", namespaced=False),
        Kind("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
        Kind("coordination.k8s.io/v1", "Lease", "leases"),
    )
}


def kind_of(api_version: str, kind: str) -> Kind:
    try:
        return KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"{api_version} {kind} is not a kind this operator knows") from None
