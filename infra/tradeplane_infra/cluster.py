"""`TradingCluster`: the Kubernetes cluster the stack is installed on, by target."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from tradeplane_infra.eks import eks_cluster
from tradeplane_infra.gke import gke_cluster
from tradeplane_infra.settings import Settings


class TradingCluster(pulumi.ComponentResource):
    """EKS or GKE with trading and general node pools, or the local control plane (nothing to create).

    `provider` talks to the cluster; `kubeconfig` is its contents (a secret) for a cloud target and
    its path for the local one.
    """

    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tradeplane:infra:TradingCluster", name, None, opts)
        if settings.target == "eks":
            assert settings.eks is not None
            self.kubeconfig = pulumi.Output.secret(eks_cluster(name, settings.eks, parent=self))
        elif settings.target == "gke":
            assert settings.gke is not None
            self.kubeconfig = pulumi.Output.secret(gke_cluster(name, settings.gke, parent=self))
        else:
            self.kubeconfig = pulumi.Output.from_input(settings.local.kubeconfig_path())
        self.provider = k8s.Provider(
            name, kubeconfig=self.kubeconfig, opts=pulumi.ResourceOptions(parent=self)
        )
        self.register_outputs({"kubeconfig": self.kubeconfig})
