"""An EKS cluster with a trading managed node group on Amazon Linux 2023 and a general node group.

The control plane comes from pulumi-eks. The node groups are plain AWS resources, so the launch
template's user data, the labels and the taints are visible as they are, to the policy pack and tests.
"""

from __future__ import annotations

import json
import re

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks

from tradeplane.labels import POOL_LABEL
from tradeplane_infra.nodeconfig import trading_kubelet_config, trading_user_data
from tradeplane_infra.settings import EksSettings

NODE_POLICIES = [
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
]
TRADING_TAINT = aws.eks.NodeGroupTaintArgs(key=POOL_LABEL, value="trading", effect="NO_SCHEDULE")


def al2023_ami_type(instance_type: str) -> str:
    """Graviton families carry a `g` right after the generation digit: c7g, m7gd, c7gn."""
    graviton = re.match(r"^[a-z]+[0-9]+g", instance_type) is not None
    return "AL2023_ARM_64_STANDARD" if graviton else "AL2023_x86_64_STANDARD"


def _fixed_size(nodes: int) -> aws.eks.NodeGroupScalingConfigArgs:
    return aws.eks.NodeGroupScalingConfigArgs(desired_size=nodes, min_size=nodes, max_size=nodes)


def eks_cluster(name: str, settings: EksSettings, parent: pulumi.Resource) -> pulumi.Output[str]:
    """Declares the cluster and its node groups; returns the kubeconfig."""
    cluster_name = settings.clusterName or f"tradeplane-{pulumi.get_stack()}"
    child = pulumi.ResourceOptions(parent=parent)
    cluster = eks.Cluster(
        name,
        name=cluster_name,
        version=settings.version,
        vpc_id=settings.vpcId,
        subnet_ids=settings.subnetIds,
        skip_default_node_group=True,
        authentication_mode=eks.AuthenticationMode.API,
        endpoint_private_access=True,
        endpoint_public_access=settings.publicEndpoint,
        public_access_cidrs=settings.publicAccessCidrs or None,
        opts=child,
    )

    node_role = aws.iam.Role(
        f"{name}-node",
        assume_role_policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
        opts=child,
    )
    attachments = [
        aws.iam.RolePolicyAttachment(
            f"{name}-node-{arn.rsplit('/', 1)[1]}", role=node_role.name, policy_arn=arn, opts=child
        )
        for arn in NODE_POLICIES
    ]
    after_cluster = pulumi.ResourceOptions(parent=parent, depends_on=[cluster, *attachments])

    general = settings.general
    aws.eks.NodeGroup(
        f"{name}-general",
        cluster_name=cluster_name,
        node_role_arn=node_role.arn,
        subnet_ids=settings.subnetIds,
        instance_types=[general.instanceType],
        ami_type=al2023_ami_type(general.instanceType),
        scaling_config=_fixed_size(general.nodes),
        labels={POOL_LABEL: "general"},
        opts=after_cluster,
    )

    trading = settings.trading
    group = (
        aws.ec2.PlacementGroup(f"{name}-trading", strategy="cluster", opts=child)
        if trading.placementGroup
        else None
    )
    placement = None
    if group or trading.tenancy == "dedicated":
        placement = aws.ec2.LaunchTemplatePlacementArgs(
            tenancy="dedicated" if trading.tenancy == "dedicated" else None,
            group_name=group.name if group else None,
        )
    kubelet_config = trading_kubelet_config(
        trading.instance,
        trading.reservedCores,
        trading.kubeReservedMemory,
        trading.systemReservedMemory,
        trading.evictionHardMemory,
    )
    launch_template = aws.ec2.LaunchTemplate(
        f"{name}-trading",
        description="tradeplane trading nodes: pinned CPUs, NUMA alignment, 1Gi huge pages",
        user_data=trading_user_data(kubelet_config, trading.hugepages1Gi),
        placement=placement,
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_tokens="required", http_put_response_hop_limit=2
        ),
        tags={POOL_LABEL: "trading"},
        update_default_version=True,
        opts=child,
    )
    aws.eks.NodeGroup(
        f"{name}-trading",
        cluster_name=cluster_name,
        node_role_arn=node_role.arn,
        subnet_ids=trading.subnetIds or settings.subnetIds,
        instance_types=[trading.instanceType],
        ami_type=al2023_ami_type(trading.instanceType),
        launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
            id=launch_template.id, version=launch_template.latest_version.apply(str)
        ),
        scaling_config=_fixed_size(trading.nodes),
        # One node at a time: the services spread one replica per node.
        update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
        labels={POOL_LABEL: "trading"},
        taints=[TRADING_TAINT],
        opts=after_cluster,
    )
    return cluster.kubeconfig_json
