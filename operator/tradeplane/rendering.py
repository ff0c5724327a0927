"""Spec -> child manifests, as plain dicts ready for server-side apply. No I/O.

One TradingService `<name>` owns:

- Deployment `<name>` (the stable revision) and, during a rollout, `<name>-canary`: both rendered by
  `deployment()`, whose pod template depends on the spec and revision only, never on the role. A
  promotion hands the canary's ReplicaSet over to the stable Deployment, which adopts it only when the
  two templates are identical (see tradeplane/rollout.py). The role is a label of the Deployment.
- ConfigMap `<name>-<revision>` per live revision, so stable and canary each keep their own config;
- ControllerRevision `<name>-<revision>`: the pod-shaping spec fields of a revision, so the stable
  Deployment can be rendered again (drift restore) while a newer spec is being canaried, the way
  StatefulSets keep their history;
- Service `<name>` selecting every pod of the service (a replica-ratio split between the revisions),
  with the wire and metrics ports; when the spec names a Gateway API HTTPRoute or asks for orderFlow,
  `<name>` selects the stable revision and `<name>-canary` the canary, and the route's weights (or the
  callers, by account) split the traffic;
- a PodDisruptionBudget; a ServiceMonitor when its CRD exists.

Each manifest carries an annotation with the hash of what was rendered, so the operator can tell "the spec
changed" (apply) from "the object matches" (skip) without asking the server.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

import yaml

from tradeplane import podspec
from tradeplane.api import API_VERSION, BUNDLED_PORTS, KIND, OPERATOR_PEER, Peer, TradingServiceSpec
from tradeplane.labels import (
    APPLIED_ANNOTATION,
    COMPONENT_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    REVISION_LABEL,
    ROLE_LABEL,
)
from tradeplane.naming import Owner, Role, deployment_name, labels, revision_object_name, selector
from tradeplane.podspec import pod_template
from tradeplane.revision import template_fields
from tradeplane_services.catalog import BUNDLED, CUSTOM, callees, splits_orders

SCRAPE_INTERVAL = "5s"
PROGRESS_DEADLINE_SECONDS = 180


def _metadata(
    owner: Owner,
    name: str,
    spec: TradingServiceSpec,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner, spec), **(extra_labels or {})},
    }
    if owner.uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return metadata


def _stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    """Annotate the manifest with the hash of everything else in it."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    manifest["metadata"].setdefault("annotations", {})[APPLIED_ANNOTATION] = digest
    return manifest


def config_map(owner: Owner, spec: TradingServiceSpec, revision: str) -> dict[str, Any]:
    files = {
        name: yaml.safe_dump(settings, sort_keys=True, default_flow_style=False)
        for name, settings in podspec.config_files(spec).items()
    }
    return _stamped(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(
                owner, revision_object_name(owner, revision), spec, {REVISION_LABEL: revision}
            ),
            "data": files,
        }
    )


def controller_revision(owner: Owner, spec: TradingServiceSpec, revision: str, number: int) -> dict[str, Any]:
    """The revision's pod-shaping fields; `number` orders revisions (the generation that made it)."""
    return _stamped(
        {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": _metadata(
                owner, revision_object_name(owner, revision), spec, {REVISION_LABEL: revision}
            ),
            "data": {"spec": template_fields(spec)},
            "revision": number,
        }
    )


def spec_from_revision(data: dict[str, Any], current: TradingServiceSpec) -> TradingServiceSpec:
    """The spec a stored revision ran: its pod-shaping fields, the current spec's others."""
    return TradingServiceSpec.model_validate({**current.model_dump(mode="json"), **data["spec"]})


def deployment(
    owner: Owner,
    spec: TradingServiceSpec,
    revision: str,
    role: Role,
    replicas: int,
    paused: bool = False,
) -> dict[str, Any]:
    deployment_spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": selector(owner)},
        # Trading pools run full: a surge pod would find no free cores, so replace one pod at a time.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "revisionHistoryLimit": 2,
        "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
        "template": pod_template(owner, spec, revision),
    }
    if paused:
        deployment_spec["paused"] = True
    return _stamped(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(
                owner, deployment_name(owner, role), spec, {ROLE_LABEL: role, REVISION_LABEL: revision}
            ),
            "spec": deployment_spec,
        }
    )


def service(
    owner: Owner, spec: TradingServiceSpec, role: Role = "stable", revision: str | None = None
) -> dict[str, Any]:
    """Service `<name>` (or `<name>-canary`); with a revision it selects that revision's pods only, as a
    Gateway API route split needs, else every pod of the service (the replica-ratio split)."""
    pods = {**selector(owner), REVISION_LABEL: revision} if revision else selector(owner)
    return _stamped(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(owner, deployment_name(owner, role), spec, {ROLE_LABEL: role}),
            "spec": {
                "selector": pods,
                "ports": [
                    {"name": "wire", "port": spec.wire_port, "targetPort": "wire", "protocol": "TCP"},
                    {"name": "metrics", "port": spec.metricsPort, "targetPort": "metrics", "protocol": "TCP"},
                ],
            },
        }
    )


def disruption_budget(owner: Owner, spec: TradingServiceSpec) -> dict[str, Any]:
    return _stamped(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _metadata(owner, owner.name, spec),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector(owner)},
                # A pod that never got ready must not block draining a node.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )


