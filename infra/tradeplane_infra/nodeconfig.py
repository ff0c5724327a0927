"""Node user data of EKS trading nodes on Amazon Linux 2023, as data: rendered here, parsed back by the
policy pack and the tests.

The MIME multi-part document carries two parts. EKS appends its own NodeConfig (cluster endpoint, CA)
to it, and nodeadm merges all NodeConfigs:

- `application/node.eks.aws`: a NodeConfig whose kubelet config pins CPUs (static CPU manager with
  full-pcpus-only), aligns CPUs, memory and huge pages on one NUMA node for the whole pod, and keeps the
  reservations consistent (the Static memory manager refuses to start otherwise).
- `text/cloud-config`: a systemd unit that reserves the 1Gi huge pages, evenly over the NUMA nodes, and
  that the kubelet requires. cloud-init runs before nodeadm starts the kubelet, and the unit repeats the
  reservation on every boot, so the kubelet always finds the pages it advertises.
"""

from __future__ import annotations

import base64
import email
import email.message
from collections.abc import Iterable
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from typing import Any

import yaml

from tradeplane.quantity import integer_quantity
from tradeplane_infra.instances import InstanceType

NODECONFIG_CONTENT_TYPE = "application/node.eks.aws"
CLOUD_CONFIG_CONTENT_TYPE = "text/cloud-config"
# A fixed boundary keeps the user data, and so the launch template, identical between runs.
MIME_BOUNDARY = "//tradeplane//"
MIB = 2**20

HUGEPAGES_SCRIPT_PATH = "/usr/local/sbin/tradeplane-hugepages"
HUGEPAGES_UNIT = "tradeplane-hugepages.service"
# Takes the page count as its argument. SYSFS lets the tests run it against a copy of the sysfs tree.
HUGEPAGES_SCRIPT = """\
#!/bin/sh
# Reserves $1 1Gi huge pages, split evenly over the NUMA nodes, and fails unless the kernel granted all:
# a single-numa-node pod draws its huge pages from the one NUMA node its CPUs are on.
set -eu
pages=$1
sysfs=${SYSFS:-/sys}
nodes=0
for node in "$sysfs"/devices/system/node/node[0-9]*; do
  nodes=$((nodes + 1))
done
if [ "$nodes" -eq 0 ] || [ $((pages % nodes)) -ne 0 ]; then
  echo "tradeplane-hugepages: $pages pages do not split evenly over $nodes NUMA nodes" >&2
  exit 1
fi
granted=0
for node in "$sysfs"/devices/system/node/node[0-9]*; do
  count=$node/hugepages/hugepages-1048576kB/nr_hugepages
  echo $((pages / nodes)) > "$count"
  granted=$((granted + $(cat "$count")))
done
if [ "$granted" -ne "$pages" ]; then
  echo "tradeplane-hugepages: the kernel granted $granted of $pages 1Gi huge pages" >&2
  exit 1
fi
"""


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the script, the unit) as literal blocks, readable on the node."""


_Dumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def _yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False)


def cpu_list(cpus: Iterable[int]) -> str:
    """The kernel's cpuset list format: `0-1,48-49`."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def reserved_system_cpus(instance: InstanceType, cores: int) -> str:
    """The first `cores` physical cores with all their hardware threads.

    EC2 numbers the first thread of every core before the siblings, so the sibling of CPU n is
    n + cores. Whole cores keep the reserved set aligned with full-pcpus-only.
    """
    return cpu_list(
        core + thread * instance.cores for core in range(cores) for thread in range(instance.threads_per_core)
    )


def quantity_text(count: int) -> str:
    """Bytes as a Kubernetes quantity, in Mi when exact."""
    return f"{count // MIB}Mi" if count % MIB == 0 else str(count)


