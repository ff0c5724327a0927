"""The pod a TradingService runs, from its spec alone: read this module top to bottom to follow a spec into
its pod template. Pure, no I/O.

- Guaranteed QoS: the kubelet's static CPU manager gives exclusive cores only to Guaranteed pods with an
  integer cpu, where every container and init container has cpu and memory requests == limits.
  `qos_violations` checks the whole rendered pod spec, so no pod can be Burstable by accident.
- hugepages-<size> with requests == limits, mounted through an emptyDir of medium HugePages-<size>.
- node affinity to the pool label and a toleration of the pool's taint; one replica per host on request.
- CRI-O annotations for the isolation asks, and the runtime class that enables them.
- a restricted security context: non-root, read-only root filesystem, no privilege escalation, every
  capability dropped, NET_ADMIN / NET_RAW added back only when the spec asks.
- co-located peers (`spec.coLocate`): each a container of the same pod, Guaranteed like the first, serving
  the first over a pair of shared-memory rings in an emptyDir they share (medium HugePages-<size> or
  Memory) instead of TCP; the ring files are charged to the peer's container, which creates them.
- what a bundled component needs beyond its spec (from the component catalog): its command, config
  defaults, the peers it calls and whose session keys it holds. The services read their settings from
  `TRADEPLANE_CONFIG` (the ConfigMap, top-level camelCase keys as in `spec.config`) and where to listen
  and whom to call from `TRADEPLANE_*` variables. Peers are addressed by Service DNS name,
  `<component>.<namespace>.svc:<port>`: the bundled stack names its TradingServices after their
  components (see samples/), so each finds the others without lookups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tradeplane.api import TradingServiceSpec
from tradeplane.labels import HOSTNAME_LABEL, NAME_LABEL, POOL_LABEL, REVISION_LABEL
from tradeplane.naming import Owner, labels, revision_object_name
from tradeplane.quantity import canonical_quantity, parse_quantity
from tradeplane_services.catalog import BUNDLED, CUSTOM, callees
from tradeplane_services.config import RING_BYTES, RING_FILES, RING_HEADER_BYTES, RingAddress

CRIO_ANNOTATIONS = {
    "cpuLoadBalancing": "cpu-load-balancing.crio.io",
    "irqLoadBalancing": "irq-load-balancing.crio.io",
    "cpuQuota": "cpu-quota.crio.io",
}
HUGEPAGES_MOUNT = "/dev/hugepages"
RINGS_MOUNT = "/run/tradeplane/rings"
MEBIBYTE = 1 << 20
RUN_AS_USER = 10001
CPU = "cpu"
MEMORY = "memory"
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


class RenderError(ValueError):
    """A rendered pod broke a rule the operator guarantees (e.g. a pod that is not Guaranteed)."""


def pod_template(owner: Owner, spec: TradingServiceSpec, revision: str) -> dict[str, Any]:
    pod_labels = {**labels(owner, spec), REVISION_LABEL: revision}
    same_revision = {NAME_LABEL: owner.name, REVISION_LABEL: revision}
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": revision_object_name(owner, revision)}},
        {"name": "state", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "state", "mountPath": STATE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    identities = session_identities(spec)
    if identities:
        keys = {"secretName": spec.network.sessionKeys, "defaultMode": 0o440}
        keys["items"] = [{"key": identity, "path": identity} for identity in identities]
        volumes.append({"name": "session-keys", "secret": keys})
        mounts.append({"name": "session-keys", "mountPath": KEYS_DIR, "readOnly": True})
    hugepages = hugepages_volume(spec)
    if hugepages:
        volumes.append(hugepages[0])
        mounts.append(hugepages[1])
    rings = rings_volume(spec)
    if rings:
        volumes.append(rings[0])
        mounts.append(rings[1])
    container = _container(
        spec,
        container_name(spec),
        command(spec),
        (spec.wire_port, spec.metricsPort),
        environment(spec, owner.namespace, revision, owner.name),
        resources(spec),
        mounts,
    )
    co_located = [
        _container(
            spec,
            peer.component,
            [SERVICE_COMMAND, peer.component],
            (BUNDLED[peer.component].port, co_located_metrics_port(spec, index)),
            co_located_environment(spec, index, owner.namespace, revision, owner.name),
            co_located_resources(spec, index),
            [mount for mount in mounts if mount["name"] != "hugepages"],
        )
        for index, peer in enumerate(spec.coLocate.services if spec.coLocate else [])
    ]
    pod_spec: dict[str, Any] = {
        "containers": [container, *co_located],
        "volumes": volumes,
        "affinity": affinity(spec, same_revision),
        "tolerations": tolerations(spec),
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if spec.placement.runtimeClassName:
        pod_spec["runtimeClassName"] = spec.placement.runtimeClassName
    problems = qos_violations(pod_spec)
    if problems:
        raise RenderError(
            f"{owner.namespace}/{owner.name}: pod would not be Guaranteed: {'; '.join(problems)}"
        )
    metadata: dict[str, Any] = {"labels": pod_labels}
    annotations = isolation_annotations(spec)
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod_spec}


def _container(
    spec: TradingServiceSpec,
    name: str,
    argv: list[str],
    ports: tuple[int, int],
    env: list[dict[str, Any]],
    amounts: dict[str, Any],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """One service container. The first one's ports are named (wire, metrics: its Service targets
    them); port names are unique in a pod, so co-located peers' ports go by number."""
    first = name == container_name(spec)
    wire, metrics = ports
    wire_port: dict[str, Any] = {"containerPort": wire, "protocol": "TCP"}
    metrics_port: dict[str, Any] = {"containerPort": metrics, "protocol": "TCP"}
    if first:
        wire_port, metrics_port = {"name": "wire", **wire_port}, {"name": "metrics", **metrics_port}
    probe_port: str | int = "metrics" if first else metrics
    return {
        "name": name,
        "image": spec.image,
        "command": argv,
        "ports": [wire_port, metrics_port],
        "env": env,
        "resources": amounts,
        "volumeMounts": mounts,
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": probe_port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": probe_port},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": container_security_context(spec),
    }


