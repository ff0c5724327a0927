"""Pre-trade risk in the spirit of SEC 15c3-5 and the FIA guidance, as a pure engine plus its service.

Checks, in the order that decides the reason code of an order failing several:

    kill switch HALTED, message-rate throttle (token bucket per account), unknown symbol, restricted
    symbol, max quantity, no reference price, price collar against the last trade, max notional,
    duplicate order, kill switch REDUCING (only position-reducing orders), position limit, credit limit,
    firm credit limit.

Position limit: per account and symbol, |filled position + open orders on the order's side + the order|.
Credit: per account, notional of open orders plus notional already executed (a daily credit line).
Firm credit: the same summed over every account, against `firmCreditLimit`. Partitioned, each partition
owner sees only its accounts, so the limit is split into equal shares, one per partition: the shares add
up to the limit whatever the replica count (what a skewed book loses is the price of no coordination on
the order path). Unpartitioned, one replica sees every account and checks the whole.
Duplicate: an accepted order with the same (account, symbol, side, quantity, price) inside the window,
recognised by a 64-bit fingerprint of those fields.

`check` evaluates one order in a few microseconds; `check_batch` evaluates a run of orders with numpy and
gives exactly the results `check` would give one by one (a property test holds it to that): it vectorises
everything up to the first order that breaks a stateful limit and finishes from there one by one.

With an event log, limits are firm-wide: each account partition is answered for by one risk replica at a
time (leases, partitions.py), which rebuilds the partition's exposure from the log before it answers and
logs every acceptance before it answers it (PartitionLedger). Without one, each replica keeps its own
exposure: run one.
"""

from __future__ import annotations

import asyncio
import time
from itertools import repeat
from typing import Any

import nats.errors
import numpy as np
from nats.js.kv import KeyValue

from tradeplane_services.config import Environment
from tradeplane_services.eventlog import (
    KILL_SWITCH_KIND,
    LEASE_BUCKET,
    PARTITIONS,
    REFUSAL_KIND,
    RELEASE_KIND,
    RISK_KIND,
    Append,
    Event,
    EventLog,
    Fenced,
    Snapshots,
    partition_of,
    subject_filter,
)
from tradeplane_services.marketdata import subscribe_if_published
from tradeplane_services.partitions import LeaseTable, PartitionOwner, replica_identity
from tradeplane_services.protocol import (
    I64,
    PRICE_SCALE,
    PROTOCOL_VERSION,
    Fill,
    FrameError,
    FrameRun,
    KillSwitchChange,
    KillSwitchState,
    KillSwitchStatus,
    OrderType,
    PartitionClaim,
    ProtocolError,
    Reason,
    Refusal,
    Release,
    Reservation,
    RiskCheck,
    RiskResult,
    RiskUpdate,
    SetKillSwitch,
    Side,
    decode_body,
    layout_of,
    saturate,
    symbol_bytes,
    symbol_text,
)
from tradeplane_services.runtime import (
    Connection,
    Service,
    cancel_and_wait,
    fields,
    log,
    run_for_life,
    spin_for,
    wait_until,
)
from tradeplane_services.settings import RiskSettings

MASK64 = (1 << 64) - 1
_MIX = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)
_FINAL = 0xC4CEB9FE1A85EC53
BUY, SELL = int(Side.BUY), int(Side.SELL)
OK, UNKNOWN_ORDER = int(Reason.OK), int(Reason.UNKNOWN_ORDER)
KILL_SWITCH_HALTED, KILL_SWITCH_REDUCING = int(Reason.KILL_SWITCH_HALTED), int(Reason.KILL_SWITCH_REDUCING)
THROTTLED, UNKNOWN_SYMBOL = int(Reason.THROTTLED), int(Reason.UNKNOWN_SYMBOL)
RESTRICTED_SYMBOL, MAX_QUANTITY = int(Reason.RESTRICTED_SYMBOL), int(Reason.MAX_QUANTITY)
NO_REFERENCE_PRICE, PRICE_COLLAR = int(Reason.NO_REFERENCE_PRICE), int(Reason.PRICE_COLLAR)
MAX_NOTIONAL, DUPLICATE_ORDER = int(Reason.MAX_NOTIONAL), int(Reason.DUPLICATE_ORDER)
POSITION_LIMIT, CREDIT_LIMIT = int(Reason.POSITION_LIMIT), int(Reason.CREDIT_LIMIT)
FIRM_CREDIT_LIMIT = int(Reason.FIRM_CREDIT_LIMIT)
PARTITION_TAKEOVER = int(Reason.PARTITION_TAKEOVER)
REASON_NAMES = {int(reason): reason.name for reason in Reason}
LIMIT = int(OrderType.LIMIT)
# Events replayed between turns of the event loop in a takeover: lease renewals run between slices.
REPLAY_SLICE_EVENTS = 64
HALTED, REDUCING = int(KillSwitchState.HALTED), int(KillSwitchState.REDUCING)
CHECK_DTYPE = layout_of(RiskCheck).dtype
RESULT_LAYOUT = layout_of(RiskResult)


def fingerprint(account: int, symbol: int, side: int, quantity: int, price: int) -> int:
    """64-bit fingerprint of an order's identity for duplicate detection (same math as the batch path)."""
    value = (
        (account * _MIX[0]) ^ (symbol * _MIX[1]) ^ (side * _MIX[2]) ^ (quantity * _MIX[3]) ^ (price * _MIX[4])
    ) & MASK64
    value ^= value >> 33
    value = (value * _FINAL) & MASK64
    return value ^ (value >> 29)


def fingerprints(account: Any, symbol: Any, side: Any, quantity: Any, price: Any) -> np.ndarray[Any, Any]:
    u64 = np.uint64
    value = (
        (account.astype(u64) * u64(_MIX[0]))
        ^ (symbol.astype(u64) * u64(_MIX[1]))
        ^ (side.astype(u64) * u64(_MIX[2]))
        ^ (quantity.astype(u64) * u64(_MIX[3]))
        ^ (price.astype(u64) * u64(_MIX[4]))
    )
    value ^= value >> u64(33)
    value *= u64(_FINAL)
    return value ^ (value >> u64(29))  # type: ignore[no-any-return]


