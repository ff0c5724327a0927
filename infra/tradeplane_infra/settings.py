"""Stack configuration (the `tradeplane:*` keys), validated before any resource is declared.

Every error names the config key to fix, as `pulumi config set --path` spells it, e.g.
`tradeplane:eks.trading.hugepages1Gi: ...`. Beyond types, the checks here are the ones a cloud would
otherwise report an hour later, or never: huge pages that do not fit the machine, pods the kubelet's
CPU, topology and memory managers would refuse, services that do not fit a trading node.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tradeplane.labels import POOL_LABEL
from tradeplane.quantity import QUANTITY_PATTERN, integer_quantity
from tradeplane_infra.instances import AWS_INSTANCE_TYPES, GCP_MACHINE_TYPES, GIB, InstanceType, NodeShape
from tradeplane_services.catalog import BUNDLED

NAMESPACE = "tradeplane"
INFRA_DIR = Path(__file__).resolve().parents[1]
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
IMAGE_PATTERN = r"^[^\s@]+(@sha256:[0-9a-f]{64})?$"

# Per replica; every replica gets whole cores (even counts suit SMT nodes) and 1Gi huge pages.
DEFAULT_SERVICES: dict[str, dict[str, Any]] = {
    "market-data": {"replicas": 2, "cpus": 4, "memory": "4Gi", "hugepages1Gi": 2},
    "risk": {"replicas": 2, "cpus": 4, "memory": "4Gi", "hugepages1Gi": 2},
    "order": {"replicas": 2, "cpus": 4, "memory": "4Gi", "hugepages1Gi": 2},
    "execution": {"replicas": 2, "cpus": 4, "memory": "4Gi", "hugepages1Gi": 2},
    "position": {"replicas": 2, "cpus": 2, "memory": "4Gi", "hugepages1Gi": 1},
}


class Problem(ValueError):
    """A finding about a field below the validated model: `field` is the path from it, dot-separated."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Problems(ValueError):
    """Several findings at once, so one run reports everything to fix."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems


class ConfigError(Exception):
    """Invalid stack configuration; one line per problem, each naming its config key."""


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text))
    except ValueError as error:
        raise ValueError(f"{text!r} is not a CIDR block: {error}") from None


def _check_allow_list(cidrs: list[str], what: str) -> list[str]:
    normalized = [_cidr(text) for text in cidrs]
    for cidr in normalized:
        if ipaddress.ip_network(cidr).prefixlen == 0:
            raise ValueError(f"{cidr} opens {what} to the whole internet; list the networks that need it")
    return normalized


def _supported(table: Mapping[str, InstanceType], name: str, what: str) -> str:
    if name not in table:
        raise ValueError(f"{name!r} is not a supported {what}; supported: {', '.join(table)}")
    return name


def _check_hugepages(instance: InstanceType, pages: int, reserved_bytes: int, field: str) -> None:
    if pages * GIB + reserved_bytes > instance.memory_gib * GIB:
        raise Problem(
            field,
            f"{pages} pages of 1Gi ({pages}Gi) plus {reserved_bytes / GIB:.1f}Gi reserved for the kubelet "
            f"and system exceed the {instance.memory_gib}Gi of memory of {instance.name}",
        )
    if pages % instance.numa_nodes:
        raise Problem(
            field,
            f"{pages} pages do not split evenly over the {instance.numa_nodes} NUMA nodes of "
            f"{instance.name}; use a multiple of {instance.numa_nodes}",
        )


class EksTradingPool(ConfigModel):
    instanceType: str = "c6i.metal"
    nodes: int = Field(default=3, ge=1, le=100)
    hugepages1Gi: int = Field(default=32, ge=0, description="1Gi huge pages reserved on each node at boot.")
    reservedCores: int = Field(default=1, ge=1, description="Physical cores kept for the OS and the kubelet.")
    kubeReservedMemory: str = Field(default="2Gi", pattern=QUANTITY_PATTERN)
    systemReservedMemory: str = Field(default="1Gi", pattern=QUANTITY_PATTERN)
    evictionHardMemory: str = Field(default="100Mi", pattern=QUANTITY_PATTERN)
    tenancy: Literal["default", "dedicated"] = "default"
    subnetIds: list[str] | None = Field(default=None, min_length=1, description="Defaults to eks.subnetIds.")
    placementGroup: bool = Field(
        default=False, description="A cluster placement group: lowest node-to-node latency."
    )

    @field_validator("instanceType")
    @classmethod
    def _known_instance(cls, name: str) -> str:
        return _supported(AWS_INSTANCE_TYPES, name, "trading instance type")

    @property
    def instance(self) -> InstanceType:
        return AWS_INSTANCE_TYPES[self.instanceType]

    @property
    def reserved_memory_bytes(self) -> int:
        return sum(
            integer_quantity(text)
            for text in (self.kubeReservedMemory, self.systemReservedMemory, self.evictionHardMemory)
        )

    @model_validator(mode="after")
    def _fits_instance(self) -> EksTradingPool:
        instance = self.instance
        if not instance.metal and self.tenancy != "dedicated":
            raise Problem(
                "tenancy",
                f"{instance.name} is not bare metal: trading nodes need the whole host, "
                "set tenancy: dedicated or pick a .metal type",
            )
        cores_per_numa_node = instance.cores // instance.numa_nodes
        if self.reservedCores >= cores_per_numa_node:
            raise Problem(
                "reservedCores",
                f"{self.reservedCores} cores leave none on NUMA node 0 of {instance.name} "
                f"({cores_per_numa_node} cores per NUMA node)",
            )
        _check_hugepages(instance, self.hugepages1Gi, self.reserved_memory_bytes, "hugepages1Gi")
        return self

    def shape(self) -> NodeShape:
        instance = self.instance
        return NodeShape(
            name=instance.name,
            count=self.nodes,
            cpus=instance.cpus,
            threads_per_core=instance.threads_per_core,
            numa_nodes=instance.numa_nodes,
            memory_bytes=instance.memory_gib * GIB,
            hugepages_1gi=self.hugepages1Gi,
            reserved_cpus=self.reservedCores * instance.threads_per_core,
            reserved_memory_bytes=self.reserved_memory_bytes,
        )


class EksGeneralPool(ConfigModel):
    instanceType: str = "m6i.xlarge"
    nodes: int = Field(default=2, ge=1, le=100)


class EksSettings(ConfigModel):
    clusterName: str | None = Field(default=None, description="Defaults to tradeplane-<stack>.")
    version: str = Field(default="1.34", pattern=r"^1\.[0-9]+$")
    vpcId: str = Field(min_length=1)
    subnetIds: list[str] = Field(min_length=2, description="Private subnets in two or more zones.")
    publicEndpoint: bool = False
    publicAccessCidrs: list[str] = Field(default_factory=list)
    trading: EksTradingPool = Field(default_factory=EksTradingPool)
    general: EksGeneralPool = Field(default_factory=EksGeneralPool)

    @field_validator("publicAccessCidrs")
    @classmethod
    def _allow_list(cls, cidrs: list[str]) -> list[str]:
        return _check_allow_list(cidrs, "the API server")

    @model_validator(mode="after")
    def _endpoint(self) -> EksSettings:
        if self.publicEndpoint and not self.publicAccessCidrs:
            raise Problem("publicAccessCidrs", "a public API endpoint needs an allow-list of CIDR blocks")
        if self.publicAccessCidrs and not self.publicEndpoint:
            raise Problem("publicAccessCidrs", "set, but publicEndpoint is false: the list would not apply")
        if self.trading.placementGroup and len(self.trading.subnetIds or self.subnetIds) != 1:
            raise Problem(
                "trading.subnetIds",
                "a cluster placement group lives in one availability zone: name exactly one subnet",
            )
        return self


def gke_reserved_memory_bytes(memory_gib: int) -> int:
    """GKE's kube-reserved memory for a machine (its published tiers) plus the 100Mi hard eviction."""
    tiers = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (math.inf, 0.02)]
    reserved, left = 0.0, float(memory_gib)
    for size, fraction in tiers:
        taken = min(left, size)
        reserved += taken * fraction
        left -= taken
    return int(reserved * GIB) + 100 * 2**20


