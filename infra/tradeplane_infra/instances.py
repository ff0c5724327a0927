"""The machine shapes trading node pools may use, and the per-node arithmetic the config checks rely on.

Only whole hosts are listed: bare metal, or the largest size of a family, which fills a host and so
exposes the host's NUMA layout (AWS needs dedicated tenancy for those). A shape missing here is refused
with the list of supported ones rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GIB = 2**30


@dataclass(frozen=True)
class InstanceType:
    name: str
    cpus: int  # logical CPUs as the kernel numbers them
    memory_gib: int
    threads_per_core: int  # 2 with SMT (hyper-threading), 1 without
    numa_nodes: int
    arch: Literal["x86_64", "arm64"] = "x86_64"
    metal: bool = False

    @property
    def cores(self) -> int:
        return self.cpus // self.threads_per_core


def _table(*types: InstanceType) -> dict[str, InstanceType]:
    return {instance.name: instance for instance in types}


AWS_INSTANCE_TYPES = _table(
    InstanceType("c5.metal", 96, 192, 2, 2, metal=True),
    InstanceType("c5n.metal", 72, 192, 2, 2, metal=True),
    InstanceType("c6i.metal", 128, 256, 2, 2, metal=True),
    InstanceType("c6in.metal", 128, 256, 2, 2, metal=True),
    InstanceType("c7i.metal-24xl", 96, 192, 2, 1, metal=True),
    InstanceType("c7i.metal-48xl", 192, 384, 2, 2, metal=True),
    InstanceType("m5zn.metal", 48, 192, 2, 2, metal=True),
    InstanceType("m6i.metal", 128, 512, 2, 2, metal=True),
    InstanceType("z1d.metal", 48, 384, 2, 2, metal=True),
    InstanceType("c7g.metal", 64, 128, 1, 1, arch="arm64", metal=True),
    InstanceType("c6i.32xlarge", 128, 256, 2, 2),
    InstanceType("c6in.32xlarge", 128, 256, 2, 2),
    InstanceType("m5zn.12xlarge", 48, 192, 2, 2),
    InstanceType("z1d.12xlarge", 48, 384, 2, 2),
)

GCP_MACHINE_TYPES = _table(
    InstanceType("c2-standard-60", 60, 240, 2, 2),
    InstanceType("c3-standard-88", 88, 352, 2, 1),
    InstanceType("c3-highcpu-176", 176, 352, 2, 2),
    InstanceType("c3-standard-176", 176, 704, 2, 2),
    InstanceType("h3-standard-88", 88, 352, 1, 2),
    InstanceType("n2-standard-32", 32, 128, 2, 1),
)


@dataclass(frozen=True)
class NodeShape:
    """One trading node as the scheduler and the kubelet's managers see it."""

    name: str  # instance or machine type, for messages
    count: int
    cpus: int
    threads_per_core: int
    numa_nodes: int
    memory_bytes: int
    hugepages_1gi: int
    reserved_cpus: int  # kept for the system: never handed out exclusively
    reserved_memory_bytes: int  # kube-reserved + system-reserved + hard eviction threshold

    @property
    def exclusive_cpus(self) -> int:
        return self.cpus - self.reserved_cpus

    @property
    def cpus_per_numa_node(self) -> int:
        return self.cpus // self.numa_nodes

    @property
    def hugepages_per_numa_node(self) -> int:
        return self.hugepages_1gi // self.numa_nodes

    @property
    def pod_memory_bytes(self) -> int:
        """Ordinary memory left for pods once huge pages and the reservations are taken."""
        return self.memory_bytes - self.hugepages_1gi * GIB - self.reserved_memory_bytes
