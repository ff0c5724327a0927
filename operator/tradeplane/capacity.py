"""Capacity: whether the pool has room for the pods still to be placed, from observed nodes and pods.

Free capacity on a node is its allocatable minus the requests of its non-terminal pods; the `Fit` says
whether the pods still to be placed fit, and if not, which resource is short, by how much, where. Pods
failed by kubelet admission are recognised too. Pure: the controller reads the pool, this judges it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tradeplane.api import TradingServiceSpec
from tradeplane.labels import NUMA_NODES_LABEL, POOL_LABEL
from tradeplane.podspec import CPU, MEMORY, co_located_resources, resources
from tradeplane.quantity import parse_quantity

# Kubelet admission rejections that leave a Failed pod behind which nothing reschedules.
ADMISSION_FAILURE_REASONS = frozenset(
    {"TopologyAffinityError", "SMTAlignmentError", "UnexpectedAdmissionError", "NodeAffinity"}
)
PODS = "pods"


def format_amount(resource: str, amount: int) -> str:
    """Millicores as cores, bytes in the largest binary unit that keeps two decimals honest."""
    if resource == CPU:
        return f"{amount / 1000:g}"
    if resource == PODS:
        return str(amount)
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount >= size:
            return f"{amount / size:.4g}{unit}"
    return str(amount)


@dataclass(frozen=True)
class Amounts:
    """Resource amounts as integers: cpu in millicores, memory and hugepages in bytes, pods in pods."""

    values: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, quantities: Mapping[str, Any]) -> Amounts:
        values = {}
        for resource, quantity in quantities.items():
            if resource not in (CPU, MEMORY, PODS) and not resource.startswith("hugepages-"):
                continue
            amount = parse_quantity(str(quantity))
            values[resource] = math.ceil(amount * 1000) if resource == CPU else math.ceil(amount)
        return cls(values)

    def get(self, resource: str) -> int:
        return self.values.get(resource, 0)

    def __add__(self, other: Amounts) -> Amounts:
        keys = set(self.values) | set(other.values)
        return Amounts({key: self.get(key) + other.get(key) for key in keys})

    def __sub__(self, other: Amounts) -> Amounts:
        keys = set(self.values) | set(other.values)
        return Amounts({key: self.get(key) - other.get(key) for key in keys})


def pod_requests(pod: Mapping[str, Any]) -> Amounts:
    """What the scheduler charges a pod: its containers' requests (or an init container's, if larger)
    plus the runtime class overhead, and one pod."""
    spec = pod.get("spec", {})
    total = Amounts()
    for container in spec.get("containers", []):
        total = total + Amounts.parse(container.get("resources", {}).get("requests", {}))
    for container in spec.get("initContainers", []):
        init = Amounts.parse(container.get("resources", {}).get("requests", {}))
        total = Amounts(
            {key: max(total.get(key), init.get(key)) for key in set(total.values) | set(init.values)}
        )
    total = total + Amounts.parse(spec.get("overhead", {}))
    return total + Amounts({PODS: 1})


def spec_requests(spec: TradingServiceSpec) -> Amounts:
    """What one pod of the spec asks for: its own container and each co-located peer's, and one pod."""
    amounts = Amounts.parse(resources(spec)["requests"])
    for index in range(len(spec.coLocate.services) if spec.coLocate else 0):
        amounts = amounts + Amounts.parse(co_located_resources(spec, index)["requests"])
    return amounts + Amounts({PODS: 1})


# -- observed objects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: Mapping[str, str]
    allocatable: Amounts
    ready: bool
    cordoned: bool
    foreign_taints: tuple[str, ...]
    """NoSchedule / NoExecute taints other than the pool's, which the pods do not tolerate."""

    @classmethod
    def from_manifest(cls, node: Mapping[str, Any]) -> NodeView:
        metadata, spec, status = node["metadata"], node.get("spec", {}), node.get("status", {})
        ready = any(
            condition.get("type") == "Ready" and condition.get("status") == "True"
            for condition in status.get("conditions", [])
        )
        taints = tuple(
            f"{taint['key']}={taint.get('value', '')}:{taint['effect']}"
            for taint in spec.get("taints", [])
            if taint.get("effect") in ("NoSchedule", "NoExecute") and taint["key"] != POOL_LABEL
        )
        return cls(
            name=metadata["name"],
            labels=metadata.get("labels", {}),
            allocatable=Amounts.parse(status.get("allocatable", {})),
            ready=ready,
            cordoned=bool(spec.get("unschedulable")),
            foreign_taints=taints,
        )

    @property
    def numa_nodes(self) -> int:
        text = self.labels.get(NUMA_NODES_LABEL, "1")
        return int(text) if text.isdigit() and int(text) > 0 else 1


