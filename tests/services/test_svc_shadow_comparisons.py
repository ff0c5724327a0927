"""Shadow comparisons: a canary's decision on a copied request beside the stable's, with bounded memory."""

from __future__ import annotations

import pytest

from tradeplane_services.orderflow import LIVE, SHADOW, RoutingError, RoutingTable
from tradeplane_services.protocol import Reason
from tradeplane_services.shadow import (
    MATCH,
    MISMATCH,
    STABLE_UNANSWERED,
    UNANSWERED,
    ShadowComparisons,
)

SECOND = 1_000_000_000
OK, RESTRICTED, COLLAR = int(Reason.OK), int(Reason.RESTRICTED_SYMBOL), int(Reason.PRICE_COLLAR)


def test_equal_decisions_match_and_different_ones_mismatch_by_reason_pair() -> None:
    comparisons = ShadowComparisons(SECOND)
    for order_id in (1, 2, 3):
        comparisons.copied(order_id, "v2", 0)
    comparisons.stable_decided(1, OK)
    assert comparisons.canary_decided(1, OK)
    # Either answer may come first.
    assert comparisons.canary_decided(2, RESTRICTED)
    comparisons.stable_decided(2, OK)
    comparisons.stable_decided(3, COLLAR)
    assert comparisons.canary_decided(3, COLLAR)
    assert comparisons.outcomes == {("v2", MATCH): 2, ("v2", MISMATCH): 1}
    assert comparisons.mismatches == {("v2", OK, RESTRICTED): 1}
    assert len(comparisons) == 0


def test_an_answer_to_no_copy_is_not_taken() -> None:
    comparisons = ShadowComparisons(SECOND)
    assert not comparisons.canary_decided(7, OK)
    comparisons.stable_decided(7, OK)
    assert not comparisons.outcomes and len(comparisons) == 0


def test_a_canary_that_never_answers_is_counted_unanswered_once_the_answer_time_passes() -> None:
    comparisons = ShadowComparisons(SECOND)
    comparisons.copied(1, "v2", 0)
    comparisons.copied(2, "v2", SECOND // 2)
    comparisons.stable_decided(1, OK)
    comparisons.stable_decided(2, OK)
    comparisons.expire(SECOND - 1)
    assert len(comparisons) == 2 and not comparisons.outcomes
    comparisons.expire(SECOND)
    assert comparisons.outcomes == {("v2", UNANSWERED): 1} and len(comparisons) == 1
    # The late answer is not a shadow answer any more.
    assert not comparisons.canary_decided(1, OK)
    # A stable that did not answer says nothing of the canary.
    comparisons.copied(3, "v2", SECOND)
    assert comparisons.canary_decided(3, OK)
    comparisons.expire(3 * SECOND)
    assert comparisons.outcomes == {("v2", UNANSWERED): 2, ("v2", STABLE_UNANSWERED): 1}


def test_memory_is_bounded_whatever_the_canary_does() -> None:
    comparisons = ShadowComparisons(3600 * SECOND, capacity=100)
    for order_id in range(10_000):
        comparisons.copied(order_id, "v2", order_id)
        comparisons.stable_decided(order_id, OK)
    assert len(comparisons) == 100
    assert comparisons.outcomes == {("v2", UNANSWERED): 9_900}
    # The newest still compare.
    assert comparisons.canary_decided(9_999, OK)
    assert comparisons.outcomes[("v2", MATCH)] == 1


def test_counts_are_per_canary_revision() -> None:
    comparisons = ShadowComparisons(SECOND)
    comparisons.copied(1, "v2", 0)
    comparisons.copied(2, "v3", 0)
    for order_id in (1, 2):
        comparisons.stable_decided(order_id, OK)
        comparisons.canary_decided(order_id, OK)
    assert comparisons.outcomes == {("v2", MATCH): 1, ("v3", MATCH): 1}


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ShadowComparisons(SECOND, capacity=0)


def routing_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "peer": "risk",
        "stableRevision": "v1",
        "canaryRevision": "v2",
        "canary": ["10.0.0.1:7002"],
        "weightBasisPoints": 100,
        "salt": "trading/risk/v2",
        "leaseSeconds": 3,
    }
    return {**document, **changes}


def test_the_routing_carries_its_mode_live_by_default() -> None:
    assert RoutingTable.from_document(routing_document()).mode == LIVE
    table = RoutingTable.from_document(routing_document(mode=SHADOW))
    assert table.mode == SHADOW and RoutingTable.from_document(table.document()) == table
    with pytest.raises(RoutingError, match="mode"):
        RoutingTable.from_document(routing_document(mode="mirror"))
