"""The account buckets of order-flow canaries: exact shares, sticky accounts, and the routing document."""

from __future__ import annotations

import pytest

from tradeplane_services.orderflow import BUCKETS, RoutingError, RoutingTable, bucket

ORDERS = 100_000
ACCOUNTS = 40_000
SALTS = [f"trading/risk/{revision:06x}".encode() for revision in range(0x5D8C70, 0x5D8C84)]


def canary_accounts(weight: int, salt: bytes) -> set[int]:
    return {account for account in range(1, ACCOUNTS + 1) if bucket(account, salt) < weight}


@pytest.mark.parametrize("weight", [100, 1000])
def test_the_share_of_orders_is_the_weight_within_a_fifth_of_a_point(weight: int) -> None:
    """100k orders from 100k accounts: which accounts a hash draws is binomial, one standard deviation
    is sqrt(w(1-w)/100k) = 0.03 pp at 1% and 0.095 pp at 10%, so +-0.2 pp holds for about 19 rollouts
    in 20 at 10% and for every one at 1%; +-0.4 pp (4 standard deviations) for all."""
    errors = []
    for salt in SALTS:
        canary_orders = sum(bucket(account, salt) < weight for account in range(1, ORDERS + 1))
        errors.append(abs(100 * canary_orders / ORDERS - weight / 100))
    within = sum(error <= 0.2 for error in errors)
    assert within >= len(SALTS) - 2, f"{within}/{len(SALTS)} rollouts within 0.2 pp: {errors}"
    assert max(errors) <= 0.4, errors


def test_an_account_never_sees_both_revisions() -> None:
    salt, weight = SALTS[0], 1000
    revisions: dict[int, set[bool]] = {}
    for order in range(ORDERS):
        account = 1 + (order * 7919) % ACCOUNTS  # every account, in a scattered order, 2-3 orders each
        revisions.setdefault(account, set()).add(bucket(account, salt) < weight)
    assert len(revisions) == ACCOUNTS
    assert all(len(seen) == 1 for seen in revisions.values()), "an account saw both revisions"


def test_a_growing_weight_only_moves_accounts_from_stable_to_canary() -> None:
    salt = b"trading/risk/v2"
    at_1, at_10, at_50 = (canary_accounts(weight, salt) for weight in (100, 1000, 5000))
    assert at_1 < at_10 < at_50


def test_each_rollout_places_accounts_afresh() -> None:
    first, second = canary_accounts(1000, b"risk/v2"), canary_accounts(1000, b"risk/v3")
    overlap = len(first & second) / len(first)
    assert 0.05 < overlap < 0.15, "another salt draws another tenth of the accounts, independently"


def test_buckets_span_the_whole_range() -> None:
    seen = {bucket(account, b"s") for account in range(200_000)}
    assert min(seen) == 0 and max(seen) == BUCKETS - 1


GOOD = {
    "peer": "risk",
    "stableRevision": "5d8c7f",
    "canaryRevision": "a1b2c3",
    "canary": ["127.1.0.7:7002"],
    "weightBasisPoints": 10,
    "salt": "trading/risk/a1b2c3",
    "leaseSeconds": 3,
}


def test_a_routing_document_round_trips() -> None:
    table = RoutingTable.from_document(GOOD)
    assert table.weight_basis_points == 10 and table.canary == ("127.1.0.7:7002",)
    assert RoutingTable.from_document(table.document()) == table


def test_a_share_without_a_ready_canary_pod_is_a_valid_routing() -> None:
    """The canary's pods are all unready for a moment: callers holding the share keep its accounts."""
    table = RoutingTable.from_document({**GOOD, "canary": []})
    assert table.weight_basis_points == 10 and table.canary == ()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"weightBasisPoints": 10_001}, "weightBasisPoints"),
        ({"weightBasisPoints": 1.5}, "weightBasisPoints"),
        ({"leaseSeconds": 0}, "leaseSeconds"),
        ({"canary": "127.1.0.7:7002"}, "canary"),
        ({"canary": ["no-port"]}, "canary"),
        ({"salt": ""}, "salt"),
        ({"stableRevision": "a b"}, "stableRevision"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_a_bad_routing_document_is_refused_naming_the_field(change: dict[str, object], named: str) -> None:
    with pytest.raises(RoutingError, match=named):
        RoutingTable.from_document({**GOOD, **change})