class GkeTradingPool(ConfigModel):
    machineType: str = "c3-standard-88"
    nodes: int = Field(default=3, ge=1, le=100)
    hugepages1Gi: int = Field(default=32, ge=0)
    threadsPerCore: Literal[1, 2] | None = Field(
        default=None, description="1 turns SMT off; default: the machine's."
    )

    @field_validator("machineType")
    @classmethod
    def _known_machine(cls, name: str) -> str:
        return _supported(GCP_MACHINE_TYPES, name, "trading machine type")

    @property
    def machine(self) -> InstanceType:
        return GCP_MACHINE_TYPES[self.machineType]

    @property
    def threads_per_core(self) -> int:
        return self.threadsPerCore or self.machine.threads_per_core

    @model_validator(mode="after")
    def _fits_machine(self) -> GkeTradingPool:
        machine = self.machine
        if self.threads_per_core > machine.threads_per_core:
            raise Problem("threadsPerCore", f"{machine.name} has {machine.threads_per_core} thread per core")
        _check_hugepages(
            machine, self.hugepages1Gi, gke_reserved_memory_bytes(machine.memory_gib), "hugepages1Gi"
        )
        return self

    def shape(self) -> NodeShape:
        machine = self.machine
        return NodeShape(
            name=machine.name,
            count=self.nodes,
            cpus=machine.cores * self.threads_per_core,
            threads_per_core=self.threads_per_core,
            numa_nodes=machine.numa_nodes,
            memory_bytes=machine.memory_gib * GIB,
            hugepages_1gi=self.hugepages1Gi,
            # GKE reserves a fraction of a CPU; the static CPU manager keeps the whole first core shared.
            reserved_cpus=self.threads_per_core,
            reserved_memory_bytes=gke_reserved_memory_bytes(machine.memory_gib),
        )


