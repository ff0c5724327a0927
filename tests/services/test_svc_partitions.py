"""Risk partitions without processes: who is preferred, what a lease record must hold, and that the
exposure a new owner rebuilds from the log is the exposure the live checks built."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeplane_services.eventlog import PARTITIONS, partition_of
from tradeplane_services.partitions import Lease, LeaseTable, preferred_owner, replica_identity
from tradeplane_services.protocol import (
    Fill,
    OrderType,
    Reason,
    Release,
    RiskCheck,
    Side,
    price_units,
    symbol_bytes,
)
from tradeplane_services.risk import RiskEngine
from tradeplane_services.settings import RiskSettings

AAPL, MSFT = symbol_bytes("AAPL"), symbol_bytes("MSFT")
SECOND = 1_000_000_000


def test_partitions_spread_evenly_and_each_has_one_preferred_owner() -> None:
    members = ["risk-b", "risk-a", "risk-c"]
    owners = Counter(preferred_owner(partition, members) for partition in range(PARTITIONS))
    assert owners == {"risk-a": 6, "risk-b": 5, "risk-c": 5}
    assert all(preferred_owner(p, ["risk-a"]) == "risk-a" for p in range(PARTITIONS))


def test_a_replica_identity_is_a_valid_key() -> None:
    assert replica_identity("risk-0.risk.trading") == "risk-0-risk-trading"
    assert replica_identity(None)  # host name and process id


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (b"{}", "owner"),
        (b'{"owner": "r", "address": 7, "serving": true}', "address"),
        (b'{"owner": "r", "address": "h:1", "serving": "yes"}', "serving"),
        (b"[]", "JSON object"),
        (b"{", "not JSON"),
    ],
)
def test_a_malformed_lease_record_is_refused_naming_the_field(record: bytes, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Lease.decode(record, 1)


def test_a_lease_expires_when_its_revision_stands_still_for_a_lease_duration() -> None:
    table = LeaseTable()
    record = Lease("risk-a", "h:1", True, 0).encode()
    table.apply("partition.3", record, 5, deleted=False)
    seen = table.changed_at["partition.3"]
    assert not table.expired("partition.3", seen + 0.9, 1.0)
    assert table.expired("partition.3", seen + 1.0, 1.0)
    table.apply("partition.3", record, 5, deleted=False)  # the same revision again: no renewal
    assert table.changed_at["partition.3"] == seen
    table.apply("partition.3", None, 6, deleted=True)
    assert table.partition(3) is None


def engine() -> RiskEngine:
    settings = RiskSettings.model_validate(
        {"symbols": {"AAPL": 100.0}, "duplicateWindowMillis": 0, "maxPosition": 500, "creditLimit": 1e6}
    )
    risk = RiskEngine(settings)
    risk.set_reference(AAPL, price_units(100))
    return risk


# An order: (account, side, quantity, filled quantity, done)
orders = st.lists(
    st.tuples(
        st.sampled_from([1, 17, 33, 2]),  # 1, 17, 33 share partition 1
        st.sampled_from([int(Side.BUY), int(Side.SELL)]),
        st.integers(1, 200),
        st.integers(0, 200),
        st.booleans(),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(orders)
def test_a_partition_rebuilt_from_its_events_has_the_exposure_the_live_checks_built(
    flow: list[tuple[int, int, int, int, bool]],
) -> None:
    live, log = engine(), []
    for order_id, (account, side, quantity, filled, done) in enumerate(flow, 1):
        check = RiskCheck(order_id, account, AAPL, side, int(OrderType.LIMIT), quantity, price_units(100), 0)
        if live.check(*check[:7], 10 * SECOND):
            continue
        log.append(live.reservation(check))
        if filled:
            fill = Fill(
                1, order_id, account, AAPL, side, min(filled, quantity), price_units(101), order_id, 0
            )
            live.apply_fill(fill)
            log.append(fill)
        if done:
            live.on_done(order_id)
            log.append(Release(order_id, account))
    rebuilt = engine()
    rebuilt.check(10_000, 2, AAPL, int(Side.BUY), int(OrderType.LIMIT), 7, price_units(100), SECOND)  # other
    rebuilt.forget_partition(partition_of(1))
    for event in log:
        if partition_of(event.account) != partition_of(1):
            continue
        if isinstance(event, Fill):
            rebuilt.apply_fill(event)
        elif isinstance(event, Release):
            rebuilt.on_done(event.order_id)
        else:
            rebuilt.book_reservation(event)
    restored = engine()  # from a snapshot of the live state, through JSON as the KV store keeps it
    restored.restore_partition(partition_of(1), json.loads(json.dumps(live.partition_state(partition_of(1)))))
    for account in (1, 17, 33):
        assert rebuilt.exposure(account, AAPL) == live.exposure(account, AAPL)
        assert restored.exposure(account, AAPL) == live.exposure(account, AAPL)
    assert rebuilt.exposure(2, AAPL)[1] == 7, "another partition's exposure is left alone"
    in_partition = {o: b for o, b in live.open_orders() if partition_of(b[0]) == 1}
    assert dict(restored.open_orders()) == in_partition


def test_a_forgotten_partition_answers_as_if_new() -> None:
    risk = engine()
    assert risk.check(1, 1, AAPL, int(Side.BUY), int(OrderType.LIMIT), 500, price_units(100), SECOND) == 0
    assert risk.check(2, 1, AAPL, int(Side.BUY), int(OrderType.LIMIT), 1, price_units(100), SECOND) == int(
        Reason.POSITION_LIMIT
    )
    risk.forget_partition(partition_of(1))
    assert risk.exposure(1, AAPL) == (0, 0, 0, 0) and not risk.open_orders()


def firm_engine(limit: float, partitioned: bool) -> RiskEngine:
    settings = RiskSettings.model_validate(
        {"symbols": {"AAPL": 100.0}, "duplicateWindowMillis": 0, "firmCreditLimit": limit}
    )
    risk = RiskEngine(settings, partitioned=partitioned)
    risk.set_reference(AAPL, price_units(100))
    return risk


def buy(risk: RiskEngine, order_id: int, account: int, quantity: int) -> Reason:
    limit, price = int(OrderType.LIMIT), price_units(100)
    return Reason(risk.check(order_id, account, AAPL, int(Side.BUY), limit, quantity, price, SECOND))


def test_one_replica_seeing_every_account_holds_the_whole_firm_credit_limit() -> None:
    risk = firm_engine(10_000, partitioned=False)
    assert [buy(risk, 1, 1, 40), buy(risk, 2, 2, 40), buy(risk, 3, 3, 40)] == [
        Reason.OK,
        Reason.OK,
        Reason.FIRM_CREDIT_LIMIT,
    ]
    risk.on_done(1)
    assert buy(risk, 4, 3, 40) == Reason.OK, "a released order frees firm credit"


def test_partition_owners_hold_equal_shares_of_the_firm_credit_limit() -> None:
    risk = firm_engine(16_000, partitioned=True)  # 1,000 per partition
    assert buy(risk, 1, 1, 10) == Reason.OK
    assert buy(risk, 2, 17, 1) == Reason.FIRM_CREDIT_LIMIT, "account 17 shares partition 1's share"
    assert buy(risk, 3, 2, 10) == Reason.OK, "partition 2 has a share of its own"
    risk.forget_partition(1)
    assert buy(risk, 4, 17, 10) == Reason.OK, "a forgotten partition's share is whole again"


# partition_state(3) as the numpy engine (before the risk book was compiled) wrote it after the flow of
# the test below; snapshots like it are in event logs and must still restore.
NUMPY_ENGINE_SNAPSHOT = """
{"accounts": [[3, 70250000, {"AAPL": [25, 15, 0], "MSFT": [0, 0, 15]}], [19, 24120000, {"MSFT": [12, 0, 0]}]],
 "orders": [[1, 3, "AAPL", 1, 15, 1000000], [2, 3, "MSFT", 2, 15, 2000000]]}
