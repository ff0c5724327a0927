"""Order flow end to end: the local control plane, the operator as a process, the order, risk, execution
and market-data services behind the kwok pods, and orders from many accounts.

The risk canary takes exactly the accounts whose bucket is below the step's weight, `status.actualWeight`
comes from order's counters, and with the operator SIGKILLed the canary's share falls to zero within the
lease by itself; restarted, the operator resumes the same step and the share comes back. A shadow risk
canary that wrongly refuses a symbol is failed by the decision-mismatch gate on order's comparisons and
rolled back, and no client ever saw one of its answers.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import OperatorProcess
from e2e.scenario import ORDER_FLOW_STACK, bundled_manifest
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from support import Background, Kubectl, get_json, wait_for
from tradeplane.cluster.podrunner import PodRunner
from tradeplane.sessions_cli import secret_credentials
from tradeplane_services.client import OrderSession
from tradeplane_services.config import Address
from tradeplane_services.orderflow import BUCKETS, bucket
from tradeplane_services.protocol import ExecType, ExecutionReport, Reason, Side, price_units
from tradeplane_services.sessions import Credentials

pytestmark = pytest.mark.cluster

WEIGHT = 1000  # basis points: 10% of the accounts
LEASE_SECONDS = 2
ACCOUNTS = range(1, 1001)
CANARY_QUANTITY_LIMIT = 60  # the canary refuses QUANTITY as MAX_QUANTITY; the stable never does
QUANTITY = 100
FAR_PRICE = price_units(1)  # outside any collar: nothing is booked, nothing trades


ROLLOUT = {
    "orderFlow": {"leaseSeconds": LEASE_SECONDS},
    # The first step holds for an hour: the test looks at it, never past it.
    "steps": [{"weightBasisPoints": WEIGHT, "pause": "1h"}, {"weight": 50, "pause": "1h"}],
    "analysis": {"interval": "1s", "window": "5s", "minSamples": 10, "inconclusiveLimit": 1000},
}


def by_canary(report: ExecutionReport) -> bool:
    return report.exec_type == ExecType.REJECTED and report.reason == Reason.MAX_QUANTITY


class Desk(Background):
    """Orders from every account in turn, in batches, answers read back; who answered, by account, and
    every reason a client was given."""

    def __init__(self, address: Address, creds: Credentials, symbols: tuple[str, ...] = ("AAPL",)) -> None:
        super().__init__()
        self.address = address
        self.creds = creds
        self.symbols = symbols
        self.answers: Counter[bool] = Counter()
        self.reasons: Counter[Reason] = Counter()
        self.unanswered = 0

    def orders(self, accounts: list[int]) -> dict[int, ExecutionReport]:
        with OrderSession(self.address, creds=self.creds) as session:
            sent = {
                session.new_order(
                    Side.BUY, self.symbols[account % len(self.symbols)], QUANTITY, FAR_PRICE, account
                ): account
                for account in accounts
            }
            return {account: session.report_for(order, timeout=10) for order, account in sent.items()}

    def run(self) -> None:
        batch = 25
        accounts = list(ACCOUNTS)
        position = 0
        while not self.stopping.is_set():
            chosen = accounts[position : position + batch]
            position = (position + batch) % len(accounts)
            try:
                reports = self.orders(chosen)
            except (OSError, TimeoutError):
                self.unanswered += len(chosen)
                self.stopping.wait(0.2)
                continue
            for report in reports.values():
                self.answers[by_canary(report)] += 1
                self.reasons[Reason(report.reason)] += 1
            self.stopping.wait(0.05)


@pytest.fixture
def stack(
    kube_env: Path,
    kubectl: Kubectl,
    namespace: str,
    operator_process: OperatorProcess,
    pod_runner: Callable[..., PodRunner],
) -> Iterator[tuple[Address, str]]:
    """market-data, execution, risk (two pods) and order, Ready; order's wire and HTTP addresses."""
    yield start_stack(kubectl, namespace, pod_runner, ROLLOUT)


