"""A zonal GKE cluster with a trading node pool and a general node pool.

GKE exposes the kubelet's CPU, topology and memory managers and the boot-time huge pages through the node
pool's kubeletConfig and linuxNodeConfig; it keeps its own reservations (reservedSystemCPUs is not
settable), which the config checks account for.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_gcp as gcp

from tradeplane.labels import POOL_LABEL
from tradeplane_infra.settings import GkeSettings

OAUTH_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def kubeconfig(cluster_name: str, endpoint: str, ca_certificate: str) -> str:
    """A kubeconfig that authenticates through gcloud's credential plugin."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster_name,
                    "cluster": {
                        "server": f"https://{endpoint}",
                        "certificate-authority-data": ca_certificate,
                    },
                }
            ],
            "users": [
                {
                    "name": cluster_name,
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "gke-gcloud-auth-plugin",
                            "provideClusterInfo": True,
                            "interactiveMode": "Never",
                        }
                    },
                }
            ],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
            "current-context": cluster_name,
        }
    )


def gke_cluster(name: str, settings: GkeSettings, parent: pulumi.Resource) -> pulumi.Output[str]:
    """Declares the cluster and its node pools; returns the kubeconfig."""
    cluster_name = settings.clusterName or f"tradeplane-{pulumi.get_stack()}"
    child = pulumi.ResourceOptions(parent=parent)
    cluster = gcp.container.Cluster(
        name,
        name=cluster_name,
        location=settings.location,
        min_master_version=settings.version,
        network=settings.network,
        subnetwork=settings.subnetwork,
        # Node pools are separate resources; GKE insists on creating a default pool first.
        remove_default_node_pool=True,
        deletion_protection=settings.deletionProtection,
        initial_node_count=1,
        master_authorized_networks_config=gcp.container.ClusterMasterAuthorizedNetworksConfigArgs(
            cidr_blocks=[
                gcp.container.ClusterMasterAuthorizedNetworksConfigCidrBlockArgs(
                    cidr_block=cidr, display_name=f"allowed-{index}"
                )
                for index, cidr in enumerate(settings.authorizedNetworks)
            ]
        ),
        opts=child,
    )

    general = settings.general
    gcp.container.NodePool(
        f"{name}-general",
        cluster=cluster.name,
        location=settings.location,
        node_count=general.nodes,
        node_config=gcp.container.NodePoolNodeConfigArgs(
            machine_type=general.machineType, labels={POOL_LABEL: "general"}, oauth_scopes=OAUTH_SCOPES
        ),
        opts=child,
    )

    trading = settings.trading
    gcp.container.NodePool(
        f"{name}-trading",
        cluster=cluster.name,
        location=settings.location,
        node_count=trading.nodes,
        node_config=gcp.container.NodePoolNodeConfigArgs(
            machine_type=trading.machineType,
            labels={POOL_LABEL: "trading"},
            taints=[
                gcp.container.NodePoolNodeConfigTaintArgs(
                    key=POOL_LABEL, value="trading", effect="NO_SCHEDULE"
                )
            ],
            kubelet_config=gcp.container.NodePoolNodeConfigKubeletConfigArgs(
                cpu_manager_policy="static",
                # Pinned pods own their cores: CFS quota would only add throttling.
                cpu_cfs_quota=False,
                topology_manager=gcp.container.NodePoolNodeConfigKubeletConfigTopologyManagerArgs(
                    policy="single-numa-node", scope="pod"
                ),
                memory_manager=gcp.container.NodePoolNodeConfigKubeletConfigMemoryManagerArgs(
                    policy="Static"
                ),
            ),
            linux_node_config=gcp.container.NodePoolNodeConfigLinuxNodeConfigArgs(
                hugepages_config=gcp.container.NodePoolNodeConfigLinuxNodeConfigHugepagesConfigArgs(
                    hugepage_size1g=trading.hugepages1Gi
                )
            ),
            advanced_machine_features=gcp.container.NodePoolNodeConfigAdvancedMachineFeaturesArgs(
                threads_per_core=trading.threadsPerCore
            )
            if trading.threadsPerCore
            else None,
            oauth_scopes=OAUTH_SCOPES,
        ),
        # A new node joins before an old one leaves: the services spread one replica per node.
        upgrade_settings=gcp.container.NodePoolUpgradeSettingsArgs(max_surge=1, max_unavailable=0),
        opts=child,
    )
    return pulumi.Output.all(
        cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate
    ).apply(lambda values: kubeconfig(*values))