@dataclass(frozen=True)
class PodView:
    """One of the service's own pods, as far as the operator cares."""

    name: str
    revision: str | None
    node: str | None
    phase: str
    ready: bool
    deleting: bool
    reason: str = ""
    message: str = ""
    ip: str | None = None
    qos_class: str | None = None
    unschedulable: str | None = None
    """The scheduler's message when it could not place the pod."""

    @classmethod
    def from_manifest(cls, pod: Mapping[str, Any], revision_label: str) -> PodView:
        metadata, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
        conditions = {condition.get("type"): condition for condition in status.get("conditions", [])}
        scheduled = conditions.get("PodScheduled", {})
        unschedulable = (
            scheduled.get("message", "unschedulable")
            if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
            else None
        )
        return cls(
            name=metadata["name"],
            revision=metadata.get("labels", {}).get(revision_label),
            node=spec.get("nodeName"),
            phase=status.get("phase", "Pending"),
            ready=conditions.get("Ready", {}).get("status") == "True",
            deleting=metadata.get("deletionTimestamp") is not None,
            reason=status.get("reason", ""),
            message=status.get("message", ""),
            ip=status.get("podIP"),
            qos_class=status.get("qosClass"),
            unschedulable=unschedulable,
        )

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def active(self) -> bool:
        return not self.terminal and not self.deleting


def admission_failures(pods: Iterable[PodView]) -> list[PodView]:
    """Pods the kubelet refused at admission: Failed, never rescheduled, to be deleted and replaced."""
    return [
        pod
        for pod in pods
        if pod.phase == "Failed"
        and not pod.deleting
        and (pod.reason in ADMISSION_FAILURE_REASONS or pod.reason.startswith("OutOf"))
    ]


# -- preflight -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSnapshot:
    """The nodes labelled with a pool and what the non-terminal pods on each already request."""

    pool: str
    nodes: Sequence[NodeView]
    requested: Mapping[str, Amounts]
    partial: bool = False
    """True when only some namespaces' pods could be read: free capacity is an upper bound."""

    def free(self, node: NodeView) -> Amounts:
        return node.allocatable - self.requested.get(node.name, Amounts())


@dataclass(frozen=True)
class Fit:
    fits: bool
    reason: str
    message: str


_SHORTAGE_REASONS = {CPU: "InsufficientCPU", MEMORY: "InsufficientMemory", PODS: "InsufficientPods"}


def shortage_reason(resource: str) -> str:
    return "InsufficientHugepages" if resource.startswith("hugepages-") else _SHORTAGE_REASONS[resource]