class GkeGeneralPool(ConfigModel):
    machineType: str = "e2-standard-4"
    nodes: int = Field(default=2, ge=1, le=100)


class GkeSettings(ConfigModel):
    clusterName: str | None = Field(default=None, description="Defaults to tradeplane-<stack>.")
    location: str = Field(min_length=1, description="A zone: trading nodes sit together in one.")
    version: str | None = Field(default=None, description="Minimum control plane version; default: GKE's.")
    network: str | None = None
    subnetwork: str | None = None
    authorizedNetworks: list[str] = Field(min_length=1, description="CIDR blocks allowed to the API server.")
    deletionProtection: bool = Field(default=True, description="false before `pulumi destroy`.")
    trading: GkeTradingPool = Field(default_factory=GkeTradingPool)
    general: GkeGeneralPool = Field(default_factory=GkeGeneralPool)

    @field_validator("authorizedNetworks")
    @classmethod
    def _allow_list(cls, cidrs: list[str]) -> list[str]:
        return _check_allow_list(cidrs, "the API server")


class LocalSettings(ConfigModel):
    kubeconfig: str | None = Field(default=None, description="Default: the local control plane's kubeconfig.")
    nodesFile: str | None = Field(
        default=None, description="The node pools the local cluster was started with."
    )

    def kubeconfig_path(self) -> str:
        from tradeplane.cluster import local

        return str(Path(self.kubeconfig).expanduser()) if self.kubeconfig else str(local.kubeconfig_path())

    def shape(self) -> NodeShape:
        from tradeplane.cluster import local

        try:
            pools = local.load_node_pools(Path(self.nodesFile) if self.nodesFile else None)
        except (OSError, local.ClusterError) as error:
            raise Problem("nodesFile", str(error)) from None
        trading = [p for p in pools.values() if (p.get("labels") or {}).get(POOL_LABEL) == "trading"]
        if not trading:
            raise Problem("nodesFile", f"no pool labelled {POOL_LABEL}=trading")
        pool = trading[0]
        labels, capacity = pool.get("labels") or {}, pool["capacity"]
        smt = str(labels.get("feature.node.kubernetes.io/cpu-hardware_multithreading")) == "true"
        return NodeShape(
            name=str(labels.get("node.kubernetes.io/instance-type", "local trading node")),
            count=int(pool["count"]),
            cpus=int(capacity["cpu"]),
            threads_per_core=2 if smt else 1,
            numa_nodes=int(labels.get("tradeplane.io/numa-nodes", 1)),
            memory_bytes=integer_quantity(str(capacity["memory"])),
            hugepages_1gi=integer_quantity(str(capacity.get("hugepages-1Gi", "0"))) // GIB,
            reserved_cpus=0,
            reserved_memory_bytes=0,
        )