def start_stack(
    kubectl: Kubectl,
    namespace: str,
    pod_runner: Callable[..., PodRunner],
    rollout: dict[str, Any],
    slo: dict[str, Any] | None = None,
) -> tuple[Address, str]:
    """The order-flow stack with risk rolled out as `rollout` says, Ready; order's wire and HTTP addresses."""
    for name, replicas in ORDER_FLOW_STACK:
        risk = name == "risk"
        manifest = bundled_manifest(
            namespace, name, replicas, 50_000, rollout if risk else None, slo if risk else None
        )
        kubectl("apply", "-f", "-", input=manifest)
    runner = pod_runner(namespace)

    def all_ready() -> bool:
        items = get_json(kubectl, "tradingservices", "-n", namespace)["items"]
        return len(items) == 4 and all((item.get("status") or {}).get("phase") == "Ready" for item in items)  # type: ignore[union-attr]

    wait_for(all_ready, 120, what="four TradingServices Ready")
    runner.wait_running(5, timeout=60)
    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app.kubernetes.io/name=order")["items"]
    ip = pods[0]["status"]["podIP"]  # type: ignore[index]
    wait_for(lambda: http(f"{ip}:9100", "/readyz") == "ready\n", 60, what="order ready")
    return Address(ip, 7001), f"{ip}:9100"


def http(endpoint: str, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{endpoint}{path}", timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def routing_of(endpoint: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(http(endpoint, "/routing") or "{}").get("risk", {})
    return document


def test_the_canary_takes_its_accounts_and_the_share_lapses_without_the_operator(
    kube_env: Path,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
    operator_process: OperatorProcess,
    stack: tuple[Address, str],
) -> None:
    order, order_http = stack
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_env)))  # type: ignore[no-untyped-call]
    creds = secret_credentials(api, namespace, "client", tmp_path)
    desk = Desk(order, creds)
    with desk:
        patch = {"spec": {"config": {"maxOrderQuantity": CANARY_QUANTITY_LIMIT}}}
        kubectl(
            "patch", "tradingservice", "risk", "-n", namespace, "--type", "merge", "-p", json.dumps(patch)
        )

        def risk() -> dict[str, Any]:
            status: dict[str, Any] = (
                get_json(kubectl, "tradingservice", "risk", "-n", namespace).get("status") or {}
            )  # type: ignore[assignment]
            return status

        held = wait_for(
            lambda: (status := risk()).get("stepStartedAt") and status,
            90,
            what="every caller holding the first step's weight",
        )
        assert isinstance(held, dict)
        canary = held["canaryRevision"]
        assert (held["phase"], held["step"], held["weight"]) == ("Progressing", 1, 10.0)
        salt = f"{namespace}/risk/{canary}".encode()
        expected = {account for account in ACCOUNTS if bucket(account, salt) < WEIGHT}
        share = 100 * len(expected) / len(ACCOUNTS)
        # The window (5 s) fills with orders routed under the weight: then the count says the share.
        counted = wait_for(
            lambda: (weight := risk().get("actualWeight", 0)) and abs(weight - share) < 2 and weight,
            30,
            what=f"an actual weight counted by order near {share}%",
        )
        # A whole percentage comes back from the API server as a JSON integer.
        assert isinstance(counted, int | float) and abs(counted - share) < 2

        reports = desk.orders(list(ACCOUNTS)[:300])
        answered_by_canary = {account for account, report in reports.items() if by_canary(report)}
        assert answered_by_canary == {account for account in expected if account <= 300}
        printed = kubectl("get", "ts", "risk", "-n", namespace).stdout
        assert "CANARY%" in printed and "ACTUAL%" in printed

        # The operator dies: nobody renews the lease, the canary share falls to zero by itself.
        killed = time.monotonic()
        operator_process.stop(kill=True)
        wait_for(lambda: routing_of(order_http).get("weightInForce") == 0, LEASE_SECONDS + 3, interval=0.05)
        lapsed = time.monotonic() - killed
        assert lapsed <= LEASE_SECONDS + 1.5, lapsed
        reports = desk.orders(sorted(expected)[:50])
        assert not any(by_canary(report) for report in reports.values()), "no canary answer without a lease"

        # Restarted, it resumes the same step, and the callers hold its weight again.
        operator_process.start()
        wait_for(lambda: routing_of(order_http).get("weightInForce") == WEIGHT, 60, what="the weight renewed")
        resumed = risk()
        assert (resumed["step"], resumed["canaryRevision"]) == (1, canary)
    assert desk.unanswered == 0 and desk.answers[True] > 0
    print(f"lease lapsed {lapsed:.2f}s after the operator's SIGKILL (lease {LEASE_SECONDS}s)")


