"""The CrossGuard policies, run as the analyzer runs them: each policy's validate over resource inputs
wrapped in pulumi_policy's unknown-checking proxy. Compliant inputs are the program's own."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResourceOptions,
    ResourceValidationArgs,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from tradeplane_infra.nodeconfig import trading_user_data
from tradeplane_infra.policies import POLICIES

Graphs = Callable[[str], Any]
POLICY = {policy.name: policy for policy in POLICIES}
TAINT = {"key": "tradeplane.io/pool", "value": "trading", "effect": "NO_SCHEDULE"}


def violations(resource_type: str, props: dict[str, Any], policies: list[str] | None = None) -> list[str]:
    found: list[str] = []
    options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    args = ResourceValidationArgs(
        resource_type,
        unknown_checking_proxy(props),
        f"urn:pulumi:test::tradeplane::{resource_type}::x",
        "x",
        options,
        None,
    )
    for name in policies or list(POLICY):
        POLICY[name].validate(args, lambda message, urn, name=name: found.append(f"{name}: {message}"))
    return found


def declared_resources(graph: Any, resource_type: str, name: str) -> dict[str, Any]:
    return copy.deepcopy(graph.one(resource_type, name).inputs)


def test_the_pack_is_mandatory_and_describes_each_policy() -> None:
    assert len(POLICY) == len(POLICIES) == 4
    for policy in POLICIES:
        assert policy.enforcement_level == EnforcementLevel.MANDATORY
        assert policy.description


@pytest.mark.parametrize("stack", ["local", "aws", "gcp"])
def test_the_program_complies_with_its_own_policies(stack: str, declared: Graphs) -> None:
    for resource in declared(stack).declared:
        assert violations(resource.type, resource.inputs) == [], f"{resource.type} {resource.name}"


def test_trading_node_group_without_the_taint(declared: Graphs) -> None:
    node_group = declared_resources(declared("aws"), "aws:eks/nodeGroup:NodeGroup", "tradeplane-trading")
    node_group["taints"] = [{**TAINT, "effect": "PREFER_NO_SCHEDULE"}]
    assert violations("aws:eks/nodeGroup:NodeGroup", node_group) == [
        "trading-nodes-tainted: trading node pool x lacks the taint tradeplane.io/pool=trading:NoSchedule"
    ]
    del node_group["taints"]
    assert len(violations("aws:eks/nodeGroup:NodeGroup", node_group)) == 1


def test_general_node_groups_need_no_taint(declared: Graphs) -> None:
    node_group = declared_resources(declared("aws"), "aws:eks/nodeGroup:NodeGroup", "tradeplane-general")
    assert "taints" not in node_group
    assert violations("aws:eks/nodeGroup:NodeGroup", node_group) == []


def test_trading_node_group_without_launch_template(declared: Graphs) -> None:
    node_group = declared_resources(declared("aws"), "aws:eks/nodeGroup:NodeGroup", "tradeplane-trading")
    del node_group["launchTemplate"]
    assert violations("aws:eks/nodeGroup:NodeGroup", node_group) == [
        "trading-nodes-static-cpu-manager: trading node group x has no launch template: "
        "nothing sets the static CPU manager"
    ]


@pytest.mark.parametrize(
    ("user_data", "violation"),
    [
        (trading_user_data({"cpuManagerPolicy": "none"}, 8), "cpuManagerPolicy is 'none', not 'static'"),
        (trading_user_data({"topologyManagerPolicy": "single-numa-node"}, 8), "cpuManagerPolicy is None"),
        (
            "IyEvYmluL2Jhc2gK",
            "no kubelet config in the user data (user data is not a MIME multi-part document)",
        ),
    ],
)
def test_trading_launch_template_without_static_cpu_manager(
    declared: Graphs, user_data: str, violation: str
) -> None:
    template = declared_resources(
        declared("aws"), "aws:ec2/launchTemplate:LaunchTemplate", "tradeplane-trading"
    )
    template["userData"] = user_data
    (found,) = violations("aws:ec2/launchTemplate:LaunchTemplate", template)
    assert found.startswith("trading-nodes-static-cpu-manager: trading launch template x")
    assert violation in found
    # Launch templates of other node groups are none of the pack's business.
    del template["tags"]
    assert violations("aws:ec2/launchTemplate:LaunchTemplate", template) == []


def test_user_data_unknown_during_preview_is_left_to_the_update(declared: Graphs) -> None:
    template = declared_resources(
        declared("aws"), "aws:ec2/launchTemplate:LaunchTemplate", "tradeplane-trading"
    )
    template["userData"] = UNKNOWN_STRING_VALUE
    with pytest.raises(UnknownValueError):
        violations("aws:ec2/launchTemplate:LaunchTemplate", template, ["trading-nodes-static-cpu-manager"])


def test_gke_trading_pool_without_static_cpu_manager_or_taint(declared: Graphs) -> None:
    pool = declared_resources(declared("gcp"), "gcp:container/nodePool:NodePool", "tradeplane-trading")
    pool["nodeConfig"]["kubeletConfig"]["cpuManagerPolicy"] = "none"
    pool["nodeConfig"]["taints"] = []
    assert violations("gcp:container/nodePool:NodePool", pool) == [
        "trading-nodes-static-cpu-manager: trading node pool x: cpuManagerPolicy is 'none', not 'static'",
        "trading-nodes-tainted: trading node pool x lacks the taint tradeplane.io/pool=trading:NoSchedule",
    ]


@pytest.mark.parametrize(
    ("resources", "violation"),
    [
        ({"cpus": 2.5, "memory": "4Gi", "hugepages": {"pageSize": "1Gi", "amount": "2Gi"}}, "cpus is 2.5"),
        (
            {"cpus": "500m", "memory": "4Gi", "hugepages": {"pageSize": "1Gi", "amount": "2Gi"}},
            "cpus is '500m'",
        ),
        ({"cpus": True, "memory": "4Gi", "hugepages": {"pageSize": "1Gi", "amount": "2Gi"}}, "cpus is True"),
        ({"cpus": 4.0, "memory": "4Gi"}, "hugepages must name a pageSize (2Mi or 1Gi) and a positive amount"),
        ({"cpus": 4.0, "memory": "4Gi", "hugepages": {"pageSize": "1Gi", "amount": "0"}}, "positive amount"),
        ({"cpus": 4.0, "memory": "4Gi", "hugepages": {"pageSize": "4Ki", "amount": "2Gi"}}, "pageSize"),
    ],
)
def test_trading_service_without_whole_cpus_or_hugepages(
    declared: Graphs, resources: dict[str, Any], violation: str
) -> None:
    service = declared_resources(
        declared("local"), "kubernetes:tradeplane.io/v1alpha1:TradingService", "tradeplane-order"
    )
    service["spec"]["resources"] = resources
    (found,) = violations("kubernetes:tradeplane.io/v1alpha1:TradingService", service)
    assert found.startswith("trading-services-whole-cpus-and-hugepages: TradingService x: spec.resources.")
    assert violation in found


@pytest.mark.parametrize(
    ("resource_type", "props", "violation"),
    [
        ("aws:eks/cluster:Cluster", {"vpcConfig": {"subnetIds": ["s"]}}, "open to 0.0.0.0/0"),
        (
            "aws:eks/cluster:Cluster",
            {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["10.0.0.0/8", "0.0.0.0/0"]}},
            "open to 0.0.0.0/0",
        ),
        ("aws:eks/cluster:Cluster", {"vpcConfig": {"endpointPublicAccess": False}}, None),
        ("eks:index:Cluster", {"endpointPublicAccess": True, "publicAccessCidrs": ["::/0"]}, "open to ::/0"),
        ("gcp:container/cluster:Cluster", {"location": "us-east4-a"}, "without an allow-list"),
        (
            "gcp:container/cluster:Cluster",
            {"privateClusterConfig": {"enablePrivateEndpoint": True, "enablePrivateNodes": True}},
            None,
        ),
        ("kubernetes:core/v1:Service", {"spec": {"type": "LoadBalancer"}}, "without an allow-list"),
        (
            "kubernetes:core/v1:Service",
            {"spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["198.51.100.0/24"]}},
            None,
        ),
        ("kubernetes:core/v1:Service", {"spec": {"type": "ClusterIP"}}, None),
    ],
)
def test_public_endpoints_need_an_allow_list(
    resource_type: str, props: dict[str, Any], violation: str | None
) -> None:
    found = violations(resource_type, props, ["no-public-endpoint-without-allow-list"])
    if violation is None:
        assert found == []
    else:
        (message,) = found
        assert f"no-public-endpoint-without-allow-list: x has a public endpoint {violation}" in message