class Limits:
    """RiskSettings in wire units (prices x PRICE_SCALE, nanoseconds); the firm credit limit as the share of
    one of `firm_shares` buckets."""

    def __init__(self, settings: RiskSettings, symbols: list[bytes], firm_shares: int = 1) -> None:
        firm = settings.firmCreditLimit
        self.firm_credit_share = None if firm is None else int(firm * PRICE_SCALE) // firm_shares
        self.max_quantity = settings.maxOrderQuantity
        self.max_notional = int(settings.maxOrderNotional * PRICE_SCALE)
        self.collar = settings.priceCollarPercent / 100
        self.max_position = settings.maxPosition
        self.credit_limit = int(settings.creditLimit * PRICE_SCALE)
        self.rate_per_ns = settings.maxMessagesPerSecond / 1e9
        self.burst = max(1.0, settings.maxMessagesPerSecond)
        self.duplicate_window_ns = settings.duplicateWindowMillis * 1_000_000
        restricted = {symbol_bytes(name) for name in settings.restrictedSymbols}
        self.restricted = [symbol in restricted for symbol in symbols]
        self.restricted_array = np.array(self.restricted, dtype=bool)
        self.kill_switch = int(settings.killSwitch)


class AccountTable:
    """Per-account risk state in flat numpy arrays, one row per account and one cell per (row, symbol).

    The batch path computes on the arrays directly; the single path reads and writes them through
    memoryviews, which hand out plain Python ints and floats in a few tens of nanoseconds.
    """

    def __init__(self, symbols: int, capacity: int = 64) -> None:
        self.symbols = symbols
        self.rows: dict[int, int] = {}  # account -> row
        self.accounts: list[int] = []  # row -> account
        self.capacity = 0
        empty = np.zeros(0, dtype=np.int64)
        self.position, self.open_buy, self.open_sell = empty, empty, empty
        self.credit_used, self.tokens_at, self.tokens = empty, empty, np.zeros(0)
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        cells = capacity * self.symbols
        self.capacity = capacity
        self.position = _grown(self.position, cells)
        self.open_buy = _grown(self.open_buy, cells)
        self.open_sell = _grown(self.open_sell, cells)
        self.credit_used = _grown(self.credit_used, capacity)
        self.tokens = _grown(self.tokens, capacity)
        self.tokens_at = _grown(self.tokens_at, capacity)
        self.position_view = self.position.data
        self.open_buy_view = self.open_buy.data
        self.open_sell_view = self.open_sell.data
        self.credit_used_view = self.credit_used.data
        self.tokens_view: Any = self.tokens.data  # float items; typeshed knows int items only
        self.tokens_at_view = self.tokens_at.data

    def row(self, account: int, burst: float) -> int:
        row = self.rows.get(account)
        if row is None:
            row = len(self.rows)
            if row == self.capacity:
                self._allocate(2 * self.capacity)
            self.rows[account] = row
            self.accounts.append(account)
            self.tokens_view[row] = burst
        return row

    def reset(self, rows: list[int], burst: float) -> None:
        """Forget the exposure of these rows (their accounts keep the rows)."""
        cells = (np.asarray(rows, dtype=np.int64)[:, None] * self.symbols + np.arange(self.symbols)).ravel()
        for cell_array in (self.position, self.open_buy, self.open_sell):
            cell_array[cells] = 0
        self.credit_used[rows] = 0
        self.tokens[rows] = burst
        self.tokens_at[rows] = 0