"""


def test_a_snapshot_the_numpy_engine_wrote_restores_to_the_exposure_of_its_flow() -> None:
    settings = RiskSettings.model_validate(
        {
            "symbols": {"AAPL": 100.0, "MSFT": 200.0},
            "duplicateWindowMillis": 0,
            "creditLimit": 1e7,
            "firmCreditLimit": 1.6e5,
        }
    )
    live, restored = RiskEngine(settings, partitioned=True), RiskEngine(settings, partitioned=True)
    for risk in (live, restored):
        risk.set_reference(AAPL, price_units(100))
        risk.set_reference(MSFT, price_units(200))
    buy, sell, limit, market = int(Side.BUY), int(Side.SELL), int(OrderType.LIMIT), int(OrderType.MARKET)
    assert live.check(1, 3, AAPL, buy, limit, 40, price_units(100), SECOND) == Reason.OK
    assert live.check(2, 3, MSFT, sell, market, 15, 0, SECOND) == Reason.OK
    assert live.check(3, 19, AAPL, sell, limit, 7, price_units(99), SECOND) == Reason.OK
    assert live.check(4, 4, AAPL, buy, limit, 5, price_units(100), SECOND) == Reason.OK  # partition 4
    live.on_fill(1, 25, price_units(101))
    live.apply_fill(Fill(1, 9, 19, MSFT, buy, 12, price_units(201), 77, 0))
    live.on_done(3)

    document = json.loads(NUMPY_ENGINE_SNAPSHOT)
    assert live.partition_state(3) == document, "the compiled book writes the same document"
    restored.restore_partition(3, document)
    for account in (3, 19):
        for symbol in (AAPL, MSFT):
            assert restored.exposure(account, symbol) == live.exposure(account, symbol)
    assert restored.open_orders() == [o for o in live.open_orders() if partition_of(o[1][0]) == 3]
    assert restored.firm_credit()[3] == live.firm_credit()[3] == 70250000 + 24120000
    # 160,000 of firm credit in 16 shares: 9,437 of partition 3's 10,000 are used.
    for risk in (live, restored):
        assert risk.check(5, 35, AAPL, buy, limit, 6, price_units(100), SECOND) == Reason.FIRM_CREDIT_LIMIT
        assert risk.check(6, 35, AAPL, buy, limit, 5, price_units(100), SECOND) == Reason.OK