# -- pod-spec fragments ---------------------------------------------------------------------------


def resources(spec: TradingServiceSpec) -> dict[str, Any]:
    """requests == limits, integer cpu: the pod is Guaranteed and its cores are exclusive."""
    amounts = {CPU: str(spec.resources.cpus), MEMORY: canonical_quantity(spec.resources.memory)}
    pages = spec.resources.hugepages
    if pages:
        amounts[f"hugepages-{pages.pageSize}"] = canonical_quantity(pages.amount)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def hugepages_volume(spec: TradingServiceSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The emptyDir of medium HugePages-<size> and its mount, when the spec asks hugepages."""
    pages = spec.resources.hugepages
    if not pages:
        return None
    volume = {"name": "hugepages", "emptyDir": {"medium": f"HugePages-{pages.pageSize}"}}
    return volume, {"name": "hugepages", "mountPath": HUGEPAGES_MOUNT}


def ring_directory(peer: str) -> str:
    """Where a co-located peer serves its rings, in the volume every container of the pod mounts."""
    return f"{RINGS_MOUNT}/{peer}"


def ring_file_bytes(spec: TradingServiceSpec) -> int:
    """One ring file as the volume holds it: whole huge pages on HugePages, whole MiB otherwise."""
    pages = spec.resources.hugepages
    unit = int(parse_quantity(pages.pageSize)) if pages and _on_hugepages(spec) else MEBIBYTE
    return -(-(RING_BYTES + RING_HEADER_BYTES) // unit) * unit


def _on_hugepages(spec: TradingServiceSpec) -> bool:
    return spec.coLocate is not None and spec.coLocate.medium == "HugePages"


def rings_volume(spec: TradingServiceSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The emptyDir the co-located containers share their rings through, and its mount."""
    if spec.coLocate is None:
        return None
    pages = spec.resources.hugepages
    if _on_hugepages(spec) and pages:
        empty_dir: dict[str, Any] = {"medium": f"HugePages-{pages.pageSize}"}
    else:
        size = ring_file_bytes(spec) * RING_FILES * len(spec.coLocate.services)
        empty_dir = {"medium": "Memory", "sizeLimit": f"{size // MEBIBYTE}Mi"}
    return {"name": "rings", "emptyDir": empty_dir}, {"name": "rings", "mountPath": RINGS_MOUNT}


def co_located_metrics_port(spec: TradingServiceSpec, index: int) -> int:
    """The pod's containers share its network: each co-located peer serves metrics above the first's."""
    return spec.metricsPort + 1 + index


def co_located_resources(spec: TradingServiceSpec, index: int) -> dict[str, Any]:
    """requests == limits like the first container (the pod stays Guaranteed), plus the huge pages of
    the rings it creates when they live there."""
    assert spec.coLocate is not None
    peer = spec.coLocate.services[index]
    amounts = {CPU: str(peer.cpus), MEMORY: canonical_quantity(peer.memory)}
    pages = spec.resources.hugepages
    if _on_hugepages(spec) and pages:
        ring_pages = ring_file_bytes(spec) * RING_FILES
        amounts[f"hugepages-{pages.pageSize}"] = canonical_quantity(f"{ring_pages // MEBIBYTE}Mi")
    return {"requests": dict(amounts), "limits": dict(amounts)}


def affinity(spec: TradingServiceSpec, pod_selector: Mapping[str, str]) -> dict[str, Any]:
    """Nodes of the pool only; with spread: host, no two pods of `pod_selector` on one node."""
    rules: dict[str, Any] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": POOL_LABEL, "operator": "In", "values": [spec.placement.pool]}
                        ]
                    }
                ]
            }
        }
    }
    if spec.placement.spread == "host":
        rules["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": dict(pod_selector)}, "topologyKey": HOSTNAME_LABEL}
            ]
        }
    return rules