SPLIT_ORDERS = 100_000
SPLIT_ACCOUNTS = range(1, 50_001)  # two orders each, far apart in the stream


def holding(kubectl: Kubectl, namespace: str, weight: int) -> str:
    """The canary revision, once every caller holds `weight` basis points for it."""

    def held() -> str | None:
        status = get_json(kubectl, "tradingservice", "risk", "-n", namespace).get("status") or {}
        assert isinstance(status, dict)
        started = status.get("stepStartedAt") and status.get("weight") == weight / 100
        return str(status["canaryRevision"]) if started else None

    revision: str = wait_for(held, 90, what=f"every caller holding {weight} bp")
    return revision


def split_rollout(weight: int) -> dict[str, Any]:
    """One step at `weight`, under a lease long enough that a loaded machine's late renewal does not
    send the canary's accounts back to the stable mid-count (the lease itself is tested above)."""
    return {
        **ROLLOUT,
        "orderFlow": {"leaseSeconds": 10},
        "steps": [{"weightBasisPoints": weight, "pause": "1h"}],
    }


def test_one_and_ten_percent_of_accounts_over_100k_orders_each(
    kube_env: Path,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
    operator_process: OperatorProcess,
    pod_runner: Callable[..., PodRunner],
) -> None:
    """At 1%, then (a new canary revision) at 10%: the accounts the canary answered are exactly those whose
    bucket is below the weight, none answered by both revisions, and the canary's share of 100k orders is
    the weight within the binomial spread of which accounts a hash draws (the printed figure)."""
    order, _ = start_stack(kubectl, namespace, pod_runner, split_rollout(100))
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_env)))  # type: ignore[no-untyped-call]
    creds = secret_credentials(api, namespace, "client", tmp_path)
    accounts = [SPLIT_ACCOUNTS[(index * 7919) % len(SPLIT_ACCOUNTS)] for index in range(SPLIT_ORDERS)]
    for limit, weight in ((CANARY_QUANTITY_LIMIT, 100), (CANARY_QUANTITY_LIMIT + 1, 1000)):
        patch = {"spec": {"config": {"maxOrderQuantity": limit}, "rollout": split_rollout(weight)}}
        kubectl(
            "patch", "tradingservice", "risk", "-n", namespace, "--type", "merge", "-p", json.dumps(patch)
        )
        salt = f"{namespace}/risk/{holding(kubectl, namespace, weight)}".encode()

        def risk_status() -> object:
            return get_json(kubectl, "tradingservice", "risk", "-n", namespace).get("status")

        answered: dict[int, set[bool]] = {}
        unattributed = 0  # refused for a risk timeout on a loaded machine: which revision had it is unknown
        canary_orders = 0
        with OrderSession(order, creds=creds) as session:
            for start in range(0, SPLIT_ORDERS, 200):  # small batches, answered inside order's risk timeout
                batch = accounts[start : start + 200]
                sent = [(session.new_order(Side.BUY, "AAPL", QUANTITY, FAR_PRICE, a), a) for a in batch]
                for client_order_id, account in sent:
                    report = session.report_for(client_order_id, timeout=10)
                    assert report.exec_type == ExecType.REJECTED, report
                    if report.reason == Reason.RISK_UNAVAILABLE:
                        unattributed += 1
                        continue
                    answered.setdefault(account, set()).add(by_canary(report))
                    canary_orders += by_canary(report)
        assert unattributed <= SPLIT_ORDERS // 200, f"{unattributed} orders refused as RISK_UNAVAILABLE"
        on_canary = {account for account, seen in answered.items() if True in seen}
        both = [account for account, seen in answered.items() if len(seen) > 1]
        assert not both, f"{len(both)} accounts answered by both revisions, as {both[:5]}: {risk_status()}"
        assert on_canary == {account for account in answered if bucket(account, salt) < weight}
        share = 100 * canary_orders / (SPLIT_ORDERS - unattributed)
        # Which accounts a hash draws is binomial: four standard deviations of the drawn share.
        spread = 100 * 4 * (weight / BUCKETS * (1 - weight / BUCKETS) / len(SPLIT_ACCOUNTS)) ** 0.5
        print(
            f"weight {weight / 100:g}%: canary answered {share:.3f}% of {SPLIT_ORDERS} orders "
            f"({unattributed} refused for a risk timeout)"
        )
        assert abs(share - weight / 100) <= spread, (share, spread)


