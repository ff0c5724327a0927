"""Pre-trade risk checks: one reason per rule, and the numpy batch path agreeing with the single path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeplane_services.protocol import KillSwitchState, OrderType, Reason, Side, price_units, symbol_bytes
from tradeplane_services.risk import CHECK_DTYPE, RiskEngine
from tradeplane_services.settings import RiskSettings

AAPL, MSFT, HALT = symbol_bytes("AAPL"), symbol_bytes("MSFT"), symbol_bytes("HALT")
BUY, SELL, LIMIT, MARKET = int(Side.BUY), int(Side.SELL), int(OrderType.LIMIT), int(OrderType.MARKET)
P100 = price_units(100)
SECOND = 1_000_000_000


def engine(**overrides: Any) -> RiskEngine:
    settings = RiskSettings.model_validate(
        {"symbols": {"AAPL": 100.0, "MSFT": 200.0, "HALT": 10.0}, "duplicateWindowMillis": 0, **overrides}
    )
    risk = RiskEngine(settings)
    risk.set_reference(AAPL, P100)
    risk.set_reference(MSFT, price_units(200))
    return risk


class Orders:
    """Sequential order ids and a clock, so each test reads as a list of orders."""

    def __init__(self, risk: RiskEngine) -> None:
        self.risk = risk
        self.next_id = 0
        self.now = 10 * SECOND

    def send(
        self,
        account: int = 1,
        symbol: bytes = AAPL,
        side: int = BUY,
        quantity: int = 10,
        price: int = P100,
        order_type: int = LIMIT,
    ) -> Reason:
        self.next_id += 1
        return Reason(
            self.risk.check(self.next_id, account, symbol, side, order_type, quantity, price, self.now)
        )


@pytest.mark.parametrize(
    ("overrides", "order", "reason"),
    [
        ({"killSwitch": "HALTED"}, {}, Reason.KILL_SWITCH_HALTED),
        ({}, {"symbol": symbol_bytes("IBM")}, Reason.UNKNOWN_SYMBOL),
        ({"restrictedSymbols": ["AAPL"]}, {}, Reason.RESTRICTED_SYMBOL),
        ({"maxOrderQuantity": 5}, {}, Reason.MAX_QUANTITY),
        ({}, {"symbol": HALT}, Reason.NO_REFERENCE_PRICE),
        ({"priceCollarPercent": 5}, {"price": price_units(105.01)}, Reason.PRICE_COLLAR),
        ({"priceCollarPercent": 5}, {"price": price_units(94.99)}, Reason.PRICE_COLLAR),
        ({"maxOrderNotional": 999}, {}, Reason.MAX_NOTIONAL),
        ({"maxOrderNotional": 999}, {"order_type": MARKET, "price": 0}, Reason.MAX_NOTIONAL),
        ({"maxPosition": 9}, {}, Reason.POSITION_LIMIT),
        ({"creditLimit": 999}, {}, Reason.CREDIT_LIMIT),
        ({"killSwitch": "REDUCING"}, {}, Reason.KILL_SWITCH_REDUCING),
        ({}, {}, Reason.OK),
        ({"priceCollarPercent": 5}, {"price": price_units(105)}, Reason.OK),
    ],
)
def test_each_rule_has_its_reason(overrides: dict[str, Any], order: dict[str, Any], reason: Reason) -> None:
    assert Orders(engine(**overrides)).send(**order) is reason


def test_throttle_refills_at_the_configured_rate() -> None:
    orders = Orders(engine(maxMessagesPerSecond=3))
    assert [orders.send(price=P100 + i) for i in range(4)] == [Reason.OK] * 3 + [Reason.THROTTLED]
    orders.now += SECOND // 3 + 1
    assert orders.send() is Reason.OK
    assert orders.send(account=2) is Reason.OK  # per account


def test_duplicates_are_refused_inside_the_window_only() -> None:
    orders = Orders(engine(duplicateWindowMillis=100))
    assert orders.send() is Reason.OK
    assert orders.send() is Reason.DUPLICATE_ORDER
    assert orders.send(quantity=11) is Reason.OK
    assert orders.send(account=2) is Reason.OK
    orders.now += 100_000_001
    assert orders.send() is Reason.OK


def test_open_orders_fills_and_completion_drive_position_and_credit() -> None:
    risk = engine(maxPosition=100, creditLimit=20_000)
    orders = Orders(risk)
    assert orders.send(quantity=60) is Reason.OK
    assert orders.send(quantity=50) is Reason.POSITION_LIMIT  # 60 open + 50 > 100
    assert orders.send(side=SELL, quantity=100) is Reason.OK  # sells count against the other side
    risk.on_fill(1, 60, P100)
    assert risk.exposure(1, AAPL)[:2] == (60, 0)
    assert orders.send(quantity=41) is Reason.POSITION_LIMIT  # 60 filled + 41 > 100
    risk.on_done(3)  # the sell (order 2 was refused)
    # Nothing open to sell any more; credit: 60 executed + nothing open = 6000 used of 20000.
    assert risk.exposure(1, AAPL) == (60, 0, 0, 60 * P100)
    assert orders.send(quantity=40, price=price_units(101)) is Reason.OK
    assert orders.send(side=SELL, quantity=100, price=price_units(101)) is Reason.CREDIT_LIMIT


def test_reducing_accepts_only_orders_that_shrink_the_position() -> None:
    risk = engine()
    orders = Orders(risk)
    assert orders.send(quantity=30) is Reason.OK
    risk.on_fill(1, 30, P100)
    risk.on_done(1)
    risk.kill_switch = KillSwitchState.REDUCING
    assert orders.send(side=BUY, quantity=1) is Reason.KILL_SWITCH_REDUCING
    assert orders.send(side=SELL, quantity=31) is Reason.KILL_SWITCH_REDUCING
    assert orders.send(side=SELL, quantity=20) is Reason.OK
    assert orders.send(side=SELL, quantity=11) is Reason.KILL_SWITCH_REDUCING  # 20 already open
    assert orders.send(side=SELL, quantity=10) is Reason.OK


def test_a_replace_is_checked_without_its_own_old_exposure() -> None:
    risk = engine(maxPosition=100)
    assert risk.check(1, 1, AAPL, BUY, LIMIT, 80, P100, SECOND) == Reason.OK
    assert risk.check(1, 1, AAPL, BUY, LIMIT, 100, P100, SECOND, is_replace=1) == Reason.OK
    assert risk.check(1, 1, AAPL, BUY, LIMIT, 101, P100, SECOND, is_replace=1) == Reason.POSITION_LIMIT
    assert risk.exposure(1, AAPL)[1] == 100  # the refused replace left the order as it was
    assert risk.check(9, 1, AAPL, BUY, LIMIT, 1, P100, SECOND, is_replace=1) == Reason.UNKNOWN_ORDER


def test_market_data_sets_reference_prices_last_tick_wins() -> None:
    risk = engine()
    symbols = np.array([AAPL, MSFT, AAPL, symbol_bytes("IBM")], dtype="S8")
    risk.update_prices(symbols, np.array([1, 2, 3, 4], dtype=np.int64))
    assert risk.reference == [3, 2, 0]


# --- batch == one by one ------------------------------------------------------------------------------

ORDER = st.tuples(
    st.integers(1, 3),  # account
    st.sampled_from([AAPL, AAPL, MSFT, HALT]),
    st.sampled_from([BUY, SELL]),
    st.sampled_from([LIMIT, LIMIT, MARKET]),
    st.integers(1, 30),  # quantity
    st.integers(-4, 4),  # price offset, percent of reference
    st.one_of(st.none(), st.none(), st.integers(1, 15), st.integers(1000, 1010)),  # the order it replaces
)
LIMITS = st.fixed_dictionaries(
    {
        "maxOrderQuantity": st.integers(20, 80),
        "maxOrderNotional": st.sampled_from([2_500.0, 10_000.0, 1e9]),
        "priceCollarPercent": st.sampled_from([3.0, 6.0]),
        "maxPosition": st.integers(20, 150),
        "creditLimit": st.sampled_from([3_000.0, 8_000.0, 1e9]),
        "maxMessagesPerSecond": st.sampled_from([5.0, 12.0, 1e6, 1e6]),
        "duplicateWindowMillis": st.sampled_from([0, 50]),
        "restrictedSymbols": st.sampled_from([[], ["MSFT"]]),
        "killSwitch": st.sampled_from(["ACTIVE", "ACTIVE", "REDUCING"]),
        "firmCreditLimit": st.sampled_from([None, 6_000.0]),
    }
)


def _records(orders: list[tuple[Any, ...]], first_id: int, risk: RiskEngine) -> np.ndarray[Any, Any]:
    records = np.zeros(len(orders), dtype=CHECK_DTYPE)
    for position, (account, symbol, side, kind, quantity, offset, replaced) in enumerate(orders):
        reference = risk.reference[risk.symbol_index[symbol]] or P100
        price = 0 if kind == MARKET else reference + reference * offset // 100
        order_id, is_replace = (first_id + position, 0) if replaced is None else (replaced, 1)
        records[position] = (0, 0, 0, 0, order_id, account, symbol, side, kind, quantity, price, is_replace)
    return records


def _arguments(record: Any, now: int) -> list[Any]:
    """check() arguments of a CHECK_DTYPE record (numpy strips the symbol's NUL padding)."""
    values = list(record.tolist()[4:12])
    values[2] = values[2].ljust(8, b"\0")
    return [*values[:7], now, values[7]]


def _state(risk: RiskEngine) -> Any:
    """Everything the engine knows, keyed by account and symbol."""
    accounts = {
        account: (tokens, credit, [risk.exposure(account, symbol)[:3] for symbol in risk.symbols])
        for account, tokens, credit in risk.accounts()
    }
    return accounts, risk.open_orders(), risk.recent(), risk.firm_credit()


@settings(max_examples=250, deadline=None)
@given(
    limits=LIMITS,
    history=st.lists(ORDER, max_size=15),
    fills=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 30), st.booleans()), max_size=6),
    batch=st.lists(ORDER, min_size=1, max_size=60),
    gap_ms=st.integers(0, 120),
)
def test_batch_checks_equal_one_by_one_checks(
    limits: dict[str, Any],
    history: list[tuple[Any, ...]],
    fills: list[tuple[int, int, bool]],
    batch: list[tuple[Any, ...]],
    gap_ms: int,
) -> None:
    kill_switch = KillSwitchState[limits.pop("killSwitch")]  # thrown after the history built positions
    engines = [engine(**limits), engine(**limits)]
    now = 5 * SECOND
    for risk in engines:
        records = _records(history, 1, risk)
        for record in records:
            risk.check(*_arguments(record, now))
        for order_id, quantity, done in fills:
            risk.on_fill(order_id, quantity, P100)
            if done:
                risk.on_done(order_id)
        risk.kill_switch = kill_switch
    later = now + gap_ms * 1_000_000
    one_by_one, batched = engines
    records = _records(batch, 1000, one_by_one)
    expected = [one_by_one.check(*_arguments(record, later)) for record in records]
    reasons = batched.check_batch(records, later)
    assert reasons is not None
    assert reasons.tolist() == expected
    assert _state(batched) == _state(one_by_one)