def _grown(array: np.ndarray[Any, Any], size: int) -> np.ndarray[Any, Any]:
    grown = np.zeros(size, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


# An accepted order's exposure: (row, symbol index, side, open quantity, price its credit was taken at).
Booking = tuple[int, int, int, int, int]


class RiskEngine:
    """Risk state of every account and the checks; no I/O, time is passed in."""

    def __init__(self, settings: RiskSettings, partitioned: bool = False) -> None:
        # Firm credit buckets: one per partition when partitions have owners of their own, else one.
        self.firm_shares = PARTITIONS if partitioned else 1
        self.symbols = [symbol_bytes(name) for name in settings.symbols]
        self.symbol_index = {symbol: index for index, symbol in enumerate(self.symbols)}
        order = np.argsort(np.array(self.symbols, dtype="S8"))
        self._sorted_symbols = np.array(self.symbols, dtype="S8")[order]
        self._sorted_index = order.astype(np.int64)
        self.limits = Limits(settings, self.symbols, self.firm_shares)
        self.firm_credit = [0] * self.firm_shares  # credit used by the accounts of each bucket
        self.reference = np.zeros(len(self.symbols), dtype=np.int64)  # last trade price, 0: none yet
        self._reference = self.reference.tolist()
        self.accounts = AccountTable(len(self.symbols))
        self.open_orders: dict[int, Booking] = {}
        self.recent: dict[int, int] = {}  # duplicate fingerprint -> expiry (ns)
        self._recent_pruned_size = 0

    # --- configuration and market data -------------------------------------------------------

    def reconfigure(self, settings: RiskSettings) -> None:
        if [symbol_bytes(name) for name in settings.symbols] != self.symbols:
            raise ValueError("symbols cannot change while the service runs; restart it")
        self.limits = Limits(settings, self.symbols, self.firm_shares)
        # The batch path books credit per account only: sum the buckets afresh.
        table = self.accounts
        buckets = np.array(table.accounts, dtype=np.int64) % self.firm_shares
        totals = np.bincount(buckets, weights=table.credit_used[: len(buckets)], minlength=self.firm_shares)
        self.firm_credit = [int(total) for total in totals]

    @property
    def kill_switch(self) -> int:
        return self.limits.kill_switch

    @kill_switch.setter
    def kill_switch(self, state: int) -> None:
        self.limits.kill_switch = int(KillSwitchState(state))

    def update_prices(self, symbols: np.ndarray[Any, Any], prices: np.ndarray[Any, Any]) -> None:
        """Last trade prices from a market-data batch (later ticks of a symbol win)."""
        position = np.searchsorted(self._sorted_symbols, symbols).clip(0, len(self.symbols) - 1)
        known = (self._sorted_symbols[position] == symbols) & (prices > 0)
        self.reference[self._sorted_index[position[known]]] = prices[known]
        self._reference = self.reference.tolist()

    def set_reference(self, symbol: bytes, price: int) -> None:
        self.reference[self.symbol_index[symbol]] = price
        self._reference = self.reference.tolist()

    def exposure(self, account: int, symbol: bytes) -> tuple[int, int, int, int]:
        """(position, open buy, open sell, credit used) of an account in a symbol."""
        table = self.accounts
        row = table.rows.get(account)
        if row is None:
            return 0, 0, 0, 0
        cell = row * table.symbols + self.symbol_index[symbol]
        return (
            int(table.position[cell]),
            int(table.open_buy[cell]),
            int(table.open_sell[cell]),
            int(table.credit_used[row]),
        )

    # --- rebuilding a partition from the event log ----------------------------------------------------

    def forget_partition(self, partition: int) -> None:
        """Drop every account's exposure in the partition: its next owner rebuilds it from the log."""
        table = self.accounts
        rows = [row for account, row in table.rows.items() if partition_of(account) == partition]
        if not rows:
            return
        self.firm_credit[partition % self.firm_shares] -= int(table.credit_used[rows].sum())
        table.reset(rows, self.limits.burst)
        forgotten = set(rows)
        self.open_orders = {o: b for o, b in self.open_orders.items() if b[0] not in forgotten}

    def partition_state(self, partition: int) -> dict[str, Any]:
        """The exposure of the partition's accounts as JSON: positions and open quantities by symbol,
        credit used, and open orders (their bookings). Throttle and duplicate state are not exposure."""
        table, names = self.accounts, [symbol_text(symbol) for symbol in self.symbols]
        rows = {row: account for account, row in table.rows.items() if partition_of(account) == partition}
        accounts = []
        for row, account in rows.items():
            cells = range(row * table.symbols, (row + 1) * table.symbols)
            held = {
                names[index]: [
                    int(table.position[cell]),
                    int(table.open_buy[cell]),
                    int(table.open_sell[cell]),
                ]
                for index, cell in enumerate(cells)
                if table.position[cell] or table.open_buy[cell] or table.open_sell[cell]
            }
            accounts.append([account, int(table.credit_used[row]), held])
        orders = [
            [order_id, rows[row], names[index], side, quantity, credit_price]
            for order_id, (row, index, side, quantity, credit_price) in self.open_orders.items()
            if row in rows
        ]
        return {"accounts": accounts, "orders": orders}

    def restore_partition(self, partition: int, state: dict[str, Any]) -> None:
        """Put back what `partition_state` gave, after forgetting the partition; symbols no longer
        configured are left out."""
        self.forget_partition(partition)
        table, burst = self.accounts, self.limits.burst
        for account, credit, held in state["accounts"]:
            row = table.row(account, burst)
            self._add_credit(row, credit)
            for name, (position, open_buy, open_sell) in held.items():
                index = self.symbol_index.get(symbol_bytes(name))
                if index is not None:
                    cell = row * table.symbols + index
                    table.position[cell], table.open_buy[cell], table.open_sell[cell] = (
                        position,
                        open_buy,
                        open_sell,
                    )
        for order_id, account, name, side, quantity, credit_price in state["orders"]:
            index = self.symbol_index.get(symbol_bytes(name))
            if index is not None:
                self.open_orders[order_id] = (table.row(account, burst), index, side, quantity, credit_price)

    def reservation(self, check: RiskCheck) -> Reservation:
        """The log record of an order `check` just accepted."""
        credit_price = self.open_orders[check.order_id][4]
        order_id, account, symbol, side, _, quantity, _, is_replace = check
        return Reservation(order_id, account, symbol, side, quantity, credit_price, is_replace)

    def book_reservation(self, reservation: Reservation) -> None:
        """Replay an accepted order: book its exposure as the check did (a replace: instead of the old)."""
        index = self.symbol_index.get(reservation.symbol)
        if index is None:
            return  # a symbol no longer configured: nothing to check it against
        if reservation.is_replace:
            self.on_done(reservation.order_id)
        row = self.accounts.row(reservation.account, self.limits.burst)
        booking = (row, index, reservation.side, reservation.quantity, reservation.price)
        self._book(booking, 1)
        self.open_orders[reservation.order_id] = booking

    def apply_fill(self, fill: Fill) -> None:
        """A fill from the log; one of an order booked elsewhere still moves the position and credit."""
        if fill.order_id in self.open_orders:
            self.on_fill(fill.order_id, fill.quantity, fill.price)
            return
        index = self.symbol_index.get(fill.symbol)
        if index is None:
            return
        table = self.accounts
        row = table.row(fill.account, self.limits.burst)
        signed = fill.quantity if fill.side == BUY else -fill.quantity
        cell = row * table.symbols + index
        table.position_view[cell] = saturate(table.position_view[cell] + signed, I64)
        self._add_credit(row, fill.quantity * fill.price)

    def account_of(self, order_id: int) -> int | None:
        booking = self.open_orders.get(order_id)
        return None if booking is None else self.accounts.accounts[booking[0]]

    # --- one order --------------------------------------------------------------------------------

    def check(
        self,
        order_id: int,
        account: int,
        symbol: bytes,
        side: int,
        order_type: int,
        quantity: int,
        price: int,
        now_ns: int,
        is_replace: int = 0,
    ) -> int:
        """OK (0) and the order's exposure booked, or the Reason it is refused."""
        limits = self.limits
        if limits.kill_switch == HALTED:
            return KILL_SWITCH_HALTED
        table = self.accounts
        row = table.rows.get(account)
        if row is None:
            row = table.row(account, limits.burst)
        tokens_view = table.tokens_view
        tokens = tokens_view[row] + (now_ns - table.tokens_at_view[row]) * limits.rate_per_ns
        if tokens > limits.burst:
            tokens = limits.burst
        table.tokens_at_view[row] = now_ns
        if tokens < 1.0:
            tokens_view[row] = tokens
            return THROTTLED
        tokens_view[row] = tokens - 1.0
        index = self.symbol_index.get(symbol)
        if index is None:
            return UNKNOWN_SYMBOL
        if limits.restricted[index]:
            return RESTRICTED_SYMBOL
        if quantity > limits.max_quantity:
            return MAX_QUANTITY
        reference = self._reference[index]
        if reference == 0:
            return NO_REFERENCE_PRICE
        if order_type == LIMIT:
            if abs(price - reference) > reference * limits.collar:
                return PRICE_COLLAR
            credit_price = price
        else:
            credit_price = reference
        notional = quantity * credit_price
        if notional > limits.max_notional:
            return MAX_NOTIONAL
        replaced = None
        if is_replace:
            replaced = self.open_orders.pop(order_id, None)
            if replaced is None:
                return UNKNOWN_ORDER
            self._book(replaced, -1)
        reason = self._check_exposure(
            account, row, index, side, quantity, price, notional, now_ns, is_replace
        )
        if reason:
            if replaced is not None:
                self._book(replaced, 1)
                self.open_orders[order_id] = replaced
            return reason
        booking = (row, index, side, quantity, credit_price)
        self._book(booking, 1)
        self.open_orders[order_id] = booking
        return OK

    def _check_exposure(
        self,
        account: int,
        row: int,
        index: int,
        side: int,
        quantity: int,
        price: int,
        notional: int,
        now_ns: int,
        is_replace: int,
    ) -> int:
        limits = self.limits
        key = 0
        if limits.duplicate_window_ns and not is_replace:
            key = fingerprint(account, index, side, quantity, price)
            if self.recent.get(key, 0) > now_ns:
                return DUPLICATE_ORDER
        table = self.accounts
        cell = row * table.symbols + index
        position = table.position_view[cell]
        if side == BUY:
            projected = position + table.open_buy_view[cell] + quantity
            reducing = position < 0 and projected <= 0
        else:
            projected = table.open_sell_view[cell] + quantity - position
            reducing = position > 0 and projected <= 0
        if limits.kill_switch == REDUCING and not reducing:
            return KILL_SWITCH_REDUCING
        if projected > limits.max_position:
            return POSITION_LIMIT
        if table.credit_used_view[row] + notional > limits.credit_limit:
            return CREDIT_LIMIT
        firm_share = limits.firm_credit_share
        if firm_share is not None and self.firm_credit[account % self.firm_shares] + notional > firm_share:
            return FIRM_CREDIT_LIMIT
        if key:
            self._remember({key: now_ns + limits.duplicate_window_ns}, now_ns)
        return OK

    def _remember(self, keys: dict[int, int], now_ns: int) -> None:
        self.recent.update(keys)
        if len(self.recent) > 2 * self._recent_pruned_size + 1024:
            self.recent = {k: t for k, t in self.recent.items() if t > now_ns}
            self._recent_pruned_size = len(self.recent)

    def _book(self, booking: Booking, sign: int) -> None:
        row, index, side, quantity, credit_price = booking
        table = self.accounts
        cell = row * table.symbols + index
        if side == BUY:
            table.open_buy_view[cell] += sign * quantity
        else:
            table.open_sell_view[cell] += sign * quantity
        self._add_credit(row, sign * quantity * credit_price)

    def _add_credit(self, row: int, amount: int) -> None:
        # A fill's notional can outgrow 64 bits (the venue trades what the wire allows): the credit used
        # then stays at the limit of the array, which refuses every order after it.
        view = self.accounts.credit_used_view
        view[row] = saturate(view[row] + amount, I64)
        self.firm_credit[self.accounts.accounts[row] % self.firm_shares] += amount

    def on_fill(self, order_id: int, quantity: int, price: int) -> None:
        booking = self.open_orders.get(order_id)
        if booking is None:
            return
        row, index, side, open_quantity, credit_price = booking
        released = min(quantity, open_quantity)
        self.open_orders[order_id] = (row, index, side, open_quantity - released, credit_price)
        table = self.accounts
        cell = row * table.symbols + index
        if side == BUY:
            table.open_buy_view[cell] -= released
            table.position_view[cell] += quantity
        else:
            table.open_sell_view[cell] -= released
            table.position_view[cell] -= quantity
        self._add_credit(row, quantity * price - released * credit_price)

    def on_done(self, order_id: int) -> None:
        booking = self.open_orders.pop(order_id, None)
        if booking is not None:
            self._book(booking, -1)

    def apply_update(self, update: RiskUpdate) -> None:
        if update.filled_quantity:
            self.on_fill(update.order_id, update.filled_quantity, update.fill_price)
        if update.done:
            self.on_done(update.order_id)

    # --- a batch of orders ------------------------------------------------------------------------

    def check_batch(self, checks: np.ndarray[Any, Any], now_ns: int) -> np.ndarray[Any, Any] | None:
        """Reasons for a run of new-order checks (CHECK_DTYPE records), booked as `check` would book them.

        None when the run holds anything the vectorised path does not cover (replaces, invalid fields,
        unknown symbols, the REDUCING kill switch): the caller then checks those orders one by one.
        Everything up to the first order that breaks a stateful limit is decided on arrays; from that
        order on, `check` goes one by one.
        """
        count = len(checks)
        limits = self.limits
        if limits.kill_switch == HALTED:
            return np.full(count, KILL_SWITCH_HALTED, dtype=np.uint16)
        if limits.firm_credit_share is not None:
            return None  # one firm-wide sum across the run's accounts: one by one
        side, order_type = checks["side"], checks["order_type"]
        quantity, price = checks["quantity"].astype(np.int64), checks["price"]
        position = np.searchsorted(self._sorted_symbols, checks["symbol"]).clip(0, len(self.symbols) - 1)
        if (
            not (self._sorted_symbols[position] == checks["symbol"]).all()
            or limits.kill_switch == REDUCING
            or checks["is_replace"].any()
            or not np.isin(side, (BUY, SELL)).all()
            or not np.isin(order_type, (1, 2)).all()
            or not (quantity > 0).all()
            or not (price >= 0).all()
        ):
            return None
        index = self._sorted_index[position]
        table = self.accounts
        account_ids, owner = np.unique(checks["account"], return_inverse=True)
        account_rows = np.array([table.row(a, limits.burst) for a in account_ids.tolist()], dtype=np.int64)
        rows = account_rows[owner]

        # Throttle: each account's k-th order passes while k < its whole tokens.
        tokens = np.minimum(
            table.tokens[account_rows] + (now_ns - table.tokens_at[account_rows]) * limits.rate_per_ns,
            limits.burst,
        )
        throttled = _rank_within_groups(owner) >= np.floor(tokens[owner])

        reference = self.reference[index]
        is_limit = order_type == LIMIT
        credit_price = np.where(is_limit, price, reference)
        notional = quantity * credit_price
        reasons = np.select(
            [
                throttled,
                limits.restricted_array[index],
                quantity > limits.max_quantity,
                reference == 0,
                is_limit & (np.abs(price - reference) > reference * limits.collar),
                notional > limits.max_notional,
            ],
            [THROTTLED, RESTRICTED_SYMBOL, MAX_QUANTITY, NO_REFERENCE_PRICE, PRICE_COLLAR, MAX_NOTIONAL],
            OK,
        ).astype(np.uint16)

        candidate = reasons == OK
        keys = None
        if limits.duplicate_window_ns:
            keys = fingerprints(checks["account"], index, side, quantity, price)
            expiries = np.fromiter(map(self.recent.get, keys.tolist(), repeat(0)), np.int64, count)
            duplicate = candidate & (expiries > now_ns)
            fresh = np.flatnonzero(candidate & ~duplicate)
            _, first = np.unique(keys[fresh], return_index=True)
            repeated = np.ones(len(fresh), dtype=bool)
            repeated[first] = False
            duplicate[fresh[repeated]] = True
            reasons[duplicate] = DUPLICATE_ORDER
            candidate &= ~duplicate

        # Stateful limits assuming every candidate is accepted: exact up to the first that breaks one.
        cells = rows * table.symbols + index
        buy, sell = candidate & (side == BUY), candidate & (side == SELL)
        bought = _cumsum_within_groups(cells, np.where(buy, quantity, 0))
        sold = _cumsum_within_groups(cells, np.where(sell, quantity, 0))
        filled = table.position[cells]
        projected = np.where(
            side == BUY, filled + table.open_buy[cells] + bought, table.open_sell[cells] + sold - filled
        )
        credit = table.credit_used[rows] + _cumsum_within_groups(rows, np.where(candidate, notional, 0))
        breaking = candidate & ((projected > limits.max_position) | (credit > limits.credit_limit))
        stop = int(np.argmax(breaking)) if breaking.any() else count

        table.tokens[account_rows] = tokens
        table.tokens_at[account_rows] = now_ns
        np.subtract.at(table.tokens, rows[:stop][~throttled[:stop]], 1.0)
        accepted = np.flatnonzero(candidate[:stop])
        np.add.at(table.open_buy, cells[accepted], np.where(buy, quantity, 0)[accepted])
        np.add.at(table.open_sell, cells[accepted], np.where(sell, quantity, 0)[accepted])
        np.add.at(table.credit_used, rows[accepted], notional[accepted])
        bookings = zip(
            rows[accepted].tolist(),
            index[accepted].tolist(),
            side[accepted].tolist(),
            quantity[accepted].tolist(),
            credit_price[accepted].tolist(),
            strict=True,
        )
        self.open_orders.update(zip(checks["order_id"][accepted].tolist(), bookings, strict=True))
        if keys is not None and len(accepted):
            expiry = now_ns + limits.duplicate_window_ns
            self._remember(dict.fromkeys(keys[accepted].tolist(), expiry), now_ns)

        for position_in_run in range(stop, count):
            record = checks[position_in_run]
            reasons[position_in_run] = self.check(
                int(record["order_id"]),
                int(record["account"]),
                bytes(record["symbol"]).ljust(8, b"\0"),
                int(record["side"]),
                int(record["order_type"]),
                int(record["quantity"]),
                int(record["price"]),
                now_ns,
            )
        return reasons


def _rank_within_groups(groups: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """For each element, how many earlier elements share its group."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    starts = np.r_[0, np.flatnonzero(ordered[1:] != ordered[:-1]) + 1]
    run_lengths = np.diff(np.r_[starts, len(groups)])
    ranks = np.arange(len(groups)) - np.repeat(starts, run_lengths)
    result = np.empty(len(groups), dtype=np.int64)
    result[order] = ranks
    return result


def _cumsum_within_groups(groups: np.ndarray[Any, Any], values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Running total of `values` over each element and the earlier elements of its group."""
    order = np.argsort(groups, kind="stable")
    ordered_groups, ordered_values = groups[order], values[order].astype(np.int64)
    running = np.cumsum(ordered_values)
    starts = np.r_[0, np.flatnonzero(ordered_groups[1:] != ordered_groups[:-1]) + 1]
    before_group = np.repeat(running[starts] - ordered_values[starts], np.diff(np.r_[starts, len(groups)]))
    result = np.empty(len(groups), dtype=np.int64)
    result[order] = running - before_group
    return result


class PartitionLedger:
    """One partition this replica holds the lease of: its takeover, its fenced commits, its follower.

    Takeover: append a PartitionClaim to the partition's risk subject expecting the last event seen there
    (so a previous owner's next append fails), load the partition's latest snapshot, replay its events
    after the snapshot up to the claim (reservations, fills, releases), then answer. Until then, and from
    the moment the lease is lost, checks of the partition are refused with PARTITION_TAKEOVER.

    An accepted order is answered only once its Reservation is in the log: the reservations of one turn of
    the loop go as one event (group commit), each expecting the previous one as the subject's last, so a
    replica that lost the partition cannot add exposure beside its new owner. Fills (appended by
    execution) and releases reach the exposure through the log, in log order: a fill never lands before the
    reservation it fills, a release never before a fill of its order.

    The owner's exposure is the fold of the partition's events up to the last one it read, plus its own
    reservations not yet read back. When none are in flight and it has read back its last append, the
    two are the same: only then, every `snapshotEveryEvents` events, it stores a snapshot (key
    `risk.<partition>` of the snapshot bucket, replaced only by a later one).
    """

    def __init__(self, service: RiskService, partition: int, lease_revision: int) -> None:
        assert service.event_log is not None
        self.service = service
        self.event_log = service.event_log
        self.engine = service.engine
        self.partition = partition
        self.lease_revision = lease_revision
        self.serving = False
        self.last_sequence = 0  # of the last event on the partition's risk subject, ours or the claim
        self.commits = 0
        self.pending: list[tuple[Reservation, Connection, int]] = []  # waiting for the log
        self.committing: asyncio.Task[None] | None = None
        self.facts: list[tuple[str, Release | Refusal]] = []  # (kind, fact) not yet logged
        self.logging_facts: asyncio.Task[None] | None = None
        self.applied_fills: dict[int, int] = {}  # execution source -> last fill sequence applied
        self.claimed_at = time.perf_counter()
        self.takeover_seconds: float | None = None
        self.replayed_events = 0
        self.snapshot_sequence = 0  # the snapshot loaded at takeover, or the last one tried
        self.damaged_events = 0
        self.task = asyncio.get_running_loop().create_task(self.run(), name=f"partition-{partition}")
        self.task.add_done_callback(self._ended)

    async def run(self) -> None:
        self.engine.forget_partition(self.partition)
        claim = Append(
            RISK_KIND,
            self.partition,
            [PartitionClaim(self.partition, self.lease_revision, self.service.owner_bytes)],
            f"claim-{self.partition}-{self.lease_revision}",
        )
        while True:
            last = await self.event_log.last_sequence_on(RISK_KIND, self.partition)
            try:
                self.last_sequence = await self.event_log.append_fenced(claim, last)
                break
            except Fenced:
                continue  # the previous owner appended after we looked: look again
        await self.load_snapshot()
        events = subject_filter("*", self.partition)
        replay = self.event_log.read(
            events, self.snapshot_sequence + 1, self.last_sequence, damaged=self.damaged
        )
        async for event in replay:
            self.apply(event, replaying=True)
            self.replayed_events += 1
            if self.replayed_events % REPLAY_SLICE_EVENTS == 0:
                await asyncio.sleep(0)  # a fetched batch is replayed without a pause: let the leases renew
        every = self.service.settings.snapshotEveryEvents
        # Nothing of ours in flight yet: the state is the fold up to the claim, worth keeping if long.
        replayed_far = self.last_sequence - self.snapshot_sequence >= every
        document = self.snapshot_document(self.last_sequence) if replayed_far else None
        self.serving = True
        self.service.owner.wake.set()
        self.takeover_seconds = time.perf_counter() - self.claimed_at
        log.info(
            "partition taken over",
            extra=fields(
                partition=self.partition,
                replayedEvents=self.replayed_events,
                claimSequence=self.last_sequence,
                snapshotSequence=self.snapshot_sequence,
                seconds=round(self.takeover_seconds, 4),
            ),
        )
        if document is not None:
            await self.save_snapshot(document)
        tail = self.event_log.read(events, self.last_sequence + 1, follow=True, damaged=self.damaged)
        async for event in tail:
            self.apply(event, replaying=False)
            quiet = self.committing is None and event.sequence >= self.last_sequence
            if quiet and self.serving and event.sequence - self.snapshot_sequence >= every:
                await self.save_snapshot(self.snapshot_document(event.sequence))

    def damaged(self, error: ProtocolError) -> None:
        """A frame no risk replica wrote (each writes what its own protocol version decodes): foreign input
        on the partition's subjects, passed over loudly rather than stopping the partition for good."""
        self.damaged_events += 1
        log.error("undecodable event on a risk partition passed over", extra=fields(error=str(error)))

    @property
    def snapshot_key(self) -> str:
        return f"risk.{self.partition}"

    async def load_snapshot(self) -> None:
        """The partition's exposure as of the latest snapshot before the claim; none: replay from 1."""
        try:
            document = await self.service.snapshots.load(self.snapshot_key)
        except (TimeoutError, nats.errors.Error) as error:
            log.warning("risk snapshot unavailable; replaying all", extra=fields(error=repr(error)))
            return
        if document is None or document["sequence"] >= self.last_sequence:
            return
        self.engine.restore_partition(self.partition, document["state"])
        self.applied_fills = {int(source): last for source, last in document["fills"].items()}
        self.snapshot_sequence = document["sequence"]

    def snapshot_document(self, sequence: int) -> dict[str, Any]:
        self.snapshot_sequence = sequence  # a failed try is tried again snapshotEveryEvents later
        return {
            "sequence": sequence,
            "fills": {str(source): last for source, last in self.applied_fills.items()},
            "state": self.engine.partition_state(self.partition),
        }

    async def save_snapshot(self, document: dict[str, Any]) -> None:
        sequence = document["sequence"]
        try:
            await self.service.snapshots.save(self.snapshot_key, document)
        except (TimeoutError, nats.errors.Error) as error:  # only takeover time depends on it
            log.warning("risk snapshot not stored", extra=fields(error=repr(error), sequence=sequence))

    def apply(self, event: Event, replaying: bool) -> None:
        engine = self.engine
        for message in event.messages:
            kind = type(message)
            if kind is Fill:
                if message.fill_sequence > self.applied_fills.get(message.source, 0):
                    self.applied_fills[message.source] = message.fill_sequence
                    engine.apply_fill(message)
            elif kind is Release:
                engine.on_done(message.order_id)
            elif kind is Reservation:
                if replaying:  # ours are booked when accepted
                    engine.book_reservation(message)
            elif kind is PartitionClaim and not replaying and message.lease_revision != self.lease_revision:
                log.warning("partition claimed by another replica", extra=fields(partition=self.partition))
                self.service.lose(self.partition)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        # Following the log ends only with the partition; anything else leaves it to another replica.
        error = task.exception()
        log.error("partition follower stopped", extra=fields(partition=self.partition), exc_info=error)
        self.service.lose(self.partition)

    def reserve(self, reservation: Reservation, connection: Connection, received_ns: int) -> None:
        self.pending.append((reservation, connection, received_ns))
        if self.committing is None:
            self.committing = asyncio.get_running_loop().create_task(self._commit())

    async def _commit(self) -> None:
        while self.pending and self.serving:
            batch, self.pending = self.pending, []
            self.commits += 1
            event = Append(
                RISK_KIND,
                self.partition,
                [reservation for reservation, _, _ in batch],
                f"risk-{self.partition}-{self.lease_revision}-{self.commits}",
            )
            try:
                self.last_sequence = await self.event_log.append_fenced(event, self.last_sequence)
            except Fenced:
                log.warning("partition fenced by a newer owner", extra=fields(partition=self.partition))
                self.pending = batch + self.pending
                self.service.lose(self.partition)
                break
            for reservation, connection, received_ns in batch:
                if connection.connected:
                    connection.send(RiskResult(reservation.order_id, OK))
                self.service.metrics.record(received_ns)
        batch, self.pending = self.pending, []
        for reservation, connection, received_ns in batch:  # never logged: the order must not trade
            if connection.connected:
                connection.send(RiskResult(reservation.order_id, PARTITION_TAKEOVER))
            self.service.metrics.record(received_ns)
        self.committing = None

    def release(self, release: Release) -> None:
        self._log_fact(RELEASE_KIND, release)

    def refuse(self, refusal: Refusal) -> None:
        self._log_fact(REFUSAL_KIND, refusal)

    def _log_fact(self, kind: str, fact: Release | Refusal) -> None:
        self.facts.append((kind, fact))
        if self.logging_facts is None:
            self.logging_facts = asyncio.get_running_loop().create_task(self._append_facts())

    async def _append_facts(self) -> None:
        """Releases and refusals are facts, not decisions an answer waits for: any replica may log them,
        unfenced, one event per kind per batch (its id unique under this lease: a retry is stored once)."""
        while self.facts:
            facts, self.facts = self.facts, []
            self.commits += 1
            by_kind: dict[str, list[Release | Refusal]] = {}
            for kind, fact in facts:
                by_kind.setdefault(kind, []).append(fact)
            batch = f"{self.partition}-{self.lease_revision}-{self.commits}"
            appends = [
                Append(kind, self.partition, list(of_kind), f"{kind}-{batch}")
                for kind, of_kind in by_kind.items()
            ]
            await self.event_log.append(appends)
        self.logging_facts = None

    def stop(self) -> None:
        """Lost: refuse from now on; commits in flight finish (logged, they are the next owner's too)."""
        self.serving = False
        self.task.cancel()

    @property
    def busy(self) -> bool:
        return self.committing is not None or self.logging_facts is not None

    def status(self) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "leaseRevision": self.lease_revision,
            "takeoverSeconds": self.takeover_seconds,
            "replayedEvents": self.replayed_events,
            "snapshotSequence": self.snapshot_sequence,
            "damagedEvents": self.damaged_events,
        }


class RiskService(Service[RiskSettings]):
    """Answers RiskCheck with RiskResult, books fills and completions, owns the kill switch."""

    name = "risk"

    def __init__(self, environment: Environment, settings: RiskSettings) -> None:
        super().__init__(environment, settings)
        self.engine = RiskEngine(settings, partitioned=bool(environment.event_log))
        self.handlers = {
            RiskCheck: self.on_check,
            RiskUpdate: self.on_update,
            SetKillSwitch: self.on_kill_switch,
        }
        self.batch_types = {layout_of(RiskCheck).type_id: settings.batchThreshold}
        self.market_data = subscribe_if_published(environment, self.on_ticks, self.metrics)
        self.event_log: EventLog | None = None
        self.ledgers: dict[int, PartitionLedger] = {}
        self.replica = replica_identity(environment.replica)
        self.owner_bytes = self.replica.encode()[:32]
        # Kill-switch events are named by replica, process start and move: unique, so only a retry of
        # the same append is dropped as a duplicate.
        self.incarnation = time.time_ns()
        self.kill_switch_moves = 0
        self.kill_switch_appends: set[asyncio.Task[list[int]]] = set()
        self.leases = LeaseTable()
        self.owner = PartitionOwner(
            self.replica,
            str(environment.advertised_address()),
            self.leases,
            self.take_over,
            self.give_up,
            self.serving,
            lambda: self.settings.partitionLeaseMillis / 1000,
        )
        self.lease_bucket: KeyValue | None = None
        self.snapshots: Snapshots
        self.tasks: list[asyncio.Task[None]] = []
        if environment.event_log:
            self.event_log = EventLog(environment.event_log, environment.event_log_replicas, "risk")
        else:
            log.warning("TRADEPLANE_EVENT_LOG is not set: limits hold per replica; run one risk replica")

    async def start(self) -> None:
        if self.market_data is not None:
            await self.market_data.start()
        if self.event_log is None:
            return
        await self.event_log.open()
        self.snapshots = await self.event_log.snapshots()
        self.lease_bucket = await self.event_log.bucket(LEASE_BUCKET)
        self.tasks = [
            run_for_life(self.leases.follow(self.event_log), "watching the partition leases"),
            run_for_life(self.owner.run(self.lease_bucket), "holding partition leases"),
        ]

    async def drain(self) -> None:
        if self.event_log is None or self.lease_bucket is None:
            return
        for task in self.tasks:
            task.cancel()
        for partition in list(self.ledgers):
            self.ledgers[partition].serving = False
        await wait_until(lambda: not any(ledger.busy for ledger in self.ledgers.values()), 5.0)
        await self.owner.release_all(self.lease_bucket)

    async def stop(self) -> None:
        await cancel_and_wait(*self.tasks)
        if self.market_data is not None:
            await self.market_data.stop()
        if self.event_log is not None:
            await self.event_log.close()

    def ready(self) -> bool:
        log_ready = self.event_log is None or self.event_log.connected
        return log_ready and (self.market_data is None or self.market_data.expected is not None)

    # --- partitions (with an event log) ---------------------------------------------------------------

    def take_over(self, partition: int, lease_revision: int) -> None:
        self.give_up(partition)
        self.ledgers[partition] = PartitionLedger(self, partition, lease_revision)

    def give_up(self, partition: int) -> None:
        ledger = self.ledgers.pop(partition, None)
        if ledger is not None:
            ledger.stop()
            self.engine.forget_partition(partition)

    def lose(self, partition: int) -> None:
        """The log says another replica owns the partition: stop answering and let the lease go."""
        if partition in self.owner.owned:
            self.owner.drop(partition)
        else:
            self.give_up(partition)

    def serving(self, partition: int) -> bool:
        ledger = self.ledgers.get(partition)
        return ledger is not None and ledger.serving

    def on_ticks(self, ticks: np.ndarray[Any, Any]) -> None:
        self.engine.update_prices(ticks["symbol"], ticks["last_price"])

    def logged_on(self, connection: Connection) -> None:
        connection.send(KillSwitchStatus(self.engine.kill_switch))

    def on_check(self, connection: Connection, check: RiskCheck) -> None:
        self.inject_latency()
        ledger = None
        if self.event_log is not None:
            ledger = self.ledgers.get(partition_of(check.account))
            if ledger is None or not ledger.serving:
                connection.send(RiskResult(check.order_id, PARTITION_TAKEOVER))
                self.metrics.decisions[REASON_NAMES[PARTITION_TAKEOVER]] += 1
                self.metrics.record(connection.received_ns)
                return
        reason = self.engine.check(*check[:7], time.perf_counter_ns(), check.is_replace)
        self.metrics.decisions[REASON_NAMES[reason]] += 1
        if ledger is not None and reason == OK:
            ledger.reserve(self.engine.reservation(check), connection, connection.received_ns)
            return
        if ledger is not None:
            ledger.refuse(Refusal(check.order_id, check.account, reason))
        connection.send(RiskResult(check.order_id, reason))
        self.metrics.record(connection.received_ns)

    def on_run(self, connection: Connection, run: FrameRun) -> None:
        if self.event_log is not None:  # every acceptance waits for the log: nothing to gain in a batch
            self._check_one_by_one(connection, run)
            return
        checks = np.frombuffer(run.data, dtype=CHECK_DTYPE)
        reasons = self.engine.check_batch(checks, time.perf_counter_ns())
        if reasons is None:
            self._check_one_by_one(connection, run)
            return
        for reason, count in zip(*np.unique(reasons, return_counts=True), strict=True):
            self.metrics.decisions[REASON_NAMES[int(reason)]] += int(count)
        if self.settings.latencyInjectionMicros:
            spin_for(self.settings.latencyInjectionMicros * run.frames)
        results = np.zeros(run.frames, dtype=RESULT_LAYOUT.dtype)
        results["length"] = RESULT_LAYOUT.size
        results["type"] = RESULT_LAYOUT.type_id
        results["version"] = PROTOCOL_VERSION
        results["sequence"] = np.arange(connection.sequence + 1, connection.sequence + 1 + run.frames)
        results["order_id"] = checks["order_id"]
        results["reason"] = reasons
        connection.sequence += run.frames
        connection.send_raw(results.tobytes())
        self.metrics.record(connection.received_ns, run.frames)

    def _check_one_by_one(self, connection: Connection, run: FrameRun) -> None:
        size = len(run.data) // run.frames
        for start in range(0, len(run.data), size):
            try:
                check: Any = decode_body(run.data, start, size, run.type_id)
            except ProtocolError as error:
                connection.reject(FrameError(error, run.type_id, 0, False))
                continue
            self.on_check(connection, check)

    def on_update(self, connection: Connection, update: RiskUpdate) -> None:
        if self.event_log is None:
            self.engine.apply_update(update)
            return
        # With the log, fills come from the log (execution appends them before anyone hears of them).
        account = self.engine.account_of(update.order_id) if update.done else None
        ledger = None if account is None else self.ledgers.get(partition_of(account))
        if ledger is not None and account is not None:
            ledger.release(Release(update.order_id, account))

    def on_kill_switch(self, connection: Connection, message: SetKillSwitch) -> None:
        self.set_kill_switch(message.state, f"session {connection.name}")
        connection.send(KillSwitchStatus(self.engine.kill_switch))
        self.metrics.record(connection.received_ns)

    def set_kill_switch(self, state: int, by: str) -> None:
        if state == self.engine.kill_switch:
            return
        self.engine.kill_switch = state
        log.warning("kill switch moved", extra=fields(state=KillSwitchState(state).name, by=by))
        if self.event_log is not None:
            self._log_kill_switch(KillSwitchChange(state, self.owner_bytes))
        for session in self.sessions:
            session.send(KillSwitchStatus(state))

    def _log_kill_switch(self, change: KillSwitchChange) -> None:
        """Appended after the switch moved: a halt never waits for the log."""
        assert self.event_log is not None
        self.kill_switch_moves += 1
        event_id = f"killswitch-{self.replica}-{self.incarnation}-{self.kill_switch_moves}"
        append = self.event_log.append([Append(KILL_SWITCH_KIND, 0, [change], event_id)])
        task = asyncio.get_running_loop().create_task(append)
        self.kill_switch_appends.add(task)
        task.add_done_callback(self._kill_switch_logged)

    def _kill_switch_logged(self, task: asyncio.Task[list[int]]) -> None:
        self.kill_switch_appends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("kill switch move not logged", extra=fields(error=repr(task.exception())))

    def reconfigure(self, settings: RiskSettings) -> None:
        previous = self.settings
        current_switch = self.engine.kill_switch
        try:
            self.engine.reconfigure(settings)
        except ValueError as error:
            log.error("config refused", extra=fields(error=str(error)))
            return
        super().reconfigure(settings)
        self.batch_types[layout_of(RiskCheck).type_id] = settings.batchThreshold
        # The file moves the switch only when its own value changes; a switch thrown over the wire stays.
        self.engine.kill_switch = current_switch
        if settings.killSwitch != previous.killSwitch:
            self.set_kill_switch(settings.killSwitch, "config")

    def status(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "killSwitch": KillSwitchState(engine.kill_switch).name,
            "accounts": len(engine.accounts.rows),
            "openOrders": len(engine.open_orders),
            "referencePrices": {
                symbol.rstrip(b"\0").decode(): int(price)
                for symbol, price in zip(engine.symbols, engine.reference, strict=True)
            },
            "marketData": self.market_data.stats.as_dict() if self.market_data else None,
            "replica": self.replica if self.event_log is not None else None,
            "partitions": {str(p): ledger.status() for p, ledger in sorted(self.ledgers.items())},
        }