SHADOW_ROLLOUT = {
    "orderFlow": {"leaseSeconds": LEASE_SECONDS, "mode": "shadow"},
    "steps": [{"weight": 50, "pause": "1h"}],
    "analysis": {"interval": "1s", "window": "5s", "minSamples": 20, "inconclusiveLimit": 1000},
}
MAX_DECISION_MISMATCH = 0.05


def restricted_mismatches(order_http: str, canary: str) -> float:
    """order's count of decisions where the canary said RESTRICTED_SYMBOL and the stable did not."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(http(order_http, "/metrics"))
        for sample in family.samples
        if sample.name == "tradeplane_shadow_mismatches_total"
        and sample.labels["peer_revision"] == canary
        and sample.labels["canary_reason"] == "RESTRICTED_SYMBOL"
    )


def test_a_shadow_canary_that_refuses_a_symbol_fails_the_mismatch_gate_unseen_by_any_client(
    kube_env: Path,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
    operator_process: OperatorProcess,
    pod_runner: Callable[..., PodRunner],
) -> None:
    slo = {"maxDecisionMismatch": MAX_DECISION_MISMATCH}
    order, order_http = start_stack(kubectl, namespace, pod_runner, SHADOW_ROLLOUT, slo)
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kube_env)))  # type: ignore[no-untyped-call]
    desk = Desk(order, secret_credentials(api, namespace, "client", tmp_path), symbols=("AAPL", "MSFT"))

    def risk() -> dict[str, Any]:
        status: dict[str, Any] = (
            get_json(kubectl, "tradingservice", "risk", "-n", namespace).get("status") or {}
        )  # type: ignore[assignment]
        return status

    with desk:
        # A legitimate setting, wrongly applied: the new revision refuses AAPL, which the desk trades.
        patch = {"spec": {"config": {"restrictedSymbols": ["AAPL"]}}}
        kubectl(
            "patch", "tradingservice", "risk", "-n", namespace, "--type", "merge", "-p", json.dumps(patch)
        )
        wait_for(
            lambda: (
                (routing := routing_of(order_http)).get("mode") == "shadow"
                and routing.get("weightInForce") == 5000
            ),
            90,
            what="order copying half of the accounts' checks to the canary",
        )
        canary = routing_of(order_http)["canaryRevision"]
        rolled_back = wait_for(
            lambda: (status := risk()).get("failedRevision") and status,
            120,
            what="the mismatch gate failing the shadow canary",
        )
        assert isinstance(rolled_back, dict)
        verdict = rolled_back["lastAnalysis"]
        assert (rolled_back["failedRevision"], rolled_back["rollbackOutcome"]) == (canary, "Failed")
        assert (verdict["verdict"], verdict["gate"]) == ("Fail", "decisionMismatch"), verdict
        assert verdict["value"] > MAX_DECISION_MISMATCH and verdict["threshold"] == MAX_DECISION_MISMATCH
        assert verdict["window"] == "5s" and verdict["samples"] >= 20, verdict
        wait_for(lambda: routing_of(order_http).get("weightInForce") == 0, 10, what="the copies stopped")
        # Orders keep flowing after the rollback, to the stable alone.
        answered = sum(desk.reasons.values())
        wait_for(lambda: sum(desk.reasons.values()) > answered + 100, 30, what="orders after the rollback")
    assert restricted_mismatches(order_http, canary) > 0, "order compared the canary's refusals"
    assert desk.unanswered == 0
    assert desk.reasons[Reason.RESTRICTED_SYMBOL] == 0, f"a client saw the canary's answer: {desk.reasons}"
    print(f"shadow canary failed: {verdict['message']}; the clients' reasons: {dict(desk.reasons)}")
