"""The durability proof on the local control plane: the bundled stack with every service on a JetStream
event log of three clustered nats-server pods (a StatefulSet the pod runner runs; streams at R3), two
order replicas, two risk replicas owning the account partitions
(firm-wide limits), crossing orders over two sessions, one per order replica, and a fault mid-stream.

After each fault every fill a client was told of must be in positions exactly once, as in the venue's own
record (the fills execution appended to the log), and no account's net position may ever have exceeded
`maxPosition` (the log's fills folded in order, account by account). Used by tests/e2e/test_durability.py
and bench/durability_matrix.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from e2e.conftest import OperatorProcess
from kubernetes import client, config

from support import Kubectl, get_json, wait_for
from tradeplane.api import BUNDLED_PORTS, DEFAULT_METRICS_PORT
from tradeplane.cluster import local
from tradeplane.cluster.podrunner import PodRunner
from tradeplane.sessions_cli import ensure_secret, secret_credentials
from tradeplane_services.client import OrderSession, positions
from tradeplane_services.config import Address
from tradeplane_services.eventlog import EventLog
from tradeplane_services.natsserver import (
    CLIENT_PORT,
    MONITOR_PORT,
    STATEFULSET_NAME,
    statefulset_manifests,
)
from tradeplane_services.partitions import preferred_owner
from tradeplane_services.position import FILLS, PositionBook
from tradeplane_services.protocol import ExecType, ExecutionReport, Reason, Side, price_units
from tradeplane_services.sessions import Credentials

MAX_POSITION = 300
SYMBOL = "AAPL"
PRICE = price_units(190)
ACCOUNTS = tuple(range(501, 509))  # every account trades over both sessions
# Refusals a fault may cause: risk fails closed while a partition changes hands or the log is away.
FAIL_CLOSED = frozenset({Reason.RISK_UNAVAILABLE, Reason.PARTITION_TAKEOVER})
EXPECTED_REFUSALS = FAIL_CLOSED | {Reason.POSITION_LIMIT}
QUIET_SECONDS = 3.0
# Placement (one pod of a service per node): order, execution and market-data on the first two trading
# nodes, one risk pod on the third beside position or on the second, so deleting the third moves a risk
# pod (and perhaps position) and leaves the clients' sessions standing.
STATE_NODE = "trading-2"
PLACEMENT = ((False, ("trading-2",)), (True, ("trading-0",)))  # (state side, nodes cordoned meanwhile)
STACK = (  # (component, replicas, on the state node)
    ("market-data", 1, False),
    ("execution", 1, False),
    ("order", 2, False),
    ("risk", 2, True),
    ("position", 1, True),
)
RISK_CONFIG = {
    "maxPosition": MAX_POSITION,
    "duplicateWindowMillis": 0,
    "partitionLeaseMillis": 1000,
    "snapshotEveryEvents": 200,
    "maxOrderQuantity": 100_000,
}
# The faults, ProofStack's methods, in the order a run takes them: the node deletion first, while a risk pod
# still sits on the node the placement gave it.
CASES = (
    "delete_state_node",
    "kill_jetstream_node",
    "delete_position_pod",
    "delete_risk_pod",
    "abort_position_canary",
)
CANARY_ROLLOUT = {
    "steps": [{"weight": 50, "pause": "1h"}],
    "analysis": {"interval": "1s", "window": "5s", "minSamples": 1000000, "inconclusiveLimit": 100000},
}


def http_json(endpoint: str, path: str, timeout: float = 3.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=timeout) as response:
            document: dict[str, Any] = json.loads(response.read())
            return document
    except (OSError, ValueError):
        return None


@dataclass
class Flow:
    """One session sending crossing pairs at `pairs_per_second` until stopped; what it was told."""

    address: Address
    creds: Credentials
    pairs_per_second: float
    offset: int  # spreads the two sessions' pairs over different account pairs
    told: Counter[tuple[int, bytes]] = field(default_factory=Counter)
    fills: int = 0
    sent: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    failure: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guarded, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the session never finished its open orders"
        if self.failure is not None:
            raise self.failure

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as error:  # re-raised by stop(), not lost with the thread
            self.failure = error

    def _run(self) -> None:
        open_orders: dict[int, int] = {}  # client order id -> account
        with OrderSession(self.address, timeout=10, creds=self.creds) as session:
            interval = 1.0 / self.pairs_per_second
            next_pair = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                while next_pair <= now:
                    self._send_pair(session, open_orders)
                    next_pair += interval
                self._take(session.receive(max(0.0, min(0.05, next_pair - now))), open_orders, {})
            self._drain(session, open_orders)

    def _send_pair(self, session: OrderSession, open_orders: dict[int, int]) -> None:
        pair = self.sent // 2 + self.offset
        buyer = ACCOUNTS[pair % len(ACCOUNTS)]
        seller = ACCOUNTS[(pair + 1 + pair // len(ACCOUNTS)) % len(ACCOUNTS)]
        if seller == buyer:
            seller = ACCOUNTS[(ACCOUNTS.index(buyer) + 1) % len(ACCOUNTS)]
        quantity = 1 + pair % 40
        open_orders[session.new_order(Side.BUY, SYMBOL, quantity, PRICE, account=buyer)] = buyer
        open_orders[session.new_order(Side.SELL, SYMBOL, quantity, PRICE, account=seller)] = seller
        self.sent += 2

    def _drain(self, session: OrderSession, open_orders: dict[int, int]) -> None:
        """Until every order is done: traded in full, refused, or (once nothing moves) canceled."""
        deadline = time.monotonic() + 90
        moved = time.monotonic()
        canceling: dict[int, int] = {}
        while open_orders:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(open_orders)} orders never finished")
            if not canceling and time.monotonic() - moved > QUIET_SECONDS:
                canceling = {session.cancel(original): original for original in open_orders}
            if self._take(session.receive(0.5), open_orders, canceling):
                moved = time.monotonic()

    def _take(self, messages: list[Any], open_orders: dict[int, int], canceling: dict[int, int]) -> bool:
        moved = False
        for message in messages:
            if not isinstance(message, ExecutionReport):
                continue
            moved = True
            original = canceling.get(message.client_order_id, message.client_order_id)
            if original not in open_orders:
                continue  # a cancel's answer for an order that finished meanwhile
            if message.exec_type == ExecType.REJECTED:
                if canceling.get(message.client_order_id) is None:  # a refused order, not a late cancel
                    if message.reason not in EXPECTED_REFUSALS:
                        raise AssertionError(f"an order was refused for no fault of this proof: {message}")
                    self.refused[message.reason] += 1
                    del open_orders[original]
                continue
            if message.exec_type == ExecType.CANCELED:
                del open_orders[original]
                continue
            if message.exec_type == ExecType.TRADE:
                sign = 1 if message.side == Side.BUY else -1
                self.told[open_orders[original], message.symbol] += sign * message.last_quantity
                self.fills += 1
                if message.leaves_quantity == 0:
                    del open_orders[original]
        return moved


@dataclass
class CaseResult:
    case: str
    fills: int  # fills the clients were told of in this case
    orders_per_second: float  # sent over the case's stream, both sessions
    refused: dict[str, int]
    recovery_seconds: float  # the fault to the stack whole again (what it is depends on the case)
    takeover_seconds: float | None  # risk: claim to serving, the heir's own figure (max over partitions)
    replay_seconds: float | None = None  # position: the new pod's replay (snapshot + tail), its own figure
    replay_events: int | None = None  # ... and the events it replayed after the snapshot


@dataclass
class JetStreamPods:
    """The event log as the StatefulSet of natsserver.statefulset_manifests, its pods' processes run by a
    pod runner of their own (the stack's runner selects the operator's pods)."""

    kubectl: Kubectl
    kubeconfig: Path
    namespace: str
    replicas: int = 3
    runner: PodRunner | None = None

    @property
    def service_url(self) -> str:
        """The log's address as the services are given it: the headless Service, through cluster DNS."""
        return f"nats://{STATEFULSET_NAME}.{self.namespace}.svc:{CLIENT_PORT}"

    def pod_ips(self) -> list[str]:
        items: list[dict[str, Any]] = get_json(  # type: ignore[assignment]
            self.kubectl, "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/name={STATEFULSET_NAME}"
        )["items"]
        return sorted(pod["status"]["podIP"] for pod in items if pod["status"].get("podIP"))

    def client_urls(self) -> list[str]:
        """Every server's own URL, for this process (outside the cluster, as through a port-forward)."""
        return [f"nats://{ip}:{CLIENT_PORT}" for ip in self.pod_ips()]

    def start(self) -> None:
        manifests = {"apiVersion": "v1", "kind": "List", "items": statefulset_manifests(self.namespace)}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifests))
        selector = f"app.kubernetes.io/name={STATEFULSET_NAME}"
        self.runner = PodRunner(self.namespace, selector, kubeconfig=str(self.kubeconfig)).start()
        self.wait_healthy(timeout=120)

    def healthy(self) -> bool:
        """Every server up with JetStream current (a meta leader, its streams caught up)."""
        ips = self.pod_ips()
        return len(ips) == self.replicas and all(
            http_json(f"{ip}:{MONITOR_PORT}", "/healthz") == {"status": "ok"} for ip in ips
        )

    def wait_healthy(self, timeout: float) -> None:
        assert self.runner is not None
        runner = self.runner
        wait_for(
            self.healthy,
            timeout=timeout,
            interval=0.1,
            what=f"{self.replicas} JetStream pods healthy (exits: {runner.exits})",
        )

    def kill(self, index: int) -> int:
        """SIGKILL the process of pod nats-`index` (the crash `sync_interval: always` is for); the runner
        restarts it as a kubelet restarts a container. Returns the killed process's id."""
        assert self.runner is not None
        name = f"{STATEFULSET_NAME}-{index}"
        (running,) = [pod for pod in self.runner.running.values() if pod.name == name]
        running.process.send_signal(signal.SIGKILL)
        return running.process.pid

    def restarted(self, index: int, killed: int) -> bool:
        assert self.runner is not None
        name = f"{STATEFULSET_NAME}-{index}"
        return any(p.name == name and p.process.pid != killed for p in self.runner.running.values())

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()