class ServiceSettings(ConfigModel):
    replicas: int = Field(ge=0, le=100)
    cpus: int = Field(ge=1, description="Exclusive cores per replica.")
    memory: str = Field(pattern=QUANTITY_PATTERN)
    hugepages1Gi: int = Field(ge=1, description="1Gi huge pages per replica.")
    config: dict[str, Any] = Field(default_factory=dict, description="The component's settings.")


class Services(ConfigModel):
    """The five bundled services; each key overrides that service's defaults field by field."""

    order: ServiceSettings
    risk: ServiceSettings
    market_data: ServiceSettings = Field(alias="market-data")
    position: ServiceSettings
    execution: ServiceSettings

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, overrides: Any) -> Any:
        if not isinstance(overrides, Mapping):
            return overrides
        merged: dict[str, Any] = {
            key: value for key, value in overrides.items() if key not in DEFAULT_SERVICES
        }
        for name, defaults in DEFAULT_SERVICES.items():
            override = overrides.get(name) or {}
            merged[name] = {**defaults, **override} if isinstance(override, Mapping) else override
        return merged

    def by_component(self) -> dict[str, ServiceSettings]:
        """The trading services this program sizes and declares (analytics, not latency-critical, is
        declared by the desk that runs it)."""
        return {
            component: getattr(self, component.replace("-", "_"))
            for component in BUNDLED
            if component in DEFAULT_SERVICES
        }


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference; a registry port is not a tag."""
    name, _, digest = reference.partition("@")
    repository, tag = name, None
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1 :]:
        repository, tag = name.rsplit(":", 1)
    return repository, tag, digest or None


class Settings(ConfigModel):
    target: Literal["eks", "gke", "local"] = "local"
    eks: EksSettings | None = None
    gke: GkeSettings | None = None
    local: LocalSettings = Field(default_factory=LocalSettings)
    image: str = Field(pattern=IMAGE_PATTERN, description="Image of the bundled trading services.")
    operatorImage: str | None = Field(
        default=None, pattern=IMAGE_PATTERN, description="Default: the chart's."
    )
    namespace: str = Field(default="trading", pattern=DNS_LABEL_PATTERN, max_length=63)
    operatorNamespace: str = Field(default="tradeplane-system", pattern=DNS_LABEL_PATTERN, max_length=63)
    chart: str = Field(default="../charts/tradeplane", description="The operator chart, relative to infra/.")
    helmValues: dict[str, Any] = Field(default_factory=dict, description="Merged over the computed values.")
    services: Services = Field(default_factory=lambda: Services.model_validate({}))

    @property
    def chart_dir(self) -> Path:
        return (INFRA_DIR / self.chart).resolve()

    def trading_nodes(self) -> NodeShape:
        if self.target == "eks":
            assert self.eks is not None
            return self.eks.trading.shape()
        if self.target == "gke":
            assert self.gke is not None
            return self.gke.trading.shape()
        return self.local.shape()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.target != "local" and getattr(self, self.target) is None:
            raise Problem(self.target, f"required when target is {self.target}")
        if not (self.chart_dir / "Chart.yaml").is_file():
            raise Problem("chart", f"{self.chart_dir} has no Chart.yaml")
        try:
            shape = self.trading_nodes()
        except Problem as problem:  # only the local target reads a file here
            raise Problem(f"local.{problem.field}", problem.message) from None
        problems = service_fit_problems(self.services, shape)
        if problems:
            raise Problems(problems)
        return self


def service_fit_problems(services: Services, shape: NodeShape) -> list[Problem]:
    """What the scheduler and the kubelet on `shape` nodes would refuse, per service and per node."""
    problems = []
    settings = services.by_component()
    for component, service in settings.items():
        path = f"services.{component}"
        if service.cpus % shape.threads_per_core:
            problems.append(
                Problem(
                    f"{path}.cpus",
                    f"{service.cpus} is odd but {shape.name} runs {shape.threads_per_core} threads per core: "
                    "a pod would share a physical core (full-pcpus-only refuses it: SMTAlignmentError)",
                )
            )
        if service.cpus > shape.cpus_per_numa_node:
            problems.append(
                Problem(
                    f"{path}.cpus",
                    f"{service.cpus} exceed the {shape.cpus_per_numa_node} CPUs of one NUMA node of "
                    f"{shape.name}: single-numa-node admission would fail (TopologyAffinityError)",
                )
            )
        if service.hugepages1Gi > shape.hugepages_per_numa_node:
            problems.append(
                Problem(
                    f"{path}.hugepages1Gi",
                    f"{service.hugepages1Gi} exceed the {shape.hugepages_per_numa_node} 1Gi pages of one "
                    f"NUMA node ({shape.hugepages_1gi} per node over {shape.numa_nodes} NUMA nodes)",
                )
            )
        if service.replicas > shape.count:
            problems.append(
                Problem(
                    f"{path}.replicas",
                    f"{service.replicas} replicas never share a node "
                    f"but there are {shape.count} trading nodes",
                )
            )
    # Replicas spread one per node, so a node may hold one replica of every service.
    totals = [
        (sum(s.cpus for s in settings.values()), shape.exclusive_cpus, "exclusive CPUs"),
        (sum(s.hugepages1Gi for s in settings.values()), shape.hugepages_1gi, "1Gi huge pages"),
        (
            sum(integer_quantity(s.memory) for s in settings.values()) // GIB,
            shape.pod_memory_bytes // GIB,
            "Gi of memory besides huge pages and reservations",
        ),
    ]
    for needed, available, unit in totals:
        if needed > available:
            problems.append(
                Problem(
                    "services",
                    f"one replica of each service needs {needed} {unit} on a trading node; "
                    f"a {shape.name} node has {available}",
                )
            )
    return problems


def _config_key(location: tuple[int | str, ...], field: str | None = None) -> str:
    path = [str(part) for part in location] + ([field] if field else [])
    return f"{NAMESPACE}:{'.'.join(path)}" if path else NAMESPACE


def parse_settings(raw: Mapping[str, Any]) -> Settings:
    """Settings from config values keyed like the stack config, without the `tradeplane:` prefix."""
    try:
        return Settings.model_validate(dict(raw))
    except pydantic.ValidationError as error:
        lines = []
        for item in error.errors():
            found = (item.get("ctx") or {}).get("error")
            if isinstance(found, Problems | Problem):
                for problem in found.problems if isinstance(found, Problems) else [found]:
                    lines.append(f"{_config_key(item['loc'], problem.field)}: {problem.message}")
            else:
                lines.append(f"{_config_key(item['loc'])}: {item['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None


STRUCTURED_KEYS = frozenset({"eks", "gke", "local", "helmValues", "services"})


def read_config(get: Any) -> dict[str, Any]:
    """The `tradeplane:*` values from a getter such as `pulumi.Config("tradeplane").get`."""
    raw: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        key = field.alias or name
        text = get(key)
        if text is None:
            continue
        if key in STRUCTURED_KEYS:
            try:
                raw[key] = json.loads(text)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{NAMESPACE}:{key}: not a structured value: {error}") from None
        else:
            raw[key] = text
    return raw
