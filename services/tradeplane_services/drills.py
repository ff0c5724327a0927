"""Fault drills on a local stack with partitioned risk: used by the tests and the takeover benchmark.

`start_partitioned` runs the stack with a second order and a second risk replica and waits until the
partitions are spread over both risk replicas and every order replica has a session to each owner.
`time_takeover` kills (-9) the owner of an account's partition while a probe session keeps sending that
account's orders, and times until one is accepted again, counting the refusals seen meanwhile.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass

from tradeplane_services.client import OrderSession
from tradeplane_services.eventlog import PARTITIONS, partition_of
from tradeplane_services.partitions import preferred_owner
from tradeplane_services.protocol import ExecType, Side, price_units
from tradeplane_services.stack import START_ORDER, Stack

ORDERS = ("order", "order-1")
RISKS = ("risk", "risk-1")


def partition_owners(stack: Stack, order: str = "order") -> dict[int, str | None]:
    """Partition -> the risk replica order sees serving it with a session to it (None: in takeover)."""
    owners = stack.status(order)["riskPartitions"]
    return {
        int(partition): lease["owner"] if lease and lease["serving"] and lease.get("connected") else None
        for partition, lease in owners.items()
    }


def wait_served(stack: Stack, owners: tuple[str, ...], timeout: float = 60.0) -> dict[int, str | None]:
    """Until every order replica sees each partition served by its preferred owner among `owners`: the
    settled state, no handover pending."""
    settled: dict[int, str | None] = {p: preferred_owner(p, list(owners)) for p in range(PARTITIONS)}
    deadline = time.monotonic() + timeout
    while True:
        views = [partition_owners(stack, order) for order in ORDERS if order in stack.processes]
        if all(view == settled for view in views):
            return settled
        if time.monotonic() > deadline:
            raise TimeoutError(f"partitions not served by {owners} after {timeout}s: {views}")
        time.sleep(0.05)


def start_partitioned(stack: Stack) -> None:
    """The stack plus `order-1` and `risk-1`, partitions spread over both risk replicas."""
    stack.start()
    for name in ("risk-1", "order-1"):
        stack.start_one(name)
    stack.wait_ready(components=(*START_ORDER, "risk-1", "order-1"))
    wait_served(stack, RISKS)


@dataclass
class Takeover:
    victim: str
    partition: int
    seconds: float  # kill -9 to the first order of the partition accepted again
    refused: Counter[int]  # reasons of the orders refused meanwhile
    replay_seconds: float  # the heir's own time from taking the lease to serving (claim, replay)
    replayed_events: int


def time_takeover(
    stack: Stack, probe: OrderSession, account: int, symbol: str, price: float, interval: float = 0.005
) -> Takeover:
    """Kill -9 the owner of `account`'s partition; send 1-lot buys of the account until one is accepted."""
    partition = partition_of(account)
    victim = partition_owners(stack)[partition]
    assert victim is not None, f"partition {partition} has no owner to kill"
    stack.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    refused: Counter[int] = Counter()
    while True:
        client_order_id = probe.new_order(Side.BUY, symbol, 1, price_units(price), account=account)
        report = probe.report_for(client_order_id, timeout=10)
        if report.exec_type == ExecType.NEW:
            break
        refused[report.reason] += 1
        time.sleep(interval)
    seconds = time.monotonic() - killed
    heir = partition_owners(stack)[partition]
    assert heir is not None and heir != victim
    ledger = stack.status(heir)["partitions"][str(partition)]
    return Takeover(victim, partition, seconds, refused, ledger["takeoverSeconds"], ledger["replayedEvents"])
