"""The resource graph of each target, as the Pulumi engine would receive it (mock monitor)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pulumi
import pytest

from tradeplane.api import TradingServiceSpec
from tradeplane_infra.nodeconfig import CLOUD_CONFIG_CONTENT_TYPE, parse_node_config, user_data_parts
from tradeplane_infra.services import spec_document, trading_service_specs
from tradeplane_infra.settings import Settings

POOL = "tradeplane.io/pool"
TRADING_TAINT = {"key": POOL, "value": "trading", "effect": "NO_SCHEDULE"}
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
NODE_POOL = "gcp:container/nodePool:NodePool"
TRADING_SERVICE = "kubernetes:tradeplane.io/v1alpha1:TradingService"
RELEASE = "kubernetes:helm.sh/v3:Release"
# The example stacks' resource graphs (see conftest.py: Graph).
Graphs = Callable[[str], Any]
SERVICES = ["execution", "market-data", "order", "position", "risk"]


def test_eks_control_plane(declared: Graphs) -> None:
    cluster = declared("aws").one("eks:index:Cluster", "tradeplane").inputs
    assert cluster["name"] == "tradeplane-test"
    assert cluster["skipDefaultNodeGroup"] is True
    assert cluster["authenticationMode"] == "API"
    assert cluster["endpointPublicAccess"] is True
    assert cluster["publicAccessCidrs"] == ["203.0.113.0/24"]


def test_eks_trading_node_group_is_labelled_tainted_and_sized(declared: Graphs) -> None:
    graph = declared("aws")
    trading = graph.one(NODE_GROUP, "tradeplane-trading").inputs
    assert trading["labels"] == {POOL: "trading"}
    assert trading["taints"] == [TRADING_TAINT]
    assert trading["instanceTypes"] == ["c6i.metal"]
    assert trading["amiType"] == "AL2023_x86_64_STANDARD"
    assert trading["scalingConfig"] == {"desiredSize": 3, "minSize": 3, "maxSize": 3}
    assert trading["subnetIds"] == ["subnet-0aaa1111bbbb2222c"]
    assert trading["launchTemplate"] == {"id": "tradeplane-trading-id", "version": "3"}
    general = graph.one(NODE_GROUP, "tradeplane-general").inputs
    assert general["labels"] == {POOL: "general"}
    assert "taints" not in general


def test_eks_trading_launch_template_carries_the_kubelet_config(declared: Graphs) -> None:
    template = declared("aws").one("aws:ec2/launchTemplate:LaunchTemplate", "tradeplane-trading").inputs
    assert template["tags"] == {POOL: "trading"}
    assert template["placement"] == {"groupName": "tradeplane-trading-4f2a"}
    kubelet = parse_node_config(template["userData"])["spec"]["kubelet"]["config"]
    assert kubelet["cpuManagerPolicy"] == "static"
    assert kubelet["cpuManagerPolicyOptions"] == {"full-pcpus-only": "true"}
    assert kubelet["topologyManagerPolicy"] == "single-numa-node"
    assert kubelet["topologyManagerScope"] == "pod"
    # reservedCores: 2 on c6i.metal: cores 0-1 and their siblings 64-65.
    assert kubelet["reservedSystemCPUs"] == "0-1,64-65"
    assert kubelet["memoryManagerPolicy"] == "Static"
    assert kubelet["reservedMemory"] == [{"numaNode": 0, "limits": {"memory": "3172Mi"}}]
    cloud_config = user_data_parts(template["userData"])[CLOUD_CONFIG_CONTENT_TYPE]
    assert "ExecStart=/usr/local/sbin/tradeplane-hugepages 64" in cloud_config


def test_eks_placement_group_keeps_trading_nodes_close(declared: Graphs) -> None:
    group = declared("aws").one("aws:ec2/placementGroup:PlacementGroup", "tradeplane-trading").inputs
    assert group["strategy"] == "cluster"


def test_eks_dedicated_hosts_and_graviton_nodes(
    declare: Callable[[Settings], Any],
    stack_settings: Callable[..., Settings],
    stack_config: Callable[[str], dict[str, str]],
) -> None:
    def trading_resources(**trading: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        eks = {
            **json.loads(stack_config("aws")["eks"]),
            "trading": {"nodes": 3, "hugepages1Gi": 32, **trading},
        }
        graph = declare(stack_settings("aws", eks=eks))
        assert graph.of_type("aws:ec2/placementGroup:PlacementGroup") == []
        template = graph.one("aws:ec2/launchTemplate:LaunchTemplate", "tradeplane-trading").inputs
        return graph.one(NODE_GROUP, "tradeplane-trading").inputs, template

    node_group, template = trading_resources(instanceType="c6i.32xlarge", tenancy="dedicated")
    assert template["placement"] == {"tenancy": "dedicated"}
    assert node_group["amiType"] == "AL2023_x86_64_STANDARD"
    node_group, template = trading_resources(instanceType="c7g.metal")
    assert "placement" not in template
    assert node_group["amiType"] == "AL2023_ARM_64_STANDARD"
    # No SMT on Graviton: the reserved core has no sibling.
    assert parse_node_config(template["userData"])["spec"]["kubelet"]["config"]["reservedSystemCPUs"] == "0"


def test_gke_trading_pool_sets_kubelet_and_hugepages(declared: Graphs) -> None:
    graph = declared("gcp")
    node_config = graph.one(NODE_POOL, "tradeplane-trading").inputs["nodeConfig"]
    assert node_config["machineType"] == "c3-standard-88"
    assert node_config["labels"] == {POOL: "trading"}
    assert node_config["taints"] == [TRADING_TAINT]
    assert node_config["kubeletConfig"] == {
        "cpuManagerPolicy": "static",
        "cpuCfsQuota": False,
        "topologyManager": {"policy": "single-numa-node", "scope": "pod"},
        "memoryManager": {"policy": "Static"},
    }
    assert node_config["linuxNodeConfig"] == {"hugepagesConfig": {"hugepageSize1g": 64}}
    assert node_config["advancedMachineFeatures"] == {"threadsPerCore": 1}
    general = graph.one(NODE_POOL, "tradeplane-general").inputs["nodeConfig"]
    assert "taints" not in general and general["labels"] == {POOL: "general"}


def test_gke_api_server_is_reachable_from_the_allow_list_only(declared: Graphs) -> None:
    graph = declared("gcp")
    cluster = graph.one("gcp:container/cluster:Cluster", "tradeplane").inputs
    assert cluster["masterAuthorizedNetworksConfig"] == {
        "cidrBlocks": [{"cidrBlock": "203.0.113.0/24", "displayName": "allowed-0"}]
    }
    assert cluster["removeDefaultNodePool"] is True
    assert cluster["deletionProtection"] is True
    kubeconfig = json.loads(graph.exports["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://203.0.113.10"
    assert kubeconfig["users"][0]["user"]["exec"]["command"] == "gke-gcloud-auth-plugin"


def test_local_target_creates_no_cloud_resources(declared: Graphs) -> None:
    graph = declared("local")
    providers = {d.type.split(":")[0] for d in graph.declared if d.type.startswith(("aws:", "gcp:", "eks:"))}
    assert providers == set()
    provider = graph.one("pulumi:providers:kubernetes", "tradeplane").inputs
    assert provider["kubeconfig"] == graph.exports["kubeconfig"]
    assert graph.exports["kubeconfig"].endswith("kubeconfig")


def test_operator_release_uses_the_chart_and_watches_the_trading_namespace(
    declared: Graphs, stack_settings: Callable[..., Settings]
) -> None:
    release = declared("aws").one(RELEASE, "tradeplane-operator").inputs
    assert os.path.realpath(release["chart"]) == str(stack_settings("aws").chart_dir)
    assert release["namespace"] == "tradeplane-system"
    assert release["values"] == {
        "watchNamespaces": ["trading"],
        "image": {
            "repository": "123456789012.dkr.ecr.us-east-1.amazonaws.com/tradeplane-operator",
            "tag": "0.1.0",
            "digest": "",
        },
    }


def test_helm_values_from_config_merge_over_the_computed_ones(
    declare: Callable[[Settings], Any], stack_settings: Callable[..., Settings]
) -> None:
    settings = stack_settings("local", helmValues={"replicas": 3, "image": {"pullPolicy": "Always"}})
    values = declare(settings).one(RELEASE, "tradeplane-operator").inputs["values"]
    assert values["replicas"] == 3
    assert values["image"]["pullPolicy"] == "Always"
    assert values["image"]["repository"] == "registry.example/tradeplane-operator"


def test_five_trading_services_are_the_operator_api_documents(
    declared: Graphs, stack_settings: Callable[..., Settings]
) -> None:
    for stack in ("local", "aws", "gcp"):
        declared_services = {
            d.inputs["metadata"]["name"]: d.inputs for d in declared(stack).of_type(TRADING_SERVICE)
        }
        assert sorted(declared_services) == SERVICES
        specs = trading_service_specs(stack_settings(stack))
        for name, service in declared_services.items():
            assert service["apiVersion"] == "tradeplane.io/v1alpha1"
            assert service["metadata"]["namespace"] == "trading"
            # Numbers reach the engine as floats; they compare equal to the model's ints.
            assert service["spec"] == spec_document(specs[name])
            assert TradingServiceSpec.model_validate(service["spec"]).component == name


def test_trading_services_ask_for_whole_cores_and_1gi_pages(declared: Graphs) -> None:
    for service in declared("aws").of_type(TRADING_SERVICE):
        resources = service.inputs["spec"]["resources"]
        assert float(resources["cpus"]).is_integer() and resources["cpus"] % 2 == 0
        assert resources["hugepages"]["pageSize"] == "1Gi"
        assert service.inputs["spec"]["image"].endswith("/tradeplane-services:0.1.0")


def test_service_config_and_odd_cores_reach_the_resources(declared: Graphs) -> None:
    local = {
        d.inputs["metadata"]["name"]: d.inputs["spec"] for d in declared("local").of_type(TRADING_SERVICE)
    }
    assert local["market-data"]["config"] == {"symbols": ["AAPL", "MSFT", "NVDA"]}
    gcp = {d.inputs["metadata"]["name"]: d.inputs["spec"] for d in declared("gcp").of_type(TRADING_SERVICE)}
    assert gcp["position"]["resources"]["cpus"] == 3


def test_outputs_name_the_trading_nodes_and_services(declared: Graphs) -> None:
    exports = declared("aws").exports
    assert exports["target"] == "eks"
    assert exports["tradingNodes"] == {"type": "c6i.metal", "count": 3, "hugepages1Gi": 64}
    assert exports["tradingServices"] == SERVICES


def test_entry_point_declares_the_stack_from_pulumi_config(
    stack_config: Callable[[str], dict[str, str]], run_entry_point: Callable[[dict[str, str]], list[Any]]
) -> None:
    declared = run_entry_point(stack_config("aws"))
    assert len([d for d in declared if d.type == TRADING_SERVICE]) == 5
    assert sorted(d.name for d in declared if d.type == NODE_GROUP) == [
        "tradeplane-general",
        "tradeplane-trading",
    ]


def test_entry_point_stops_on_bad_config_naming_the_key(
    stack_config: Callable[[str], dict[str, str]], run_entry_point: Callable[[dict[str, str]], list[Any]]
) -> None:
    config = {**stack_config("local"), "services": json.dumps({"order": {"cpus": 5}})}
    with pytest.raises(pulumi.RunError, match=r"tradeplane:services\.order\.cpus: 5 is odd"):
        run_entry_point(config)
