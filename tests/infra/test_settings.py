"""Stack config checks: each error names the `tradeplane:*` key to fix and says why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tradeplane_infra.instances import GIB
from tradeplane_infra.settings import (
    ConfigError,
    Settings,
    gke_reserved_memory_bytes,
    parse_settings,
    read_config,
    split_image,
)

IMAGE = "registry.example/tradeplane-services:0.1.0"
EKS = {"vpcId": "vpc-1", "subnetIds": ["subnet-a", "subnet-b"]}
GKE = {"location": "us-east4-a", "authorizedNetworks": ["203.0.113.0/24"]}


def eks(**trading: Any) -> dict[str, Any]:
    return {"image": IMAGE, "target": "eks", "eks": {**EKS, "trading": trading}}


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw)
    return str(caught.value)


@pytest.mark.parametrize("stack", ["local", "aws", "gcp"])
def test_example_stacks_are_valid(stack: str, stack_settings: Callable[..., Settings]) -> None:
    settings = stack_settings(stack)
    assert settings.target == {"local": "local", "aws": "eks", "gcp": "gke"}[stack]


def test_defaults_fit_the_local_trading_nodes() -> None:
    settings = parse_settings({"image": IMAGE})
    nodes = settings.trading_nodes()
    # The shape comes from the node pools the local control plane starts (tradeplane.cluster nodes.yaml).
    assert (nodes.count, nodes.cpus, nodes.threads_per_core, nodes.numa_nodes, nodes.hugepages_1gi) == (
        3,
        32,
        2,
        2,
        16,
    )
    assert nodes.memory_bytes == 128 * GIB


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            eks(instanceType="c5.metal", hugepages1Gi=200),
            "tradeplane:eks.trading.hugepages1Gi: 200 pages of 1Gi (200Gi) plus 3.1Gi reserved for the "
            "kubelet and system exceed the 192Gi of memory of c5.metal",
            id="hugepages-beyond-memory",
        ),
        pytest.param(
            eks(instanceType="c5.metal", hugepages1Gi=33),
            "tradeplane:eks.trading.hugepages1Gi: 33 pages do not split evenly over the 2 NUMA nodes of "
            "c5.metal",
            id="hugepages-uneven-over-numa",
        ),
        pytest.param(
            {"image": IMAGE, "services": {"order": {"cpus": 5}}},
            "tradeplane:services.order.cpus: 5 is odd but metal-32c-128g runs 2 threads per core",
            id="odd-cpus-on-smt",
        ),
        pytest.param(
            eks(instanceType="c5.large"),
            "tradeplane:eks.trading.instanceType: 'c5.large' is not a supported trading instance type; "
            "supported: c5.metal",
            id="unknown-instance-type",
        ),
        pytest.param(
            eks(instanceType="c6i.32xlarge"),
            "tradeplane:eks.trading.tenancy: c6i.32xlarge is not bare metal",
            id="shared-host",
        ),
        pytest.param(
            eks(instanceType="m5zn.metal", reservedCores=12),
            "tradeplane:eks.trading.reservedCores: 12 cores leave none on NUMA node 0 of m5zn.metal",
            id="reserved-cores",
        ),
        pytest.param(
            eks(placementGroup=True),
            "tradeplane:eks.trading.subnetIds: a cluster placement group lives in one availability zone",
            id="placement-group-zones",
        ),
        pytest.param(
            eks(hugepage1Gi=32),
            "tradeplane:eks.trading.hugepage1Gi: Extra inputs are not permitted",
            id="misspelt-key",
        ),
        pytest.param(
            {"image": IMAGE, "target": "eks", "eks": {**EKS, "publicEndpoint": True}},
            "tradeplane:eks.publicAccessCidrs: a public API endpoint needs an allow-list of CIDR blocks",
            id="public-endpoint",
        ),
        pytest.param(
            {"image": IMAGE, "target": "gke", "gke": {**GKE, "authorizedNetworks": ["0.0.0.0/0"]}},
            "tradeplane:gke.authorizedNetworks: 0.0.0.0/0 opens the API server to the whole internet",
            id="open-allow-list",
        ),
        pytest.param(
            {"image": IMAGE, "target": "gke", "gke": {**GKE, "authorizedNetworks": ["10.0.0.300/8"]}},
            "tradeplane:gke.authorizedNetworks: '10.0.0.300/8' is not a CIDR block",
            id="bad-cidr",
        ),
        pytest.param(
            {
                "image": IMAGE,
                "target": "gke",
                "gke": {**GKE, "trading": {"machineType": "h3-standard-88", "threadsPerCore": 2}},
            },
            "tradeplane:gke.trading.threadsPerCore: h3-standard-88 has 1 thread per core",
            id="smt-on-a-machine-without",
        ),
        pytest.param(
            {"image": IMAGE, "target": "gke"}, "tradeplane:gke: required when target is gke", id="no-gke"
        ),
        pytest.param({"target": "local"}, "tradeplane:image: Field required", id="no-image"),
        pytest.param(
            {"image": IMAGE, "namespace": "Trading"},
            "tradeplane:namespace: String should match pattern",
            id="ns",
        ),
        pytest.param(
            {"image": IMAGE, "chart": "../charts/missing"}, "tradeplane:chart: ", id="chart-directory-missing"
        ),
        pytest.param(
            {"image": IMAGE, "services": {"order": {"cpus": 18}}},
            "tradeplane:services.order.cpus: 18 exceed the 16 CPUs of one NUMA node of metal-32c-128g",
            id="cpus-beyond-numa-node",
        ),
        pytest.param(
            {"image": IMAGE, "services": {"market-data": {"hugepages1Gi": 10}}},
            "tradeplane:services.market-data.hugepages1Gi: 10 exceed the 8 1Gi pages of one NUMA node",
            id="hugepages-beyond-numa-node",
        ),
        pytest.param(
            {"image": IMAGE, "services": {"risk": {"replicas": 4}}},
            "tradeplane:services.risk.replicas: 4 replicas never share a node but there are 3 trading nodes",
            id="replicas-beyond-nodes",
        ),
        pytest.param(
            {"image": IMAGE, "services": {"risk": {"cpus": 12}, "order": {"cpus": 12}}},
            "tradeplane:services: one replica of each service needs 34 exclusive CPUs on a trading node; "
            "a metal-32c-128g node has 32",
            id="services-beyond-node",
        ),
        pytest.param(
            {"image": IMAGE, "services": {"market-data": {"hugepages1Gi": 8}, "risk": {"hugepages1Gi": 8}}},
            "tradeplane:services: one replica of each service needs 21 1Gi huge pages on a trading node; "
            "a metal-32c-128g node has 16",
            id="hugepages-beyond-node",
        ),
        pytest.param(
            {"image": IMAGE, "services": {"order": {"memory": "100Gi"}}},
            "tradeplane:services: one replica of each service needs 116 Gi of memory besides huge pages and "
            "reservations on a trading node; a metal-32c-128g node has 112",
            id="memory-beyond-node",
        ),
        pytest.param(
            {"image": IMAGE, "services": {"backtest": {"cpus": 2}}},
            "tradeplane:services.backtest: Extra inputs are not permitted",
            id="unknown-service",
        ),
        pytest.param(
            {"image": IMAGE, "services": {"position": {"hugepages1Gi": 0}}},
            "tradeplane:services.position.hugepages1Gi: Input should be greater than or equal to 1",
            id="service-without-hugepages",
        ),
    ],
)
def test_bad_config_is_refused_naming_the_key(raw: dict[str, Any], expected: str) -> None:
    assert expected in error_of(raw)


def test_every_problem_is_reported_at_once() -> None:
    message = error_of({"image": IMAGE, "services": {"order": {"cpus": 5}, "risk": {"replicas": 9}}})
    assert message.splitlines() == [
        "tradeplane:services.order.cpus: 5 is odd but metal-32c-128g runs 2 threads per core: "
        "a pod would share a physical core (full-pcpus-only refuses it: SMTAlignmentError)",
        "tradeplane:services.risk.replicas: 9 replicas never share a node but there are 3 trading nodes",
    ]


def test_odd_cpus_are_fine_without_smt(stack_settings: Callable[..., Settings]) -> None:
    settings = stack_settings("gcp")  # threadsPerCore: 1, position asks 3 cpus
    assert settings.services.position.cpus == 3
    assert settings.trading_nodes().threads_per_core == 1


def test_service_overrides_keep_the_other_defaults() -> None:
    settings = parse_settings({"image": IMAGE, "services": {"order": {"cpus": 6}}})
    assert settings.services.order.cpus == 6
    assert settings.services.order.hugepages1Gi == 2
    assert settings.services.risk.cpus == 4


def test_structured_values_are_read_as_json(stack_config: Callable[[str], dict[str, str]]) -> None:
    config = stack_config("aws")
    raw = read_config(config.get)
    assert raw["eks"]["trading"]["instanceType"] == "c6i.metal"
    assert raw["target"] == "eks"
    with pytest.raises(ConfigError, match="tradeplane:eks: not a structured value"):
        read_config({"eks": "c6i.metal"}.get)


def test_gke_reservation_follows_its_published_tiers() -> None:
    # 25% of 4Gi + 20% of 4Gi + 10% of 8Gi + 6% of 112Gi + 2% of the remaining 224Gi, + 100Mi eviction.
    assert gke_reserved_memory_bytes(352) == int(13.8 * GIB) + 100 * 2**20


@pytest.mark.parametrize(
    ("reference", "parts"),
    [
        ("registry.example/op:1.2", ("registry.example/op", "1.2", None)),
        ("registry.example:5000/op", ("registry.example:5000/op", None, None)),
        (
            "registry.example:5000/op:1.2@sha256:" + "a" * 64,
            ("registry.example:5000/op", "1.2", "sha256:" + "a" * 64),
        ),
    ],
)
def test_image_references_split_into_repository_tag_digest(reference: str, parts: tuple[str, ...]) -> None:
    assert split_image(reference) == parts
