"""CrossGuard policies: what a trading cluster must look like, whoever declares the resources.

Each validate function takes the resource's inputs as the engine passes them (camelCase names, numbers
as floats) and reports every violation it finds. The pack itself is in infra/policy/.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from tradeplane.api import API_VERSION, KIND
from tradeplane.labels import POOL_LABEL
from tradeplane.quantity import integer_quantity
from tradeplane_infra.nodeconfig import parse_node_config

EKS_NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
EKS_LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
EKS_COMPONENT = "eks:index:Cluster"
GKE_NODE_POOL = "gcp:container/nodePool:NodePool"
GKE_CLUSTER = "gcp:container/cluster:Cluster"
K8S_SERVICE = "kubernetes:core/v1:Service"
TRADING_SERVICE = f"kubernetes:{API_VERSION}:{KIND}"


def _is_trading(labels: Mapping[str, Any] | None) -> bool:
    return (labels or {}).get(POOL_LABEL) == "trading"


def _has_trading_taint(taints: list[Mapping[str, Any]] | None) -> bool:
    return any(
        taint.get("key") == POOL_LABEL
        and taint.get("value") == "trading"
        and taint.get("effect") == "NO_SCHEDULE"
        for taint in taints or []
    )


def _open_to_all(cidrs: list[str]) -> list[str]:
    def whole_internet(cidr: str) -> bool:
        try:
            return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
        except ValueError:  # the cloud API refuses it anyway
            return False

    return [cidr for cidr in cidrs if whole_internet(cidr)]


def validate_trading_taint(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Trading node pools carry tradeplane.io/pool=trading:NoSchedule, so only trading pods land there."""
    if args.resource_type == EKS_NODE_GROUP:
        labels, taints = args.props.get("labels"), args.props.get("taints")
    elif args.resource_type == GKE_NODE_POOL:
        node_config = args.props.get("nodeConfig") or {}
        labels, taints = node_config.get("labels"), node_config.get("taints")
    else:
        return
    if _is_trading(labels) and not _has_trading_taint(taints):
        report_violation(
            f"trading node pool {args.name} lacks the taint {POOL_LABEL}=trading:NoSchedule", None
        )


def validate_static_cpu_manager(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Trading nodes run the kubelet's static CPU manager: exclusive cores for Guaranteed pods."""
    props = args.props
    if args.resource_type == EKS_NODE_GROUP:
        # Its kubelet config lives in the launch template, which is checked on its own.
        if _is_trading(props.get("labels")) and not props.get("launchTemplate"):
            report_violation(
                f"trading node group {args.name} has no launch template: nothing sets the static CPU manager",
                None,
            )
    elif args.resource_type == EKS_LAUNCH_TEMPLATE:
        if not _is_trading(props.get("tags")):
            return
        try:
            kubelet = parse_node_config(props.get("userData") or "")["spec"]["kubelet"]["config"]
        except (ValueError, KeyError, TypeError) as error:
            report_violation(
                f"trading launch template {args.name}: no kubelet config in the user data ({error})", None
            )
            return
        if kubelet.get("cpuManagerPolicy") != "static":
            report_violation(
                f"trading launch template {args.name}: cpuManagerPolicy is "
                f"{kubelet.get('cpuManagerPolicy')!r}, not 'static'",
                None,
            )
    elif args.resource_type == GKE_NODE_POOL:
        node_config = props.get("nodeConfig") or {}
        if not _is_trading(node_config.get("labels")):
            return
        policy = (node_config.get("kubeletConfig") or {}).get("cpuManagerPolicy")
        if policy != "static":
            report_violation(
                f"trading node pool {args.name}: cpuManagerPolicy is {policy!r}, not 'static'", None
            )


def validate_trading_service_resources(
    args: ResourceValidationArgs, report_violation: ReportViolation
) -> None:
    """A TradingService asks for whole cores and for huge pages."""
    if args.resource_type != TRADING_SERVICE:
        return
    resources = (args.props.get("spec") or {}).get("resources") or {}
    cpus = resources.get("cpus")
    whole = (
        isinstance(cpus, int | float)
        and not isinstance(cpus, bool)
        and float(cpus).is_integer()
        and cpus >= 1
    )
    if not whole:
        report_violation(
            f"TradingService {args.name}: spec.resources.cpus is {cpus!r}; "
            "exclusive cores need a whole number",
            None,
        )
    hugepages = resources.get("hugepages") or {}
    try:
        amount = integer_quantity(str(hugepages.get("amount", "")))
    except ValueError:
        amount = 0
    if hugepages.get("pageSize") not in ("2Mi", "1Gi") or amount <= 0:
        report_violation(
            f"TradingService {args.name}: spec.resources.hugepages must name a pageSize (2Mi or 1Gi) "
            f"and a positive amount, got {dict(hugepages)!r}",
            None,
        )


def _endpoint_allow_list(resource_type: str, props: Mapping[str, Any]) -> tuple[bool, list[str]] | None:
    """(publicly reachable, allowed CIDR blocks) of a resource with an endpoint, None for other types."""
    if resource_type == EKS_CLUSTER:
        vpc = props.get("vpcConfig") or {}
        # EKS defaults to a public endpoint open to 0.0.0.0/0.
        return vpc.get("endpointPublicAccess", True), list(vpc.get("publicAccessCidrs") or ["0.0.0.0/0"])
    if resource_type == EKS_COMPONENT:
        return props.get("endpointPublicAccess", True), list(props.get("publicAccessCidrs") or ["0.0.0.0/0"])
    if resource_type == GKE_CLUSTER:
        if (props.get("privateClusterConfig") or {}).get("enablePrivateEndpoint"):
            return False, []
        blocks = (props.get("masterAuthorizedNetworksConfig") or {}).get("cidrBlocks") or []
        return True, [block.get("cidrBlock", "") for block in blocks]
    if resource_type == K8S_SERVICE:
        spec = props.get("spec") or {}
        return spec.get("type") == "LoadBalancer", list(spec.get("loadBalancerSourceRanges") or [])
    return None


def validate_endpoint_allow_list(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Nothing is reachable from the internet without an allow-list of source networks."""
    found = _endpoint_allow_list(args.resource_type, args.props)
    if found is None:
        return
    public, cidrs = found
    if not public:
        return
    if not cidrs:
        report_violation(
            f"{args.name} has a public endpoint without an allow-list of source CIDR blocks", None
        )
    elif _open_to_all(cidrs):
        report_violation(f"{args.name} has a public endpoint open to {', '.join(_open_to_all(cidrs))}", None)


def _policy(
    name: str, validate: Callable[[ResourceValidationArgs, ReportViolation], None]
) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name,
        description=(validate.__doc__ or "").strip(),
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


POLICIES = [
    _policy("trading-nodes-static-cpu-manager", validate_static_cpu_manager),
    _policy("trading-nodes-tainted", validate_trading_taint),
    _policy("trading-services-whole-cpus-and-hugepages", validate_trading_service_resources),
    _policy("no-public-endpoint-without-allow-list", validate_endpoint_allow_list),
]
