"""Steady pre-trade risk checks spread over every Running pod of a service, as a Service would spread them.

There is no kube-proxy on the local control plane, so the client does the spreading: it lists the
service's pods every half second and sends checks to each pod IP in turn, which is the replica-ratio split
a ClusterIP Service gives to many sessions. It notes when each revision first answered. The demo drives
its risk canaries with it, and so do the end-to-end tests and the rollback benchmark.
"""

from __future__ import annotations

import itertools
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tradeplane.demo.background import BackgroundLoop
from tradeplane.labels import NAME_LABEL, REVISION_LABEL
from tradeplane.sessions_cli import secret_credentials
from tradeplane_services.protocol import OrderType, RiskCheck, Side, encode, price_units, symbol_bytes
from tradeplane_services.sessions import logon

REFRESH_SECONDS = 0.5


@dataclass
class _Pod:
    revision: str
    socket: socket.socket


@dataclass
class RiskTraffic(BackgroundLoop):
    kubeconfig: Path
    namespace: str
    name: str
    port: int
    rate: float = 400.0
    first_answer: dict[str, float] = field(default_factory=dict)
    """Revision -> time.monotonic() of the first bytes one of its pods answered."""
    answered: dict[str, int] = field(default_factory=dict)
    """Revision -> bytes answered."""
    _pods: dict[str, _Pod] = field(default_factory=dict)
    thread_name = "risk-traffic"

    def __post_init__(self) -> None:
        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        self._api = client.CoreV1Api(api_client)
        # Checks come from the order identity, as order's own would: its key from the namespace's Secret.
        self._keys = tempfile.TemporaryDirectory(prefix="risk-traffic-keys-")
        self._credentials = secret_credentials(self._api, self.namespace, "order", Path(self._keys.name))

    def _closed(self) -> None:
        for pod in self._pods.values():
            pod.socket.close()
        self._keys.cleanup()

    def _run(self) -> None:
        order_ids = itertools.count(1)
        turns = itertools.count()
        refreshed = 0.0
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - refreshed > REFRESH_SECONDS:
                self._refresh()
                refreshed = now
            next_send = max(next_send, now - 1.0)  # no burst after a stall
            while self._pods and next_send <= now:
                ips = list(self._pods)
                ip = ips[next(turns) % len(ips)]
                self._send(ip, self._pods[ip], next(order_ids))
                next_send += 1 / self.rate
            for ip, pod in list(self._pods.items()):
                self._drain(ip, pod)
            time.sleep(0.002 if self._pods else 0.05)

    def _refresh(self) -> None:
        pods: list[Any] = self._api.list_namespaced_pod(
            self.namespace, label_selector=f"{NAME_LABEL}={self.name}"
        ).items
        live = {
            pod.status.pod_ip: pod.metadata.labels.get(REVISION_LABEL, "")
            for pod in pods
            if pod.status.phase == "Running" and pod.status.pod_ip and pod.metadata.deletion_timestamp is None
        }
        for ip in [ip for ip in self._pods if ip not in live]:
            self._pods.pop(ip).socket.close()
        for ip, revision in live.items():
            if ip not in self._pods:
                try:
                    connection = socket.create_connection((ip, self.port), timeout=0.5)
                except OSError:
                    continue  # its process is not listening yet
                try:
                    logon(connection, self._credentials, timeout=2)
                except OSError:  # AuthenticationError included: not answering the logon yet
                    connection.close()
                    continue
                connection.setblocking(False)
                self._pods[ip] = _Pod(revision, connection)

    def _send(self, ip: str, pod: _Pod, order_id: int) -> None:
        check = RiskCheck(
            order_id,
            order_id % 50 + 1,
            symbol_bytes("AAPL"),
            Side.BUY,
            OrderType.LIMIT,
            10,
            price_units(190.0),
            0,
        )
        try:
            pod.socket.send(encode(check, order_id))
        except OSError:
            self._pods.pop(ip).socket.close()

    def _drain(self, ip: str, pod: _Pod) -> None:
        try:
            data = pod.socket.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._pods.pop(ip, None)
            pod.socket.close()
            return
        self.first_answer.setdefault(pod.revision, time.monotonic())
        self.answered[pod.revision] = self.answered.get(pod.revision, 0) + len(data)