@pytest.mark.parametrize(
    ("field", "value"),
    [("symbol", b"IBM"), ("symbol", b"a?"), ("side", 3), ("order_type", 0), ("quantity", 0), ("price", -1)],
)
def test_batch_leaves_a_run_the_decoder_may_refuse_to_the_frame_by_frame_path(field: str, value: Any) -> None:
    risk = engine()
    records = _records([(1, AAPL, BUY, LIMIT, 1, 0, None)] * 3, 1, risk)
    records[field][2] = value
    assert risk.check_batch(records, SECOND) is None
    assert risk.open_orders() == [] and risk.accounts() == [], "nothing of the run is booked"


def test_batch_refuses_a_run_whose_length_is_not_whole_records() -> None:
    risk = engine()
    records = _records([(1, AAPL, BUY, LIMIT, 1, 0, None)] * 2, 1, risk).tobytes()
    with pytest.raises(ValueError, match="not a whole number of 47-byte RiskCheck records"):
        risk.check_batch(records[:-1], SECOND)


def test_halted_batch_is_refused_whole() -> None:
    risk = engine(killSwitch="HALTED")
    reasons = risk.check_batch(_records([(1, AAPL, BUY, LIMIT, 1, 0, None)] * 3, 1, risk), SECOND)
    assert reasons is not None and set(reasons.tolist()) == {Reason.KILL_SWITCH_HALTED}