def preflight(
    spec: TradingServiceSpec, snapshot: PoolSnapshot, pods_needed: int, occupied: Iterable[str] = ()
) -> Fit:
    """Do `pods_needed` more pods of this spec fit on the pool? `occupied`: nodes already running one of
    the same revision, which spread: host rules out."""
    pool = spec.placement.pool
    if not snapshot.nodes:
        return Fit(False, "UnknownPool", f"no node is labelled {POOL_LABEL}={pool}")
    usable = [node for node in snapshot.nodes if node.ready and not node.cordoned and not node.foreign_taints]
    if not usable:
        states = ", ".join(f"{node.name} ({_unusable(node)})" for node in snapshot.nodes)
        return Fit(False, "NoNodes", f"pool {pool} has no Ready, schedulable node: {states}")
    request = spec_requests(spec)
    host_spread = spec.placement.spread == "host"
    taken = set(occupied)
    numa_short = _numa_shortage(spec, usable)
    if numa_short is not None:
        return numa_short
    slots = {}
    for node in usable:
        free = snapshot.free(node)
        fit = min(free.get(resource) // amount for resource, amount in request.values.items() if amount > 0)
        fit = max(fit, 0)
        if host_spread:
            fit = 0 if node.name in taken else min(fit, 1)
        slots[node.name] = fit
    room = sum(slots.values())
    if room >= pods_needed:
        caveat = " (pods of unwatched namespaces not counted)" if snapshot.partial else ""
        return Fit(True, "Fits", f"pool {pool} has room for {room} more pod(s), {pods_needed} needed{caveat}")
    return _shortage(spec, snapshot, usable, request, pods_needed, room, taken if host_spread else set())


def _unusable(node: NodeView) -> str:
    if not node.ready:
        return "NotReady"
    if node.cordoned:
        return "cordoned"
    return "tainted " + ", ".join(node.foreign_taints)


def _numa_shortage(spec: TradingServiceSpec, nodes: Sequence[NodeView]) -> Fit | None:
    """single-numa-node: all of a pod's cores on one NUMA node, or the kubelet refuses it
    (TopologyAffinityError). The trading nodes' topology manager aligns per pod, so co-located peers'
    cores count too (their rings are shared memory: one NUMA node is the point). Nodes say how many
    NUMA nodes share their cores."""
    if spec.placement.numa != "single-numa-node":
        return None
    per_numa = {node.name: node.allocatable.get(CPU) // node.numa_nodes for node in nodes}
    pod_cpus = spec_requests(spec).get(CPU)
    if max(per_numa.values()) >= pod_cpus:
        return None
    best = max(nodes, key=lambda node: per_numa[node.name])
    return Fit(
        False,
        "InsufficientCPUPerNUMANode",
        f"numa: single-numa-node needs {format_amount(CPU, pod_cpus)} cpus on one NUMA node; the largest in "
        f"pool {spec.placement.pool} has {format_amount(CPU, per_numa[best.name])} ({best.name}: "
        f"{format_amount(CPU, best.allocatable.get(CPU))} cpus over {best.numa_nodes} NUMA nodes)",
    )


def _shortage(
    spec: TradingServiceSpec,
    snapshot: PoolSnapshot,
    nodes: Sequence[NodeView],
    request: Amounts,
    pods_needed: int,
    room: int,
    taken: set[str],
) -> Fit:
    pool = spec.placement.pool
    needs = {resource: amount for resource, amount in request.values.items() if amount > 0}
    candidates = [node for node in nodes if node.name not in taken]
    if spec.placement.spread == "host":
        # One pod per node: the resource short on the most nodes explains it, hugepages first on a tie.
        short = {
            resource: sum(1 for node in candidates if snapshot.free(node).get(resource) < amount)
            for resource, amount in needs.items()
        }
        if not any(short.values()):
            already = f" ({', '.join(sorted(taken))} already run one)" if taken else ""
            return Fit(
                False,
                "InsufficientNodes",
                f"spread: host puts one pod per node: {pods_needed} pod(s) to place, {len(candidates)} "
                f"node(s) of pool {pool} left{already}",
            )
        resource = max(short, key=lambda name: (short[name], name.startswith("hugepages-")))
    else:
        # Pods may share nodes: the resource with the least room in total is the binding one.
        capacity = {
            resource: sum(max(snapshot.free(node).get(resource), 0) // amount for node in candidates)
            for resource, amount in needs.items()
        }
        resource = min(capacity, key=lambda name: (capacity[name], not name.startswith("hugepages-")))
    best = max(nodes, key=lambda node: snapshot.free(node).get(resource))
    most = max(snapshot.free(best).get(resource), 0)
    caveat = " (pods of unwatched namespaces not counted)" if snapshot.partial else ""
    return Fit(
        False,
        shortage_reason(resource),
        f"{pods_needed} pod(s) need {format_amount(resource, needs[resource])} {resource} each; pool "
        f"{pool} has room for {room}: the most free {resource} on a node is "
        f"{format_amount(resource, most)} ({best.name}){caveat}",
    )


def pods_to_place(desired: int, pods: Iterable[PodView]) -> int:
    """Desired pods not yet on a node (created or not): what preflight must find room for."""
    scheduled = sum(1 for pod in pods if pod.active and pod.node)
    return max(desired - scheduled, 0)