def tolerations(spec: TradingServiceSpec) -> list[dict[str, Any]]:
    return [{"key": POOL_LABEL, "operator": "Equal", "value": spec.placement.pool, "effect": "NoSchedule"}]


def isolation_annotations(spec: TradingServiceSpec) -> dict[str, str]:
    """CRI-O turns off what the spec asks for on the pod's exclusive cores (with its runtime class)."""
    isolation = spec.placement.isolation.model_dump()
    return {annotation: "disable" for key, annotation in CRIO_ANNOTATIONS.items() if not isolation[key]}


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(spec: TradingServiceSpec) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if spec.network.capabilities:
        capabilities["add"] = list(spec.network.capabilities)
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": capabilities,
    }


def qos_violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """Why a pod spec would not be Guaranteed with exclusive cores; empty when it is."""
    problems = []
    for kind in ("initContainers", "containers"):
        for container in pod_spec.get(kind, []):
            name = f"{kind}[{container.get('name')}]"
            requests = container.get("resources", {}).get("requests", {})
            limits = container.get("resources", {}).get("limits", {})
            for resource in (CPU, MEMORY):
                if resource not in limits:
                    problems.append(f"{name}: no {resource} limit")
                elif requests.get(resource, limits[resource]) != limits[resource]:
                    problems.append(
                        f"{name}: {resource} request {requests[resource]} != limit {limits[resource]}"
                    )
            cpu = limits.get(CPU)
            if cpu is not None and parse_quantity(str(cpu)).denominator != 1:
                problems.append(f"{name}: cpu {cpu} is not an integer, so no core is exclusive")
            for resource, amount in limits.items():
                if resource.startswith("hugepages-") and requests.get(resource, amount) != amount:
                    problems.append(f"{name}: {resource} request {requests[resource]} != limit {amount}")
    return problems


# -- the component ------------------------------------------------------------------------------------


def container_name(spec: TradingServiceSpec) -> str:
    return "service" if spec.component == CUSTOM else str(spec.component)


def command(spec: TradingServiceSpec) -> list[str]:
    if spec.component == CUSTOM:
        return list(spec.command)
    return [SERVICE_COMMAND, str(spec.component)]


def config(spec: TradingServiceSpec) -> dict[str, Any]:
    """The component's defaults, overridden key by key (deeply) by `spec.config`."""
    defaults = BUNDLED[spec.component].rendered_defaults if spec.component in BUNDLED else {}
    return _merge(dict(defaults), spec.config)


def config_files(spec: TradingServiceSpec) -> dict[str, dict[str, Any]]:
    """The config files of the pod's containers by file name: the first's, then each co-located peer's
    (its component's defaults under its own `config`)."""
    files = {CONFIG_FILE: config(spec)}
    for peer in spec.coLocate.services if spec.coLocate else []:
        files[co_located_config_file(peer.component)] = _merge(
            dict(BUNDLED[peer.component].rendered_defaults), peer.config
        )
    return files


