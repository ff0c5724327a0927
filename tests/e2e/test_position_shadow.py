"""A state shadow of position end to end: the local control plane, the operator as a process, position pods
as real processes following a real nats-server event log, fills appended to the log as execution appends
them, and a client reading positions through the `position` Service all along.

A canary whose projection agrees with the stable (a snapshot setting changed) passes the state comparison
and holds at ShadowPassed until promoted; a canary that projects another state (pnlMethod fifo instead of
average-cost: the same quantities, other realized PnL and open cost once a close realizes) fails on
decisionMismatch and is rolled back. No client ever reads from either canary: the stable Service selects
the stable pods only, and the canary pods count no request.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.conftest import OperatorProcess
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from support import Kubectl, get_json, wait_for
from tradeplane.api import BUNDLED_PORTS, DEFAULT_METRICS_PORT
from tradeplane.cluster.podrunner import PodRunner
from tradeplane.labels import REVISION_LABEL
from tradeplane.sessions_cli import secret_credentials
from tradeplane_services.client import positions
from tradeplane_services.config import Address
from tradeplane_services.eventlog import Append, EventLog, partition_of
from tradeplane_services.natsserver import CLIENT_PORT, NatsServers
from tradeplane_services.protocol import Fill, Side, price_units, symbol_bytes
from tradeplane_services.sessions import Credentials

pytestmark = pytest.mark.cluster

NAME = "position"
MIN_COMPARED = 20
ROLLOUT = {
    "stateShadow": {},
    "steps": [{"weight": 50, "pause": "4s"}],
    "analysis": {"interval": "1s", "window": "5s", "minSamples": MIN_COMPARED, "inconclusiveLimit": 1000},
}
ACCOUNTS = range(1, 41)
SYMBOLS = tuple(symbol_bytes(symbol) for symbol in ("AAPL", "MSFT"))
SOURCE = 9  # the venue's id on the fills this test appends


def manifest(namespace: str, event_log: str, settings: dict[str, Any]) -> str:
    document = {
        "apiVersion": "tradeplane.io/v1alpha1",
        "kind": "TradingService",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "component": NAME,
            "image": "registry.example/tradeplane-services:0.1.0",
            "replicas": 2,
            "resources": {"cpus": 1, "memory": "256Mi"},
            "config": settings,
            "eventLog": {"servers": [event_log], "replicas": 1},
            "rollout": ROLLOUT,
        },
    }
    return yaml.safe_dump(document)


class Venue:
    """Fills appended to the log as execution appends them, one event per fill, ~50 a second, both sides at
    prices that move, so closes realize PnL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.appended = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Venue:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._append())
        except BaseException as error:  # reported by the test
            self.failure = error

    async def _append(self) -> None:
        draw = random.Random(13)
        log = EventLog([self.url], name="venue")
        await log.open()
        try:
            while not self._stop.is_set():
                self.appended += 1
                account = draw.choice(ACCOUNTS)
                fill = Fill(
                    SOURCE,
                    self.appended,
                    account,
                    draw.choice(SYMBOLS),
                    int(draw.choice((Side.BUY, Side.SELL))),
                    draw.randint(1, 50),
                    price_units(draw.randint(180, 200)),
                    self.appended,
                    0,
                )
                await log.append([Append("fill", partition_of(account), [fill], f"shadow-{self.appended}")])
                await asyncio.sleep(0.02)
        finally:
            await log.close()


class Reader:
    """A trading client reading every account's positions through the `position` Service, as clients do."""

    def __init__(self, address: Address, creds: Credentials) -> None:
        self.address = address
        self.creds = creds
        self.reads = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                positions(self.address, 0, timeout=5, creds=self.creds)
                self.reads += 1
            except (OSError, TimeoutError):
                self.failures += 1
            self._stop.wait(0.2)


@pytest.fixture
def event_log(tmp_path: Path) -> Iterator[NatsServers]:
    """One nats-server with JetStream on loopback, on a port of this test's own (moved with the offset)."""
    offset = int(os.environ.get("TRADEPLANE_PORT_OFFSET", "0"))
    servers = NatsServers("127.0.0.1", tmp_path / "eventlog", port=CLIENT_PORT + 10_200 + offset)
    servers.start()
    try:
        servers.wait_ready(timeout=60)
        yield servers
    finally:
        servers.stop()


class Position:
    """The TradingService under test: its status, its pods by revision, what its canary pods served."""

    def __init__(self, kubectl: Kubectl, namespace: str) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.canary_requests: dict[str, float] = {}
        """The most requests each canary revision's pods counted, read while the test waited."""

    def status(self) -> dict[str, Any]:
        found = get_json(self.kubectl, "tradingservice", NAME, "-n", self.namespace)
        status: dict[str, Any] = found.get("status") or {}  # type: ignore[assignment]
        canary = status.get("canaryRevision")
        if canary:
            served = sum(self.requests(ip, canary) for ip in self.ready_ips(canary))
            self.canary_requests[canary] = max(self.canary_requests.get(canary, 0.0), served)
        return status

    def wait(
        self, predicate: Callable[[dict[str, Any]], object], timeout: float, what: str
    ) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        def check() -> object:
            seen[:] = [self.status()]
            return predicate(seen[0])

        try:
            wait_for(check, timeout=timeout, interval=0.3, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; last status: {json.dumps(seen, indent=1)}") from None
        return seen[0]

    def ready_ips(self, revision: str) -> list[str]:
        selector = f"app.kubernetes.io/name={NAME},{REVISION_LABEL}={revision}"
        found = get_json(self.kubectl, "pods", "-n", self.namespace, "-l", selector)
        items: list[dict[str, Any]] = found["items"]  # type: ignore[assignment]
        return [
            pod["status"]["podIP"]
            for pod in items
            if pod["status"].get("podIP") and not pod["metadata"].get("deletionTimestamp")
        ]

    def requests(self, ip: str, revision: str) -> float:
        """Requests the pod answered over the wire (position queries), from its own /metrics."""
        text = http_text(f"{ip}:{DEFAULT_METRICS_PORT}", "/metrics")
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "tradeplane_requests_total" and sample.labels.get("revision") == revision
        )

    def selector(self, service: str) -> dict[str, str]:
        found = get_json(self.kubectl, "service", service, "-n", self.namespace)
        selected: dict[str, str] = found["spec"]["selector"]  # type: ignore[index]
        return selected

    def configure(self, settings: dict[str, Any]) -> None:
        patch = {"spec": {"config": settings}}
        self.kubectl(
            "patch", "tradingservice", NAME, "-n", self.namespace, "--type", "merge", "-p", json.dumps(patch)
        )


