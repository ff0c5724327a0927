"""A real Prometheus (Debian's `prometheus` binary) on loopback, with a generated configuration.

`run_prometheus` starts it with the given scrape configs and a 1 s scrape interval, waits until it is
ready, and stops it afterwards. `PodDiscovery` finds a namespace's pods through the API server for it.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tradeplane.cluster.podrunner import stop_process

SCRAPE_INTERVAL = "1s"


@dataclass(frozen=True)
class Prometheus:
    url: str
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of a query, as Prometheus' HTTP API answers it."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(address, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as response:
            return list(json.load(response)["data"]["activeTargets"])

    def scraped_since(self, moment: float) -> int:
        """How many targets are up and were scraped after `moment` (seconds since the epoch)."""
        return sum(
            1
            for target in self.targets()
            if target["health"] == "up"
            and datetime.fromisoformat(target["lastScrape"].replace("Z", "+00:00")).timestamp() > moment
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def static_scrape_config(job: str, endpoints: list[str]) -> dict[str, Any]:
    return {"job_name": job, "static_configs": [{"targets": endpoints}]}


class PodDiscovery:
    """Prometheus HTTP service discovery of a namespace's pods, read from the API server per request.

    Debian builds Prometheus without its Kubernetes discovery, so this answers what `kubernetes_sd_configs`
    (role pod, keeping the containers' `metrics` ports) would: one target per Running pod at its pod IP,
    labelled with namespace and pod.
    """

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.api = client.CoreV1Api(api_client)
        self.namespace = namespace
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(discovery.target_groups()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/targets"

    def target_groups(self) -> list[dict[str, Any]]:
        groups = []
        for pod in self.api.list_namespaced_pod(self.namespace).items:
            if pod.status.phase != "Running" or not pod.status.pod_ip:
                continue
            for container in pod.spec.containers:
                for port in container.ports or []:
                    if port.name == "metrics":
                        groups.append(
                            {
                                "targets": [f"{pod.status.pod_ip}:{port.container_port}"],
                                "labels": {"namespace": self.namespace, "pod": pod.metadata.name},
                            }
                        )
        return groups

    def __enter__(self) -> PodDiscovery:
        threading.Thread(target=self.server.serve_forever, name="pod-discovery", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def scrape_config(self) -> dict[str, Any]:
        return {
            "job_name": f"pods-{self.namespace}",
            "http_sd_configs": [{"url": self.url, "refresh_interval": SCRAPE_INTERVAL}],
        }


@contextmanager
def run_prometheus(workdir: Path, scrape_configs: list[dict[str, Any]]) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: scripts/bootstrap installs Debian's package")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
                "scrape_configs": scrape_configs,
            }
        )
    )
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(prometheus, process)
        yield prometheus
    finally:
        stop_process(process, signal.SIGTERM, timeout=10)


def _wait_ready(prometheus: Prometheus, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {process.returncode}:\n{prometheus.log.read_text()}"
            )
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"prometheus not ready after {timeout:.0f}s:\n{prometheus.log.read_text()}")