@dataclass
class ProofStack:
    kubectl: Kubectl
    kubeconfig: Path
    namespace: str
    workdir: Path
    events: JetStreamPods
    creds: Credentials
    runner: PodRunner
    operator: OperatorProcess
    told: Counter[tuple[int, bytes]] = field(default_factory=Counter)
    fills: int = 0

    # --- the cluster's view -------------------------------------------------------------------------------

    def pods(self, component: str) -> list[dict[str, Any]]:
        found = get_json(
            self.kubectl, "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/name={component}"
        )
        items: list[dict[str, Any]] = found["items"]  # type: ignore[assignment]
        return [pod for pod in items if not pod["metadata"].get("deletionTimestamp")]

    def ready_ips(self, component: str) -> list[str]:
        """Pod IPs of the component whose process answers /readyz."""
        ips = [pod["status"].get("podIP") for pod in self.pods(component)]
        return [ip for ip in ips if ip and _ready(ip)]

    def address(self, component: str, index: int = 0) -> Address:
        ips = sorted(pod["status"]["podIP"] for pod in self.pods(component))
        return Address(ips[index], BUNDLED_PORTS[component])

    def status(self, ip: str) -> dict[str, Any] | None:
        return http_json(f"{ip}:{DEFAULT_METRICS_PORT}", "/status")

    def served_everywhere(self, avoiding: str | None = None, settled: bool = False) -> bool:
        """Every order replica sees every partition served, connected, by a live risk pod; `settled`: by
        the pod the partition's hand-over rule prefers, so no hand-over is still to come."""
        live = sorted({pod["metadata"]["name"] for pod in self.pods("risk")} - {avoiding})
        views = [self.status(ip) for ip in self.ready_ips("order")]
        if len(views) < 2 or any(view is None for view in views):
            return False
        for view in views:
            assert view is not None
            for partition, lease in view["riskPartitions"].items():
                if not (lease and lease["serving"] and lease.get("connected") and lease["owner"] in live):
                    return False
                if settled and lease["owner"] != preferred_owner(int(partition), live):
                    return False
        return True

    def wait_whole(self, timeout: float = 180.0) -> None:
        """Every pod Running with its process ready, every partition served by its preferred owner: a
        case starting before the risk replicas' hand-overs would see order unready mid-way for them."""
        wanted = {component: replicas for component, replicas, _ in STACK}
        self.wait(
            lambda: (
                all(len(self.ready_ips(c)) == n for c, n in wanted.items())
                and self.served_everywhere(settled=True)
            ),
            timeout,
            "every pod ready and every partition served by its preferred owner",
        )

    def describe(self) -> str:
        """Pods with node, IP and readiness, each order replica's view of the partitions (the ones it sees
        unserved in full), and the last log lines of the order and risk processes."""
        lines = []
        for component, _, _ in STACK:
            for pod in self.pods(component):
                ip = pod["status"].get("podIP")
                ready = bool(ip) and _ready(ip)
                lines.append(f"{pod['metadata']['name']} {pod['spec'].get('nodeName')} {ip} ready={ready}")
        for pod in self.pods("order"):
            ip = pod["status"].get("podIP")
            view = (self.status(ip) if ip else None) or {}
            leases = view.get("riskPartitions", {})
            owners = {p: (lease or {}).get("owner") for p, lease in leases.items()}
            lines.append(f"order {ip} sees owners {owners}")
            unserved = {
                p: lease
                for p, lease in leases.items()
                if not (lease and lease["serving"] and lease.get("connected"))
            }
            if unserved:
                lines.append(f"order {ip} partitions not served: {unserved}")
        for running in self.runner.running.values():  # the last words of the processes, before they go
            if running.name.startswith(("order-", "risk-")):
                log = (running.workdir / "output.log").read_text(errors="replace").splitlines()
                lines += [f"{running.name}: {line}" for line in log[-5:]]
        return "\n".join(lines)

    def wait(self, predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> None:
        try:
            wait_for(predicate, timeout=timeout, interval=interval, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; the stack:\n{self.describe()}") from None

    # --- the proof ----------------------------------------------------------------------------------------

    def stream(
        self, pairs_per_second: float, seconds: float, fault: Callable[[], None], fault_at: float
    ) -> tuple[int, float, Counter[int]]:
        """Both sessions send for `seconds`, `fault` runs `fault_at` seconds in; then both finish their
        orders. Adds what the clients were told to the stack's book; returns fills, orders/s, refusals."""
        flows = [
            Flow(self.address("order", index), self.creds, pairs_per_second / 2, offset=index * 3)
            for index in range(2)
        ]
        started = time.monotonic()
        for flow in flows:
            flow.start()
        time.sleep(fault_at)
        fault()
        remaining = seconds - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        elapsed = time.monotonic() - started
        refused: Counter[int] = Counter()
        fills = 0
        for flow in flows:
            flow.stop()
            self.told.update(flow.told)
            refused.update(flow.refused)
            fills += flow.fills
        self.fills += fills
        return fills, sum(flow.sent for flow in flows) / elapsed, refused

    def check(self) -> None:
        """Positions equal what the clients were told and the venue logged, each fill counted once; no
        account past maxPosition at any point of the log."""
        told = {key: quantity for key, quantity in self.told.items() if quantity}

        def booked() -> dict[tuple[int, bytes], int]:
            reports = positions(self.address("position"), 0, timeout=10, creds=self.creds)
            return {(r.account, r.symbol): r.quantity for r in reports if r.quantity}

        try:
            wait_for(lambda: booked() == told, timeout=60, what="positions to equal the clients' fills")
        except AssertionError as error:
            # Stalled (its sequence behind the log's) or short of fills the log has: say which.
            venue, _ = asyncio.run(self._venue())
            status = self.status(self.address("position").host)
            raise AssertionError(
                f"{error}: position {status}, the log {venue.fills} fills to sequence {venue.sequence}, "
                f"the clients {self.fills} fills"
            ) from None
        position = self.status(self.address("position").host)
        assert position is not None and position["fills"] == self.fills, (position, self.fills)
        venue, peak = asyncio.run(self._venue())
        assert venue.fills == self.fills, f"the venue logged {venue.fills} fills, clients got {self.fills}"
        logged = {key: position.quantity for key, position in venue.positions.items() if position.quantity}
        assert logged == told
        over = {account: quantity for account, quantity in peak.items() if quantity > MAX_POSITION}
        assert not over, f"accounts past maxPosition {MAX_POSITION} at some point: {over}"

    async def _venue(self) -> tuple[PositionBook, dict[int, int]]:
        """The log's fills folded in order (each fill once, as the venue numbered them) and the largest
        |net position| each account reached along the way."""
        log = EventLog(self.events.client_urls(), name="durability proof")
        await log.connect(attempts=3)
        book = PositionBook()
        peak: dict[int, int] = {}
        try:
            async for event in log.read(FILLS, 1):
                for fill in event.messages:
                    if book.apply(fill):
                        net = abs(book.positions[fill.account, fill.symbol].quantity)
                        peak[fill.account] = max(peak.get(fill.account, 0), net)
                book.sequence = event.sequence
        finally:
            await log.close()
        return book, peak

    # --- the faults ---------------------------------------------------------------------------------------

    def kill_jetstream_node(self, pairs_per_second: float, seconds: float) -> CaseResult:
        restarted: list[float] = []

        def fault() -> None:
            pid = self.events.kill(1)
            killed = time.monotonic()
            self.wait(lambda: self.events.restarted(1, pid), timeout=60, what="nats-1 restarted")
            self.events.wait_healthy(timeout=120)
            restarted.append(time.monotonic() - killed)

        return self._case("kill -9 a JetStream node", pairs_per_second, seconds, fault, lambda: restarted[0])

    def delete_position_pod(self, pairs_per_second: float, seconds: float) -> CaseResult:
        replay: list[float] = []
        replayed: list[dict[str, Any]] = []

        def fault() -> None:
            victim = self.pods("position")[0]["metadata"]["name"]
            deleted = time.monotonic()
            self.kubectl("delete", "pod", victim, "-n", self.namespace, "--wait=false")
            self.wait(
                lambda: (
                    [p for p in self.pods("position") if p["metadata"]["name"] != victim]
                    and self.ready_ips("position")
                ),
                timeout=120,
                interval=0.1,
                what="a new position pod ready (replayed)",
            )
            replay.append(time.monotonic() - deleted)
            status = self.status(self.ready_ips("position")[0])
            assert status is not None and status["replay"], status
            replayed.append(status["replay"])

        result = self._case("delete the position pod", pairs_per_second, seconds, fault, lambda: replay[0])
        result.replay_seconds = replayed[0]["seconds"]
        result.replay_events = replayed[0]["events"]
        return result

    def delete_risk_pod(self, pairs_per_second: float, seconds: float) -> CaseResult:
        taken: list[float] = []

        def fault() -> None:
            victim = self.pods("risk")[0]["metadata"]["name"]
            deleted = time.monotonic()
            self.kubectl("delete", "pod", victim, "-n", self.namespace, "--wait=false")
            self.wait(
                lambda: self.served_everywhere(avoiding=victim),
                timeout=120,
                interval=0.05,
                what="every partition served without the deleted risk pod",
            )
            taken.append(time.monotonic() - deleted)

        result = self._case("delete a risk pod", pairs_per_second, seconds, fault, lambda: taken[0])
        return result

    def abort_position_canary(self, pairs_per_second: float, seconds: float) -> CaseResult:
        lived: list[float] = []

        def fault() -> None:
            patch = {"spec": {"config": {"snapshotEveryEvents": 150 + len(self.told)}}}
            started = time.monotonic()
            self.kubectl(
                "patch", "tradingservice", "position", "-n", self.namespace, "--type", "merge",
                "-p", json.dumps(patch),
            )  # fmt: skip
            self.wait(
                lambda: len(self.ready_ips("position")) == 2,
                timeout=120,
                interval=0.1,
                what="the position canary ready beside the stable",
            )
            statuses = [self.status(ip) for ip in self.ready_ips("position")]
            canary_fills = [status["fills"] for status in statuses if status]
            assert len(canary_fills) == 2 and min(canary_fills) > 0, canary_fills
            abort = [sys.executable, "-m", "tradeplane.cli", "abort", "position", "-n", self.namespace]
            environment = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
            subprocess.run(abort, check=True, capture_output=True, env=environment, timeout=60)
            self.wait(
                lambda: len(self.pods("position")) == 1,
                timeout=120,
                interval=0.1,
                what="the canary's pod gone",
            )
            lived.append(time.monotonic() - started)

        return self._case("position canary aborted", pairs_per_second, seconds, fault, lambda: lived[0])

    def delete_state_node(self, pairs_per_second: float, seconds: float) -> CaseResult:
        moved: list[float] = []

        def fault() -> None:
            on_node = [
                pod["metadata"]["name"]
                for component in ("risk", "position")
                for pod in self.pods(component)
                if pod["spec"].get("nodeName") == STATE_NODE
            ]
            assert any(name.startswith("risk-") for name in on_node), f"no risk on {STATE_NODE}: {on_node}"
            deleted = time.monotonic()
            self.kubectl("delete", "node", STATE_NODE, "--wait=false")
            self.wait(
                lambda: (
                    all(
                        pod["spec"].get("nodeName") != STATE_NODE
                        for component in ("risk", "position")
                        for pod in self.pods(component)
                    )
                    and len(self.ready_ips("risk")) == 2
                    and len(self.ready_ips("position")) == 1
                    and self.served_everywhere()
                ),
                timeout=300,
                interval=0.2,
                what="risk and position moved off the deleted node and serving",
            )
            moved.append(time.monotonic() - deleted)

        try:
            return self._case("delete a trading node", pairs_per_second, seconds, fault, lambda: moved[0])
        finally:
            restore_node(self.kubectl, STATE_NODE)

    def _case(
        self,
        name: str,
        pairs_per_second: float,
        seconds: float,
        fault: Callable[[], None],
        recovery: Callable[[], float],
    ) -> CaseResult:
        self.wait_whole()
        before = self.owners()
        fills, rate, refused = self.stream(pairs_per_second, seconds, fault, fault_at=seconds / 4)
        self.wait_whole()
        self.check()
        return CaseResult(
            case=name,
            fills=fills,
            orders_per_second=rate,
            refused={Reason(reason).name: count for reason, count in refused.items()},
            recovery_seconds=recovery(),
            takeover_seconds=self.takeover_seconds(before),
        )

    def owners(self) -> dict[str, str | None]:
        """Partition -> its risk owner, as the first order replica that answers sees it (ready or not: a
        replica mid-takeover still knows the leases)."""
        views: list[dict[str, Any]] = []

        def answered() -> bool:
            ips = [pod["status"].get("podIP") for pod in self.pods("order")]
            views.extend(view for ip in ips if ip and (view := self.status(ip)))
            return bool(views)

        self.wait(answered, timeout=60, interval=0.2, what="an order replica's view of the partitions")
        return {
            partition: (lease or {}).get("owner") for partition, lease in views[0]["riskPartitions"].items()
        }

    def takeover_seconds(self, before: dict[str, str | None]) -> float | None:
        """The longest claim-to-serving (the heirs' own figures) of the partitions that changed owner
        since `before`; None when none did."""
        moved = {partition for partition, owner in self.owners().items() if before.get(partition) != owner}
        figures = [
            ledger["takeoverSeconds"]
            for ip in self.ready_ips("risk")
            if (status := self.status(ip))
            for partition, ledger in status.get("partitions", {}).items()
            if partition in moved and ledger.get("takeoverSeconds") is not None
        ]
        return max(figures) if figures else None


def _ready(ip: str) -> bool:
    try:
        url = f"http://{ip}:{DEFAULT_METRICS_PORT}/readyz"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def restore_node(kubectl: Kubectl, name: str) -> None:
    """Put a deleted trading node back as the cluster made it (later tests expect all three)."""
    for node in local.node_manifests(local.load_node_pools()):
        if node["metadata"]["name"] == name:
            kubectl("apply", "-f", "-", input=yaml.safe_dump(node))
    wait_for(
        lambda: (
            "True"
            in kubectl(
                "get",
                "node",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            ).stdout
        ),
        timeout=60,
        what=f"node {name} Ready again",
    )


def manifest(namespace: str, component: str, replicas: int, event_log: str) -> str:
    spec: dict[str, Any] = {
        "component": component,
        "image": "registry.example/tradeplane-services:0.1.0",
        "replicas": replicas,
        "resources": {"cpus": 1, "memory": "256Mi"},
        "slo": {"p99LatencyMicros": 500_000, "maxErrorRate": 0.5},
        "eventLog": {"servers": event_log.split(","), "replicas": 3},
    }
    if component == "risk":
        spec["config"] = RISK_CONFIG
    if component == "position":
        spec["config"] = {"snapshotEveryEvents": 100}
        spec["rollout"] = CANARY_ROLLOUT
    document = {
        "apiVersion": "tradeplane.io/v1alpha1",
        "kind": "TradingService",
        "metadata": {"name": component, "namespace": namespace},
        "spec": spec,
    }
    return yaml.safe_dump(document)


def _cordon(kubectl: Kubectl, nodes: tuple[str, ...], cordoned: bool) -> None:
    for node in nodes:
        kubectl("cordon" if cordoned else "uncordon", node)


@contextmanager
def proof_stack(kubectl: Kubectl, kubeconfig: Path, namespace: str, workdir: Path) -> Iterator[ProofStack]:
    """The stack Ready in `namespace`, its event log the JetStream StatefulSet there, the operator and the
    pod runners as processes; all stopped after."""
    events = JetStreamPods(kubectl, kubeconfig, namespace)
    operator = OperatorProcess(kubeconfig, namespace, workdir / "operator.log")
    runner: PodRunner | None = None
    try:
        events.start()
        api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))  # type: ignore[no-untyped-call]
        ensure_secret(api, namespace)
        operator.start()
        for placed, nodes in PLACEMENT:
            _cordon(kubectl, nodes, True)
            try:
                names = [(c, n) for c, n, on_state in STACK if on_state == placed]
                for component, replicas in names:
                    kubectl(
                        "apply", "-f", "-", input=manifest(namespace, component, replicas, events.service_url)
                    )
                wait_for(
                    lambda names=names: all(  # type: ignore[misc]
                        len([p for p in _pods(kubectl, namespace, c) if p["spec"].get("nodeName")]) == n
                        for c, n in names
                    ),
                    timeout=120,
                    what="the pods scheduled",
                )
            finally:
                _cordon(kubectl, nodes, False)
        runner = PodRunner(namespace, kubeconfig=str(kubeconfig)).start()
        (workdir / "keys").mkdir(exist_ok=True)
        creds = secret_credentials(api, namespace, "client", workdir / "keys")
        stack = ProofStack(kubectl, kubeconfig, namespace, workdir, events, creds, runner, operator)
        stack.wait_whole(timeout=240)
        yield stack
    finally:
        if runner is not None:
            runner.stop()
        if operator.process is not None:
            operator.stop()
        events.stop()


def _pods(kubectl: Kubectl, namespace: str, component: str) -> list[dict[str, Any]]:
    found = get_json(kubectl, "pods", "-n", namespace, "-l", f"app.kubernetes.io/name={component}")
    items: list[dict[str, Any]] = found["items"]  # type: ignore[assignment]
    return items