def co_located_config_file(peer: str) -> str:
    return f"{peer}.yaml"


def calling_components(spec: TradingServiceSpec) -> list[str]:
    """The bundled components that open sessions to this one."""
    return BUNDLED[spec.component].bundled_callers if spec.component in BUNDLED else []


def called_components(spec: TradingServiceSpec) -> list[str]:
    """The bundled components this one opens sessions to."""
    return callees(spec.component)


def takes_clients(spec: TradingServiceSpec) -> bool:
    """Whether identities from outside the stack (trading clients, admins) log on to this component;
    a custom component's callers are unknown, so it is treated as taking them."""
    return spec.component == CUSTOM or BUNDLED[spec.component].takes_clients


def session_identities(spec: TradingServiceSpec) -> list[str]:
    """Whose session keys a bundled component's pod holds: its own (to log on to its peers) and its
    callers' (to check their logons). Custom components hold none."""
    if spec.component == CUSTOM:
        return []
    peers = [peer.component for peer in spec.coLocate.services] if spec.coLocate else []
    identities = [spec.component, *BUNDLED[spec.component].callers]
    for peer in peers:
        identities += [peer, *BUNDLED[peer].callers]
    return list(dict.fromkeys(identities))


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
    """The container's env: where to listen, the revision it runs, its config file and its peers (the
    co-located ones at their rings)."""
    variables = _service_environment(
        spec, str(spec.component), (spec.wire_port, spec.metricsPort), namespace, revision, service
    )
    co_located = {peer.component for peer in spec.coLocate.services} if spec.coLocate else set()
    for variable in variables:
        peer = _peer_of_variable.get(variable["name"])
        if peer in co_located:
            variable["value"] = str(RingAddress(Path(ring_directory(peer))))
    return variables


def co_located_environment(
    spec: TradingServiceSpec, index: int, namespace: str, revision: str, service: str
) -> list[dict[str, Any]]:
    """A co-located peer's env: its own component's, with the rings it serves the first container on."""
    assert spec.coLocate is not None
    peer = spec.coLocate.services[index].component
    ports = (BUNDLED[peer].port, co_located_metrics_port(spec, index))
    variables = _service_environment(spec, peer, ports, namespace, revision, service)
    for variable in variables:
        if variable["name"] == "TRADEPLANE_CONFIG":
            variable["value"] = f"{CONFIG_DIR}/{co_located_config_file(peer)}"
    return [*variables, {"name": "TRADEPLANE_RING_DIR", "value": ring_directory(peer)}]


_peer_of_variable = {entry.peer_variable: name for name, entry in BUNDLED.items()}


def _service_environment(
    spec: TradingServiceSpec,
    component: str,
    ports: tuple[int, int],
    namespace: str,
    revision: str,
    service: str,
) -> list[dict[str, Any]]:
    wire_port, metrics_port = ports
    variables: list[dict[str, Any]] = [
        {"name": "TRADEPLANE_SERVICE", "value": service},
        {"name": "TRADEPLANE_REVISION", "value": revision},
        {"name": "TRADEPLANE_CONFIG", "value": f"{CONFIG_DIR}/{CONFIG_FILE}"},
        {"name": "TRADEPLANE_BIND", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # A stable name per replica: risk's partition lease owner id (it advertises podIP:port to order).
        {"name": "TRADEPLANE_REPLICA", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "TRADEPLANE_PORT", "value": str(wire_port)},
        {"name": "TRADEPLANE_METRICS_PORT", "value": str(metrics_port)},
        {"name": "TRADEPLANE_STATE_DIR", "value": STATE_DIR},
    ]
    if component != CUSTOM:
        variables.append({"name": "TRADEPLANE_KEYS_DIR", "value": KEYS_DIR})
        variables += [
            # Only the peers it calls: what its NetworkPolicy lets it reach, and all it needs to find.
            {"name": BUNDLED[peer].peer_variable, "value": f"{peer}.{namespace}.svc:{BUNDLED[peer].port}"}
            for peer in callees(component)
        ]
    if component != CUSTOM and spec.eventLog is not None:
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
