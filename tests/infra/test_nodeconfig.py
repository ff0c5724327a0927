"""The trading nodes' user data: kubelet config inside an AL2023 NodeConfig, huge pages before the kubelet."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tradeplane.quantity import integer_quantity
from tradeplane_infra.instances import AWS_INSTANCE_TYPES
from tradeplane_infra.nodeconfig import (
    CLOUD_CONFIG_CONTENT_TYPE,
    HUGEPAGES_SCRIPT_PATH,
    HUGEPAGES_UNIT,
    NODECONFIG_CONTENT_TYPE,
    cpu_list,
    mime_document,
    parse_node_config,
    reserved_system_cpus,
    trading_kubelet_config,
    trading_user_data,
    user_data_parts,
)

C6I_METAL = AWS_INSTANCE_TYPES["c6i.metal"]


def kubelet_config(**overrides: Any) -> dict[str, Any]:
    arguments = {
        "instance": C6I_METAL,
        "reserved_cores": 2,
        "kube_reserved_memory": "2Gi",
        "system_reserved_memory": "1Gi",
        "eviction_hard_memory": "100Mi",
        **overrides,
    }
    return trading_kubelet_config(**arguments)


def cloud_config(pages: int) -> dict[str, Any]:
    body = user_data_parts(trading_user_data(kubelet_config(), pages))[CLOUD_CONFIG_CONTENT_TYPE]
    assert body.startswith("#cloud-config\n")
    document: dict[str, Any] = yaml.safe_load(body)
    return document


def written_file(document: dict[str, Any], path: str) -> str:
    (content,) = [entry["content"] for entry in document["write_files"] if entry["path"] == path]
    return str(content)


@pytest.mark.parametrize(
    ("cpus", "listed"),
    [([0, 1, 2, 64, 65, 66], "0-2,64-66"), ([5], "5"), ([3, 1, 2, 7], "1-3,7"), ([0, 2, 4], "0,2,4")],
)
def test_cpu_lists_use_the_kernel_format(cpus: list[int], listed: str) -> None:
    assert cpu_list(cpus) == listed


@pytest.mark.parametrize(
    ("instance", "cores", "listed"),
    [("c6i.metal", 2, "0-1,64-65"), ("c5.metal", 1, "0,48"), ("c7g.metal", 2, "0-1")],
)
def test_reserved_cpus_are_whole_cores_with_their_siblings(instance: str, cores: int, listed: str) -> None:
    assert reserved_system_cpus(AWS_INSTANCE_TYPES[instance], cores) == listed


def test_kubelet_pins_cpus_and_aligns_the_pod_on_one_numa_node() -> None:
    config = kubelet_config()
    assert config["cpuManagerPolicy"] == "static"
    assert config["cpuManagerPolicyOptions"] == {"full-pcpus-only": "true"}
    assert config["topologyManagerPolicy"] == "single-numa-node"
    assert config["topologyManagerScope"] == "pod"
    assert config["reservedSystemCPUs"] == "0-1,64-65"
    assert config["memoryManagerPolicy"] == "Static"


@pytest.mark.parametrize(
    ("kube", "system", "eviction"), [("2Gi", "1Gi", "100Mi"), ("1500Mi", "512Mi", "250Mi")]
)
def test_reserved_memory_matches_the_reservations(kube: str, system: str, eviction: str) -> None:
    """The Static memory manager refuses to start unless these sums agree."""
    config = kubelet_config(
        kube_reserved_memory=kube, system_reserved_memory=system, eviction_hard_memory=eviction
    )
    reserved = sum(integer_quantity(entry["limits"]["memory"]) for entry in config["reservedMemory"])
    assert reserved == sum(
        integer_quantity(text)
        for text in (
            config["kubeReserved"]["memory"],
            config["systemReserved"]["memory"],
            config["evictionHard"]["memory.available"],
        )
    )


def test_user_data_is_a_mime_document_carrying_the_node_config() -> None:
    user_data = trading_user_data(kubelet_config(), 64)
    text = base64.b64decode(user_data).decode()
    assert text.startswith('Content-Type: multipart/mixed; boundary="')
    assert list(user_data_parts(user_data)) == [NODECONFIG_CONTENT_TYPE, CLOUD_CONFIG_CONTENT_TYPE]
    node_config = parse_node_config(user_data)
    assert node_config["apiVersion"] == "node.eks.aws/v1alpha1"
    assert node_config["spec"]["kubelet"]["config"] == kubelet_config()
    # Rendering is deterministic, or every run would replace the launch template.
    assert trading_user_data(kubelet_config(), 64) == user_data


def test_no_huge_pages_means_no_reservation_unit() -> None:
    assert list(user_data_parts(trading_user_data(kubelet_config(), 0))) == [NODECONFIG_CONTENT_TYPE]


def test_huge_pages_are_reserved_by_a_unit_the_kubelet_requires() -> None:
    document = cloud_config(64)
    unit = written_file(document, f"/etc/systemd/system/{HUGEPAGES_UNIT}").splitlines()
    assert "Before=kubelet.service" in unit
    assert "RequiredBy=kubelet.service" in unit
    assert f"ExecStart={HUGEPAGES_SCRIPT_PATH} 64" in unit
    assert document["runcmd"] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", HUGEPAGES_UNIT],
    ]


def fake_sysfs(root: Path, numa_nodes: int) -> list[Path]:
    counts = []
    for node in range(numa_nodes):
        count = root / f"devices/system/node/node{node}/hugepages/hugepages-1048576kB/nr_hugepages"
        count.parent.mkdir(parents=True)
        count.write_text("0\n")
        counts.append(count)
    return counts


def run_reservation(
    tmp_path: Path, pages: int, numa_nodes: int
) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    script = tmp_path / "tradeplane-hugepages"
    script.write_text(written_file(cloud_config(64), HUGEPAGES_SCRIPT_PATH))
    counts = fake_sysfs(tmp_path / "sys", numa_nodes)
    result = subprocess.run(
        ["sh", str(script), str(pages)],
        env={"SYSFS": str(tmp_path / "sys"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result, counts


def test_reservation_script_splits_pages_over_numa_nodes(tmp_path: Path) -> None:
    result, counts = run_reservation(tmp_path, 64, 2)
    assert result.returncode == 0, result.stderr
    assert [count.read_text().strip() for count in counts] == ["32", "32"]


def test_reservation_script_refuses_an_uneven_split(tmp_path: Path) -> None:
    result, counts = run_reservation(tmp_path, 33, 2)
    assert result.returncode == 1
    assert "33 pages do not split evenly over 2 NUMA nodes" in result.stderr
    assert [count.read_text().strip() for count in counts] == ["0", "0"]


@pytest.mark.parametrize(
    ("user_data", "message"),
    [
        ("not base64!", "user data is not base64 text"),
        (base64.b64encode(b"#!/bin/bash\necho hi\n").decode(), "not a MIME multi-part document"),
        (
            base64.b64encode(
                mime_document([(CLOUD_CONFIG_CONTENT_TYPE, "#cloud-config\n")]).encode()
            ).decode(),
            "user data has no application/node.eks.aws part",
        ),
    ],
)
def test_malformed_user_data_is_reported(user_data: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_node_config(user_data)