def service_monitor(owner: Owner, spec: TradingServiceSpec) -> dict[str, Any]:
    return _stamped(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": _metadata(owner, owner.name, spec),
            "spec": {
                "selector": {"matchLabels": selector(owner)},
                "endpoints": [{"port": "metrics", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
            },
        }
    )


DNS_PORT = 53
NATS_PORT = 4222  # a nats:// URL without a port means NATS' default


def _peer(peer: Peer) -> dict[str, Any]:
    if peer.cidr is not None:
        return {"ipBlock": {"cidr": peer.cidr}}
    selected: dict[str, Any] = {}
    # An empty selector is stored as {} (no matchLabels): rendered so, it never looks drifted.
    if peer.namespaceLabels is not None:
        selected["namespaceSelector"] = (
            {"matchLabels": dict(peer.namespaceLabels)} if peer.namespaceLabels else {}
        )
    if peer.podLabels is not None:
        selected["podSelector"] = {"matchLabels": dict(peer.podLabels)} if peer.podLabels else {}
    return selected


def _component_pods(component: str) -> dict[str, Any]:
    """The pods of a bundled component in this namespace (whatever their TradingService is called)."""
    return {"podSelector": {"matchLabels": {COMPONENT_LABEL: str(component), MANAGED_BY_LABEL: MANAGER}}}


def _server_ports(spec: TradingServiceSpec) -> list[int]:
    """Ports of the servers outside the stack that the component's settings name by URL."""
    entry = BUNDLED.get(spec.component)
    settings = podspec.config(spec)
    ports = []
    for key, (http_port, https_port) in entry.server_urls.items() if entry else ():
        url = settings.get(key)
        if isinstance(url, str):
            ports.append(urlsplit(url).port or (https_port if url.startswith("https://") else http_port))
    return ports


def network_policy(owner: Owner, spec: TradingServiceSpec) -> dict[str, Any] | None:
    """What may reach the service's pods and whom they may reach; None when `spec.networkPolicy` opts out.

    Ingress: the wire port from the components that call it (the catalog) and from `clients` when outside
    identities log on to it; the metrics port from `metricsFrom`, and from the operator when the component
    splits its orders by account (the operator pushes it the order-flow routing there, whatever
    `metricsFrom` says: without it a canary would never get orders); market data's UDP feed from
    market-data (subscribers listen on ports of their own choosing). Egress: the wire ports of the
    components it calls, market data's feed to its subscribers, the event log's ports, the servers its
    settings name (the catalog's `server_urls`, e.g. analytics' ClickHouse), and DNS. A custom
    component declares no peers: its ingress is restricted, its egress is not.
    """
    settings = spec.networkPolicy
    if not settings.enabled:
        return None
    wire = [{"protocol": "TCP", "port": spec.wire_port}]
    callers = [_component_pods(caller) for caller in podspec.calling_components(spec)]
    if podspec.takes_clients(spec):
        callers += [_peer(peer) for peer in settings.clients]
    ingress: list[dict[str, Any]] = []
    if callers:
        ingress.append({"from": callers, "ports": wire})
    metrics_from = [_peer(peer) for peer in settings.metricsFrom]
    operator = _peer(Peer.model_validate(OPERATOR_PEER))
    if splits_orders(spec.component) and operator not in metrics_from:
        metrics_from.append(operator)
    if metrics_from:
        ingress.append({"from": metrics_from, "ports": [{"protocol": "TCP", "port": spec.metricsPort}]})
    co_located = [peer.component for peer in spec.coLocate.services] if spec.coLocate else []
    for peer in co_located:
        # A co-located peer is a replica like any other (risk's partitions): its callers elsewhere reach
        # it at this pod's address, and its clients (risk's admins) too.
        peer_callers = [_component_pods(caller) for caller in BUNDLED[peer].bundled_callers]
        if BUNDLED[peer].takes_clients:
            peer_callers += [_peer(client) for client in settings.clients]
        ingress.append({"from": peer_callers, "ports": [{"protocol": "TCP", "port": BUNDLED_PORTS[peer]}]})
    called = list(
        dict.fromkeys([*podspec.called_components(spec), *(c for p in co_located for c in callees(p))])
    )
    if "market-data" in called:
        ingress.append({"from": [_component_pods("market-data")], "ports": [{"protocol": "UDP"}]})
    policy_spec: dict[str, Any] = {
        "podSelector": {"matchLabels": selector(owner)},
        "policyTypes": ["Ingress"],
        "ingress": ingress,
    }
    if spec.component != CUSTOM:
        dns = {
            "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}],
        }
        egress = [dns]
        egress += [
            {"to": [_component_pods(peer)], "ports": [{"protocol": "TCP", "port": BUNDLED_PORTS[peer]}]}
            for peer in called
        ]
        if spec.component == "market-data":
            subscribers = [_component_pods(c) for c in podspec.calling_components(spec)]
            egress.append({"to": subscribers, "ports": [{"protocol": "UDP"}]})
        if spec.eventLog is not None:
            # The log may run in another namespace or outside the cluster, where no selector reaches:
            # its ports, to any destination.
            ports = sorted({urlsplit(url).port or NATS_PORT for url in spec.eventLog.servers})
            egress.append({"ports": [{"protocol": "TCP", "port": port} for port in ports]})
        egress += [{"ports": [{"protocol": "TCP", "port": port}]} for port in _server_ports(spec)]
        policy_spec["policyTypes"].append("Egress")
        policy_spec["egress"] = egress
    return _stamped(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(owner, owner.name, spec),
            "spec": policy_spec,
        }
    )


def stable_children(
    owner: Owner, spec: TradingServiceSpec, revision: str, *, monitoring: bool, number: int = 1
) -> list[dict[str, Any]]:
    """Everything a service with no rollout in flight consists of (what `tradeplane render` prints)."""
    children = [
        controller_revision(owner, spec, revision, number),
        config_map(owner, spec, revision),
        deployment(owner, spec, revision, "stable", spec.replicas),
        service(owner, spec),
        disruption_budget(owner, spec),
    ]
    policy = network_policy(owner, spec)
    if policy is not None:
        children.append(policy)
    if monitoring:
        children.append(service_monitor(owner, spec))
    return children