def http_text(endpoint: str, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=3) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def test_a_position_canary_is_judged_by_its_state_and_no_client_reads_from_it(
    kube_env: Path,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
    operator_process: OperatorProcess,
    pod_runner: Callable[..., PodRunner],
    event_log: NatsServers,
) -> None:
    kubectl("apply", "-f", "-", input=manifest(namespace, event_log.url, {"snapshotEveryEvents": 100}))
    runner = pod_runner(namespace)
    position = Position(kubectl, namespace)
    first = position.wait(lambda status: status.get("phase") == "Ready", 120, "position Ready")
    stable = first["stableRevision"]
    runner.wait_running(2, timeout=60)
    wait_for(lambda: all(pod.ready for pod in runner.running.values()), 60, what="position pods replayed")
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_env)))  # type: ignore[no-untyped-call]
    creds = secret_credentials(api, namespace, "client", tmp_path)
    # Where a client in the cluster reaches the `position` Service (the runner plays kube-proxy).
    host, port = runner.proxy.address(namespace, NAME, BUNDLED_PORTS[NAME]).rsplit(":", 1)
    service = Address(host, int(port))

    with Venue(event_log.url) as venue, Reader(service, creds) as reader:
        # An agreeing canary: snapshots more often change when replay starts, not what it projects.
        position.configure({"snapshotEveryEvents": 60})
        passed = position.wait(
            lambda status: (
                status.get("phase") == "Paused"
                and any(c["reason"] == "ShadowPassed" for c in status.get("conditions", []))
            ),
            180,
            "the agreeing canary passing its state shadow",
        )
        agreeing = passed["canaryRevision"]
        verdict = passed["lastAnalysis"]
        assert (verdict["verdict"], verdict["gate"]) == ("Pass", "decisionMismatch"), verdict
        assert verdict["samples"] >= MIN_COMPARED and [g["gate"] for g in verdict["gates"]] == [
            "decisionMismatch"
        ]
        assert passed["actualWeight"] == 0 and passed["shadow"] is True
        assert position.selector(NAME)[REVISION_LABEL] == stable, (
            "the clients' Service selects the stable only"
        )
        assert position.selector(f"{NAME}-canary")[REVISION_LABEL] == agreeing
        reads = reader.reads
        wait_for(lambda: reader.reads > reads + 5, 30, what="the client reading on through the Service")
        position.status()

        promote = [sys.executable, "-m", "tradeplane.cli", "promote", NAME, "-n", namespace]
        subprocess.run(promote, check=True, env={**os.environ, "KUBECONFIG": str(kube_env)}, timeout=60)
        position.wait(
            lambda status: status.get("stableRevision") == agreeing and status.get("phase") == "Ready",
            180,
            "the agreeing canary promoted on request",
        )

        # A canary that projects another state: FIFO realizes against the oldest lots, not the average.
        position.configure({"snapshotEveryEvents": 60, "pnlMethod": "fifo"})
        failed = position.wait(
            lambda status: status.get("failedRevision") and status.get("phase") == "RolledBack",
            240,
            "the FIFO canary failing the state comparison and rolled back",
        )
        verdict = failed["lastAnalysis"]
        differing = failed["failedRevision"]
        assert (failed["rollbackOutcome"], verdict["verdict"], verdict["gate"]) == (
            "Failed",
            "Fail",
            "decisionMismatch",
        ), verdict
        assert verdict["value"] > 0 and verdict["threshold"] == 0 and verdict["samples"] >= MIN_COMPARED
        assert "first at log sequence" in verdict["message"], verdict["message"]
        assert not position.ready_ips(differing), "the canary's pods are gone"
        reads = reader.reads
        wait_for(lambda: reader.reads > reads + 5, 30, what="the client reading on after the rollback")
        # The counter the canaries were held to counts the client's reads where they went: the stable.
        stable_now = failed["stableRevision"]
        assert sum(position.requests(ip, stable_now) for ip in position.ready_ips(stable_now)) > 0
    assert venue.failure is None and venue.appended > 100
    assert reader.failures == 0 and reader.reads > 0
    assert position.canary_requests.get(agreeing) == 0 and position.canary_requests.get(differing) == 0, (
        f"a client read from a canary: {position.canary_requests}"
    )
    print(
        f"{venue.appended} fills appended, {reader.reads} reads through the Service; "
        f"FIFO canary: {verdict['message']}"
    )
