"""Helpers for tests that talk to the real API server: `from support import wait_for, get_json`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import yaml

from tradeplane.cluster import toolchain
from tradeplane_services.config import Environment
from tradeplane_services.natsserver import NatsServers
from tradeplane_services.risk import RiskService
from tradeplane_services.settings import RiskSettings

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


class Background:
    """A thread running `run` until the `with` block ends (`stopping` tells it when)."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._thread.join(10)


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> object:
    """Poll until predicate returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


async def until(condition: Callable[[], object], timeout: float) -> None:
    """Within an event loop: poll until condition() is truthy, letting the loop run between polls."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def risk_replica(servers: NatsServers, workdir: Path, replica: str, lease_millis: int) -> RiskService:
    """A risk replica in this process on the event log `servers`, as its pod runs it (not started); its
    session keys in `workdir`."""
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    environment = Environment(
        component="risk",
        revision="r1",
        config_path=None,
        bind="127.0.0.1",
        port=0,
        metrics_port=0,
        keys_dir=keys,
        event_log=servers.url.split(","),
        replica=replica,
    )
    return RiskService(environment, RiskSettings(partitionLeaseMillis=lease_millis))


def kubectl_runner(kubeconfig: Path) -> Kubectl:
    """kubectl of the pinned version against `kubeconfig`; a failure raises with kubectl's stderr."""
    binary = str(toolchain.require("kubectl"))

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [binary, f"--kubeconfig={kubeconfig}", *args], input=input, capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    return run


def get_json(kubectl: Kubectl, *args: str) -> dict[str, object]:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)  # type: ignore[no-any-return]


def token_kubeconfig(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    """A kubeconfig for the same cluster that authenticates with a bearer token only (no client cert)."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster_name = admin["clusters"][0]["name"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [{"name": "token", "context": {"cluster": cluster_name, "user": "token"}}],
        "current-context": "token",
    }
    path.write_text(yaml.safe_dump(config))
    return path