def trading_kubelet_config(
    instance: InstanceType,
    reserved_cores: int,
    kube_reserved_memory: str,
    system_reserved_memory: str,
    eviction_hard_memory: str,
) -> dict[str, Any]:
    """KubeletConfiguration fields of a trading node.

    The reservations are set in full, overriding nodeadm's defaults: the Static memory manager requires
    the sum of reservedMemory to equal kubeReserved + systemReserved + the hard eviction threshold.
    """
    reserved_memory = sum(
        integer_quantity(text)
        for text in (kube_reserved_memory, system_reserved_memory, eviction_hard_memory)
    )
    return {
        "cpuManagerPolicy": "static",
        "cpuManagerPolicyOptions": {"full-pcpus-only": "true"},
        "reservedSystemCPUs": reserved_system_cpus(instance, reserved_cores),
        "topologyManagerPolicy": "single-numa-node",
        "topologyManagerScope": "pod",
        "memoryManagerPolicy": "Static",
        # The reserved cores are on NUMA node 0, and so is the memory the system uses.
        "reservedMemory": [{"numaNode": 0, "limits": {"memory": quantity_text(reserved_memory)}}],
        "kubeReserved": {"memory": kube_reserved_memory, "ephemeral-storage": "1Gi"},
        "systemReserved": {"memory": system_reserved_memory},
        "evictionHard": {
            "memory.available": eviction_hard_memory,
            "nodefs.available": "10%",
            "nodefs.inodesFree": "5%",
        },
    }


def hugepages_cloud_config(pages: int) -> dict[str, Any]:
    unit = "\n".join(
        [
            "[Unit]",
            "Description=Reserve 1Gi huge pages for trading pods before the kubelet starts",
            "Before=kubelet.service",
            "",
            "[Service]",
            "Type=oneshot",
            "RemainAfterExit=yes",
            f"ExecStart={HUGEPAGES_SCRIPT_PATH} {pages}",
            "",
            "[Install]",
            # The kubelet must not start, and advertise fewer huge pages, when the reservation failed.
            "RequiredBy=kubelet.service",
            "",
        ]
    )
    return {
        "write_files": [
            {"path": HUGEPAGES_SCRIPT_PATH, "permissions": "0755", "content": HUGEPAGES_SCRIPT},
            {"path": f"/etc/systemd/system/{HUGEPAGES_UNIT}", "permissions": "0644", "content": unit},
        ],
        "runcmd": [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", HUGEPAGES_UNIT]],
    }


def node_config(kubelet_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "node.eks.aws/v1alpha1",
        "kind": "NodeConfig",
        "spec": {"kubelet": {"config": kubelet_config}},
    }


def mime_document(parts: list[tuple[str, str]]) -> str:
    document = MIMEMultipart(boundary=MIME_BOUNDARY)
    for content_type, body in parts:
        main_type, sub_type = content_type.split("/")
        part = MIMEBase(main_type, sub_type)
        part.set_payload(body)
        document.attach(part)
    return document.as_string()


def trading_user_data(kubelet_config: dict[str, Any], hugepages_1gi: int) -> str:
    """Base64 of the MIME document, as a launch template takes it."""
    parts = [(NODECONFIG_CONTENT_TYPE, _yaml(node_config(kubelet_config)))]
    if hugepages_1gi:
        parts.append(
            (CLOUD_CONFIG_CONTENT_TYPE, "#cloud-config\n" + _yaml(hugepages_cloud_config(hugepages_1gi)))
        )
    return base64.b64encode(mime_document(parts).encode()).decode()


def user_data_parts(user_data_base64: str) -> dict[str, str]:
    """Content type to body of each part of launch template user data."""
    try:
        text = base64.b64decode(user_data_base64, validate=True).decode()
    except ValueError as error:
        raise ValueError(f"user data is not base64 text: {error}") from None
    document = email.message_from_string(text)
    if not document.is_multipart():
        raise ValueError("user data is not a MIME multi-part document")
    return {
        part.get_content_type(): str(part.get_payload())
        for part in document.get_payload()
        if isinstance(part, email.message.Message)
    }


def parse_node_config(user_data_base64: str) -> dict[str, Any]:
    parts = user_data_parts(user_data_base64)
    if NODECONFIG_CONTENT_TYPE not in parts:
        raise ValueError(f"user data has no {NODECONFIG_CONTENT_TYPE} part (an AL2023 NodeConfig)")
    config = yaml.safe_load(parts[NODECONFIG_CONTENT_TYPE])
    if not isinstance(config, dict) or config.get("kind") != "NodeConfig":
        raise ValueError(f"the {NODECONFIG_CONTENT_TYPE} part is not a NodeConfig")
    return config
