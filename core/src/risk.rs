//! Pre-trade risk state and checks behind `tradeplane_services.risk` (its docstring says which checks
//! run and in which order; `RiskEngine` there subclasses `RiskBook` and adds the settings, the snapshot
//! documents and numpy views).
//!
//! Per account a row of flat tables (one cell per symbol); open orders, duplicate fingerprints and the
//! firm credit buckets in hash maps with a cheap multiplicative hash. Tables grow by doubling and the maps
//! keep their capacity, so a check in steady state allocates nothing. Sums are taken in i128, so an order
//! or a fill the wire allows never overflows a total; stored totals saturate at the i64 range.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict};

use crate::record::record_offsets;
use crate::wire::Value;
use crate::FrameWriter;

/// Hashes the u64 keys of the maps below (order ids, accounts, fingerprints) with one multiply: SipHash
/// costs more than the rest of a check, and no key here comes from an adversary who sees the table.
#[derive(Default)]
pub(crate) struct MultiplyHasher(u64);

impl Hasher for MultiplyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }
}

pub(crate) type FastMap<V> = HashMap<u64, V, BuildHasherDefault<MultiplyHasher>>;

pub(crate) fn fast_map<V>(capacity: usize) -> FastMap<V> {
    HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

const MIX: [u64; 5] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
    0xFF51_AFD7_ED55_8CCD,
];
const FINAL: u64 = 0xC4CE_B9FE_1A85_EC53;

/// 64-bit fingerprint of an order's identity (account, symbol index, side, quantity, price) for
/// duplicate detection: the arithmetic of the Python engine it replaced, modulo 2**64.
fn fingerprint(account: u64, index: usize, side: u64, quantity: i64, price: i64) -> u64 {
    let mut value = account.wrapping_mul(MIX[0])
        ^ (index as u64).wrapping_mul(MIX[1])
        ^ side.wrapping_mul(MIX[2])
        ^ (quantity as u64).wrapping_mul(MIX[3])
        ^ (price as u64).wrapping_mul(MIX[4]);
    value ^= value >> 33;
    value = value.wrapping_mul(FINAL);
    value ^ (value >> 29)
}

fn saturate(value: i128) -> i64 {
    value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// `whole > bound` exactly, as Python compares an int with a float.
fn exceeds(whole: i128, bound: f64) -> bool {
    if bound.is_nan() {
        return false;
    }
    // For an integer, being above a real is being above its floor; `as` saturates infinities.
    whole > bound.floor() as i128
}

/// The protocol's codes, given by protocol.py (it owns them).
struct Codes {
    buy: u8,
    sell: u8,
    limit: u8,
    market: u8,
    active: u8,
    halted: u8,
    reducing: u8,
    ok: u16,
    kill_switch_halted: u16,
    throttled: u16,
    unknown_symbol: u16,
    restricted_symbol: u16,
    max_quantity: u16,
    no_reference_price: u16,
    price_collar: u16,
    max_notional: u16,
    unknown_order: u16,
    duplicate_order: u16,
    kill_switch_reducing: u16,
    position_limit: u16,
    credit_limit: u16,
    firm_credit_limit: u16,
}

impl Codes {
    fn from_dict(codes: &Bound<'_, PyDict>) -> PyResult<Self> {
        fn code<'py, T: FromPyObjectOwned<'py>>(
            codes: &Bound<'py, PyDict>,
            name: &str,
        ) -> PyResult<T> {
            codes
                .get_item(name)?
                .ok_or_else(|| PyKeyError::new_err(format!("codes has no {name}")))?
                .extract()
                .map_err(Into::into)
        }
        Ok(Codes {
            buy: code(codes, "BUY")?,
            sell: code(codes, "SELL")?,
            limit: code(codes, "LIMIT")?,
            market: code(codes, "MARKET")?,
            active: code(codes, "ACTIVE")?,
            halted: code(codes, "HALTED")?,
            reducing: code(codes, "REDUCING")?,
            ok: code(codes, "OK")?,
            kill_switch_halted: code(codes, "KILL_SWITCH_HALTED")?,
            throttled: code(codes, "THROTTLED")?,
            unknown_symbol: code(codes, "UNKNOWN_SYMBOL")?,
            restricted_symbol: code(codes, "RESTRICTED_SYMBOL")?,
            max_quantity: code(codes, "MAX_QUANTITY")?,
            no_reference_price: code(codes, "NO_REFERENCE_PRICE")?,
            price_collar: code(codes, "PRICE_COLLAR")?,
            max_notional: code(codes, "MAX_NOTIONAL")?,
            unknown_order: code(codes, "UNKNOWN_ORDER")?,
            duplicate_order: code(codes, "DUPLICATE_ORDER")?,
            kill_switch_reducing: code(codes, "KILL_SWITCH_REDUCING")?,
            position_limit: code(codes, "POSITION_LIMIT")?,
            credit_limit: code(codes, "CREDIT_LIMIT")?,
            firm_credit_limit: code(codes, "FIRM_CREDIT_LIMIT")?,
        })
    }
}

/// Where each field of a RiskCheck frame sits in a record (numpy's CHECK_DTYPE offsets) and its size.
struct RecordLayout {
    size: usize,
    order_id: usize,
    account: usize,
    symbol: usize,
    side: usize,
    order_type: usize,
    quantity: usize,
    price: usize,
    is_replace: usize,
}

impl RecordLayout {
    fn from_dict(offsets: &Bound<'_, PyDict>) -> PyResult<Self> {
        let (size, [order_id, account, symbol, side, order_type, quantity, price, is_replace]) =
            record_offsets(
                offsets,
                [
                    ("order_id", 8),
                    ("account", 4),
                    ("symbol", 8),
                    ("side", 1),
                    ("order_type", 1),
                    ("quantity", 4),
                    ("price", 8),
                    ("is_replace", 1),
                ],
            )?;
        Ok(RecordLayout {
            size,
            order_id,
            account,
            symbol,
            side,
            order_type,
            quantity,
            price,
            is_replace,
        })
    }
}

fn read<const N: usize>(record: &[u8], offset: usize) -> [u8; N] {
    record[offset..offset + N]
        .try_into()
        .expect("offsets checked against the record size")
}

/// A RiskCheck record's fields.
struct Order {
    order_id: u64,
    account: u64,
    symbol: [u8; 8],
    side: u8,
    order_type: u8,
    quantity: i64,
    price: i64,
    is_replace: u8,
}

impl RecordLayout {
    fn order(&self, record: &[u8]) -> Order {
        Order {
            order_id: u64::from_le_bytes(read(record, self.order_id)),
            account: u64::from(u32::from_le_bytes(read(record, self.account))),
            symbol: read(record, self.symbol),
            side: record[self.side],
            order_type: record[self.order_type],
            quantity: i64::from(u32::from_le_bytes(read(record, self.quantity))),
            price: i64::from_le_bytes(read(record, self.price)),
            is_replace: record[self.is_replace],
        }
    }
}

/// RiskSettings in wire units (see `limits` in risk.py, which converts them).
struct Limits {
    firm_credit_share: Option<i128>,
    max_quantity: i128,
    max_notional: i128,
    collar: f64,
    max_position: i128,
    credit_limit: i128,
    rate_per_ns: f64,
    burst: f64,
    duplicate_window_ns: i64,
    restricted: Vec<bool>,
    kill_switch: u8,
}

/// An accepted order's exposure: its account's row, symbol index, side, open quantity and the price its
/// credit was taken at.
#[derive(Clone, Copy)]
struct Booking {
    row: usize,
    index: usize,
    side: u8,
    quantity: i64,
    credit_price: i64,
}

#[pyclass(subclass, module = "tradeplane_services._wire")]
pub struct RiskBook {
    codes: Codes,
    record: RecordLayout,
    symbols: Vec<[u8; 8]>,
    symbol_index: FastMap<usize>,
    partitions: u64,
    /// Per partition: whether its checks are decided here (a run touching one that is not is declined).
    served: Vec<bool>,
    firm_shares: u64,
    limits: Limits,
    reference: Vec<i64>,
    firm_credit: Vec<i128>,
    rows: FastMap<usize>,
    accounts: Vec<u64>,
    // Per cell (row * symbols + index):
    position: Vec<i64>,
    open_buy: Vec<i64>,
    open_sell: Vec<i64>,
    // Per row:
    credit_used: Vec<i64>,
    tokens: Vec<f64>,
    tokens_at: Vec<i64>,
    open_orders: FastMap<Booking>,
    recent: FastMap<i64>,
    recent_pruned_size: usize,
}

fn symbol_key(symbol: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*symbol)
}

impl RiskBook {
    fn booking_state(&self, booking: &Booking) -> BookingState {
        (
            self.accounts[booking.row],
            booking.index,
            booking.side,
            booking.quantity,
            booking.credit_price,
        )
    }

    /// The open orders of the accounts `keep` takes, as `booking` gives them, by order id.
    fn open_orders_where(&self, keep: impl Fn(u64) -> bool) -> Vec<(u64, BookingState)> {
        let mut orders: Vec<_> = self
            .open_orders
            .iter()
            .map(|(order_id, booking)| (*order_id, self.booking_state(booking)))
            .filter(|(_, state)| keep(state.0))
            .collect();
        orders.sort_unstable_by_key(|(order_id, _)| *order_id);
        orders
    }

    fn with(
        symbols: Vec<Vec<u8>>,
        partitions: u64,
        firm_shares: u64,
        codes: Codes,
        record: RecordLayout,
    ) -> Result<Self, String> {
        if partitions == 0 || firm_shares == 0 {
            return Err("partitions and firm_shares must be at least 1".to_string());
        }
        let mut keys = Vec::with_capacity(symbols.len());
        let mut symbol_index = fast_map(symbols.len());
        for (index, symbol) in symbols.iter().enumerate() {
            let key: [u8; 8] = symbol
                .as_slice()
                .try_into()
                .map_err(|_| format!("symbols[{index}]: expected 8 bytes, got {}", symbol.len()))?;
            symbol_index.insert(symbol_key(&key), index);
            keys.push(key);
        }
        let count = keys.len();
        Ok(RiskBook {
            codes,
            record,
            symbols: keys,
            symbol_index,
            partitions,
            served: vec![true; partitions as usize],
            firm_shares,
            limits: Limits {
                firm_credit_share: None,
                max_quantity: 0,
                max_notional: 0,
                collar: 0.0,
                max_position: 0,
                credit_limit: 0,
                rate_per_ns: 0.0,
                burst: 1.0,
                duplicate_window_ns: 0,
                restricted: vec![false; count],
                kill_switch: 0,
            },
            reference: vec![0; count],
            firm_credit: vec![0; firm_shares as usize],
            rows: fast_map(1024),
            accounts: Vec::with_capacity(1024),
            position: Vec::new(),
            open_buy: Vec::new(),
            open_sell: Vec::new(),
            credit_used: Vec::new(),
            tokens: Vec::new(),
            tokens_at: Vec::new(),
            open_orders: fast_map(1 << 16),
            recent: fast_map(4096),
            recent_pruned_size: 0,
        })
    }

    fn index_of(&self, symbol: &[u8]) -> Option<usize> {
        let symbol: &[u8; 8] = symbol.try_into().ok()?;
        self.symbol_index.get(&symbol_key(symbol)).copied()
    }

    fn row(&mut self, account: u64) -> usize {
        if let Some(row) = self.rows.get(&account) {
            return *row;
        }
        let row = self.accounts.len();
        if row == self.credit_used.len() {
            let capacity = 2 * row.max(32);
            let cells = capacity * self.symbols.len();
            self.position.resize(cells, 0);
            self.open_buy.resize(cells, 0);
            self.open_sell.resize(cells, 0);
            self.credit_used.resize(capacity, 0);
            self.tokens.resize(capacity, 0.0);
            self.tokens_at.resize(capacity, 0);
        }
        self.rows.insert(account, row);
        self.accounts.push(account);
        self.tokens[row] = self.limits.burst;
        row
    }

    fn add_credit(&mut self, row: usize, amount: i128) {
        // A fill's notional can outgrow 64 bits (the venue trades what the wire allows): the credit used
        // then stays at the end of the range, which refuses every order after it.
        self.credit_used[row] = saturate(i128::from(self.credit_used[row]) + amount);
        let bucket = (self.accounts[row] % self.firm_shares) as usize;
        self.firm_credit[bucket] = self.firm_credit[bucket].saturating_add(amount);
    }

    fn book(&mut self, booking: Booking, sign: i64) {
        let cell = booking.row * self.symbols.len() + booking.index;
        let open = if booking.side == self.codes.buy {
            &mut self.open_buy[cell]
        } else {
            &mut self.open_sell[cell]
        };
        *open = open.saturating_add(sign * booking.quantity);
        let amount =
            i128::from(sign) * i128::from(booking.quantity) * i128::from(booking.credit_price);
        self.add_credit(booking.row, amount);
    }

    fn remember(&mut self, key: u64, expiry: i64, now_ns: i64) {
        self.recent.insert(key, expiry);
        if self.recent.len() > 2 * self.recent_pruned_size + 1024 {
            self.recent.retain(|_, expiry| *expiry > now_ns);
            self.recent_pruned_size = self.recent.len();
        }
    }

    /// The checks in the order risk.py's docstring gives; `index` is the order's symbol index, None for
    /// a symbol not configured.
    fn decide(&mut self, order: &Order, index: Option<usize>, now_ns: i64) -> u16 {
        if self.limits.kill_switch == self.codes.halted {
            return self.codes.kill_switch_halted;
        }
        let row = self.row(order.account);
        let (codes, limits) = (&self.codes, &self.limits);
        let elapsed = (i128::from(now_ns) - i128::from(self.tokens_at[row])) as f64;
        let tokens = (self.tokens[row] + elapsed * limits.rate_per_ns).min(limits.burst);
        self.tokens_at[row] = now_ns;
        if tokens < 1.0 {
            self.tokens[row] = tokens;
            return codes.throttled;
        }
        self.tokens[row] = tokens - 1.0;
        let Some(index) = index else {
            return codes.unknown_symbol;
        };
        if limits.restricted[index] {
            return codes.restricted_symbol;
        }
        if i128::from(order.quantity) > limits.max_quantity {
            return codes.max_quantity;
        }
        let reference = self.reference[index];
        if reference == 0 {
            return codes.no_reference_price;
        }
        let credit_price = if order.order_type == codes.limit {
            let away = (i128::from(order.price) - i128::from(reference)).abs();
            if exceeds(away, reference as f64 * limits.collar) {
                return codes.price_collar;
            }
            order.price
        } else {
            reference
        };
        let notional = i128::from(order.quantity) * i128::from(credit_price);
        if notional > limits.max_notional {
            return codes.max_notional;
        }
        let mut replaced = None;
        if order.is_replace != 0 {
            let Some(booking) = self.open_orders.remove(&order.order_id) else {
                return self.codes.unknown_order;
            };
            self.book(booking, -1);
            replaced = Some(booking);
        }
        let reason = self.check_exposure(order, row, index, notional, now_ns);
        if reason != self.codes.ok {
            if let Some(booking) = replaced {
                self.book(booking, 1);
                self.open_orders.insert(order.order_id, booking);
            }
            return reason;
        }
        let booking = Booking {
            row,
            index,
            side: order.side,
            quantity: order.quantity,
            credit_price,
        };
        self.book(booking, 1);
        self.open_orders.insert(order.order_id, booking);
        self.codes.ok
    }

    fn check_exposure(
        &mut self,
        order: &Order,
        row: usize,
        index: usize,
        notional: i128,
        now_ns: i64,
    ) -> u16 {
        let (codes, limits) = (&self.codes, &self.limits);
        let mut key = 0;
        if limits.duplicate_window_ns != 0 && order.is_replace == 0 {
            key = fingerprint(
                order.account,
                index,
                u64::from(order.side),
                order.quantity,
                order.price,
            );
            if self.recent.get(&key).copied().unwrap_or(0) > now_ns {
                return codes.duplicate_order;
            }
        }
        let cell = row * self.symbols.len() + index;
        let position = i128::from(self.position[cell]);
        let quantity = i128::from(order.quantity);
        let (projected, reducing) = if order.side == codes.buy {
            let projected = position + i128::from(self.open_buy[cell]) + quantity;
            (projected, position < 0 && projected <= 0)
        } else {
            let projected = i128::from(self.open_sell[cell]) + quantity - position;
            (projected, position > 0 && projected <= 0)
        };
        if limits.kill_switch == codes.reducing && !reducing {
            return codes.kill_switch_reducing;
        }
        if projected > limits.max_position {
            return codes.position_limit;
        }
        if i128::from(self.credit_used[row]) + notional > limits.credit_limit {
            return codes.credit_limit;
        }
        if let Some(share) = limits.firm_credit_share {
            if self.firm_credit[(order.account % self.firm_shares) as usize] + notional > share {
                return codes.firm_credit_limit;
            }
        }
        let ok = codes.ok;
        if key != 0 {
            let expiry = now_ns.saturating_add(limits.duplicate_window_ns);
            self.remember(key, expiry, now_ns);
        }
        ok
    }

    fn on_done_booking(&mut self, order_id: u64) {
        if let Some(booking) = self.open_orders.remove(&order_id) {
            self.book(booking, -1);
        }
    }

    /// A record the decoder would refuse (a field out of its rules) or with a symbol not configured (it
    /// may be one the decoder refuses): `check_batch` leaves such a run to the frame-by-frame path.
    fn declined(&self, order: &Order) -> bool {
        let codes = &self.codes;
        self.index_of(&order.symbol).is_none()
            || (order.side != codes.buy && order.side != codes.sell)
            || (order.order_type != codes.limit && order.order_type != codes.market)
            || order.quantity <= 0
            || order.price < 0
            || order.is_replace > 1
            || !self.served[(order.account % self.partitions) as usize]
    }

    fn rows_of(&self, partition: u64) -> Vec<usize> {
        (0..self.accounts.len())
            .filter(|row| self.accounts[*row] % self.partitions == partition)
            .collect()
    }
}

type HeldSymbol = (usize, i64, i64, i64);
type AccountState = (u64, i64, Vec<HeldSymbol>);
type OrderState = (u64, u64, usize, u8, i64, i64);
/// (account, symbol index, side, open quantity, credit price) of an open order.
type BookingState = (u64, usize, u8, i64, i64);

#[pymethods]
impl RiskBook {
    /// `symbols`: the configured 8-byte symbols (an index is a position here); `partitions`: how many
    /// account partitions there are (account % partitions); `firm_shares`: how many firm credit buckets
    /// (account % firm_shares); `codes`: the protocol's codes; `record`: CHECK_DTYPE's field offsets and
    /// its size under "size". Limits come with `configure`.
    #[new]
    fn new(
        symbols: Vec<Vec<u8>>,
        partitions: u64,
        firm_shares: u64,
        codes: &Bound<'_, PyDict>,
        record: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        RiskBook::with(
            symbols,
            partitions,
            firm_shares,
            Codes::from_dict(codes)?,
            RecordLayout::from_dict(record)?,
        )
        .map_err(PyValueError::new_err)
    }

    /// Sets the limits, in wire units (prices x PRICE_SCALE, nanoseconds).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, firm_credit_share, max_quantity, max_notional, collar, max_position, credit_limit,
        rate_per_ns, burst, duplicate_window_ns, restricted, kill_switch))]
    fn configure(
        &mut self,
        firm_credit_share: Option<i128>,
        max_quantity: i128,
        max_notional: i128,
        collar: f64,
        max_position: i128,
        credit_limit: i128,
        rate_per_ns: f64,
        burst: f64,
        duplicate_window_ns: i64,
        restricted: Vec<bool>,
        kill_switch: u8,
    ) -> PyResult<()> {
        if restricted.len() != self.symbols.len() {
            return Err(PyValueError::new_err(format!(
                "restricted: expected {} flags, one per symbol, got {}",
                self.symbols.len(),
                restricted.len()
            )));
        }
        self.limits = Limits {
            firm_credit_share,
            max_quantity,
            max_notional,
            collar,
            max_position,
            credit_limit,
            rate_per_ns,
            burst,
            duplicate_window_ns,
            restricted,
            kill_switch,
        };
        Ok(())
    }

    #[getter]
    fn get_kill_switch(&self) -> u8 {
        self.limits.kill_switch
    }

    #[setter]
    fn set_kill_switch(&mut self, state: u8) -> PyResult<()> {
        let codes = &self.codes;
        if ![codes.active, codes.reducing, codes.halted].contains(&state) {
            return Err(PyValueError::new_err(format!(
                "kill_switch: {state} is not a kill switch state"
            )));
        }
        self.limits.kill_switch = state;
        Ok(())
    }

    /// OK and the order's exposure booked, or the Reason it is refused.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (order_id, account, symbol, side, order_type, quantity, price, now_ns, is_replace = 0))]
    fn check(
        &mut self,
        order_id: u64,
        account: u64,
        symbol: &[u8],
        side: u8,
        order_type: u8,
        quantity: i64,
        price: i64,
        now_ns: i64,
        is_replace: u8,
    ) -> u16 {
        let index = self.index_of(symbol);
        let order = Order {
            order_id,
            account,
            symbol: [0; 8], // `decide` goes by `index`
            side,
            order_type,
            quantity,
            price,
            is_replace,
        };
        self.decide(&order, index, now_ns)
    }

    /// Reasons (u16, little-endian) for a run of RiskCheck records, each decided and booked as `check`
    /// decides it, in order; None, with nothing booked, when a record is one `declined` names.
    fn check_records<'py>(
        &mut self,
        py: Python<'py>,
        records: &[u8],
        now_ns: i64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let size = self.record.size;
        if records.len() % size != 0 {
            return Err(PyValueError::new_err(format!(
                "records: {} bytes is not a whole number of {size}-byte RiskCheck records",
                records.len()
            )));
        }
        if records
            .chunks_exact(size)
            .any(|record| self.declined(&self.record.order(record)))
        {
            return Ok(None);
        }
        let reasons = PyBytes::new_with(py, records.len() / size * 2, |out| {
            for (record, reason) in records.chunks_exact(size).zip(out.chunks_exact_mut(2)) {
                let order = self.record.order(record);
                let index = self.index_of(&order.symbol);
                reason.copy_from_slice(&self.decide(&order, index, now_ns).to_le_bytes());
            }
            Ok(())
        })?;
        Ok(Some(reasons))
    }

    /// The journal's side of a run `check_records` decided (`records`, and the `reasons` it gave): the
    /// Reservation frame of each accepted order (`reservation` in risk.py, with its booking's credit
    /// price) and the RiskResult frames that answer them OK, both with sequence 0 and in record order;
    /// and how many fall in each partition.
    fn reservation_run<'py>(
        &self,
        py: Python<'py>,
        records: &[u8],
        reasons: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyByteArray>, Vec<u32>)> {
        let size = self.record.size;
        if records.len() % size != 0 || reasons.len() != records.len() / size * 2 {
            return Err(PyValueError::new_err(format!(
                "{} bytes of {size}-byte records with {} bytes of reasons",
                records.len(),
                reasons.len()
            )));
        }
        let mut writer = FrameWriter::new(py)?;
        let reservation = writer.codec().layout_named("Reservation")?.type_id;
        let result = writer.codec().layout_named("RiskResult")?.type_id;
        let (mut reservations, mut results) = (Vec::new(), Vec::new());
        let mut per_partition = vec![0u32; self.partitions as usize];
        for (record, reason) in records.chunks_exact(size).zip(reasons.chunks_exact(2)) {
            if u16::from_le_bytes([reason[0], reason[1]]) != self.codes.ok {
                continue;
            }
            let order = self.record.order(record);
            let booking = self.open_orders.get(&order.order_id).ok_or_else(|| {
                PyKeyError::new_err(format!("order {} is not open", order.order_id))
            })?;
            let values = [
                Value::Int(order.order_id.into()),
                Value::Int(order.account.into()),
                Value::Bytes(&order.symbol),
                Value::Int(order.side.into()),
                Value::Int(order.quantity.into()),
                Value::Int(booking.credit_price.into()),
                Value::Int(order.is_replace.into()),
            ];
            writer.append(reservation, &values, &mut reservations)?;
            let answer = [
                Value::Int(order.order_id.into()),
                Value::Int(self.codes.ok.into()),
            ];
            writer.append(result, &answer, &mut results)?;
            per_partition[(order.account % self.partitions) as usize] += 1;
        }
        Ok((
            PyBytes::new(py, &reservations),
            PyByteArray::new(py, &results),
            per_partition,
        ))
    }

    /// Last trade prices from market data: 8-byte symbols and little-endian i64 prices, one per tick;
    /// later ticks of a symbol win, unknown symbols and prices <= 0 are skipped.
    fn update_prices_packed(&mut self, symbols: &[u8], prices: &[u8]) -> PyResult<()> {
        if symbols.len() % 8 != 0 || prices.len() != symbols.len() {
            return Err(PyValueError::new_err(format!(
                "update_prices_packed: {} symbol bytes and {} price bytes are not 8 of each per tick",
                symbols.len(),
                prices.len()
            )));
        }
        for (symbol, price) in symbols.chunks_exact(8).zip(prices.chunks_exact(8)) {
            let price = i64::from_le_bytes(price.try_into().expect("chunks of 8"));
            if let Some(index) = self.index_of(symbol) {
                if price > 0 {
                    self.reference[index] = price;
                }
            }
        }
        Ok(())
    }

    fn set_reference(&mut self, symbol: &[u8], price: i64) -> PyResult<()> {
        let index = self
            .index_of(symbol)
            .ok_or_else(|| PyKeyError::new_err(format!("symbol {symbol:?} is not configured")))?;
        self.reference[index] = price;
        Ok(())
    }

    /// Last trade price per symbol index, 0: none yet.
    #[getter]
    fn reference(&self) -> Vec<i64> {
        self.reference.clone()
    }

    fn on_fill(&mut self, order_id: u64, quantity: i64, price: i64) {
        let Some(booking) = self.open_orders.get_mut(&order_id) else {
            return;
        };
        let released = quantity.min(booking.quantity);
        booking.quantity -= released;
        let booking = *booking;
        let cell = booking.row * self.symbols.len() + booking.index;
        if booking.side == self.codes.buy {
            self.open_buy[cell] = self.open_buy[cell].saturating_sub(released);
            self.position[cell] = self.position[cell].saturating_add(quantity);
        } else {
            self.open_sell[cell] = self.open_sell[cell].saturating_sub(released);
            self.position[cell] = self.position[cell].saturating_sub(quantity);
        }
        let amount = i128::from(quantity) * i128::from(price)
            - i128::from(released) * i128::from(booking.credit_price);
        self.add_credit(booking.row, amount);
    }

    fn on_done(&mut self, order_id: u64) {
        self.on_done_booking(order_id);
    }

    /// A fill from the event log; one of an order booked elsewhere still moves the position and credit.
    #[allow(clippy::too_many_arguments)]
    fn replay_fill(
        &mut self,
        order_id: u64,
        account: u64,
        symbol: &[u8],
        side: u8,
        quantity: i64,
        price: i64,
    ) {
        if self.open_orders.contains_key(&order_id) {
            self.on_fill(order_id, quantity, price);
            return;
        }
        let Some(index) = self.index_of(symbol) else {
            return;
        };
        let row = self.row(account);
        let cell = row * self.symbols.len() + index;
        let signed = if side == self.codes.buy {
            i128::from(quantity)
        } else {
            -i128::from(quantity)
        };
        self.position[cell] = saturate(i128::from(self.position[cell]) + signed);
        self.add_credit(row, i128::from(quantity) * i128::from(price));
    }

    /// Replays an accepted order: books its exposure as the check did (a replace: instead of the old).
    #[allow(clippy::too_many_arguments)]
    fn replay_reservation(
        &mut self,
        order_id: u64,
        account: u64,
        symbol: &[u8],
        side: u8,
        quantity: i64,
        credit_price: i64,
        is_replace: u8,
    ) {
        let Some(index) = self.index_of(symbol) else {
            return; // a symbol no longer configured: nothing to check it against
        };
        if is_replace != 0 {
            self.on_done_booking(order_id);
        }
        let booking = Booking {
            row: self.row(account),
            index,
            side,
            quantity,
            credit_price,
        };
        self.book(booking, 1);
        self.open_orders.insert(order_id, booking);
    }

    /// (account, symbol index, side, open quantity, credit price) of an open order, None if not open.
    fn booking(&self, order_id: u64) -> Option<BookingState> {
        self.open_orders
            .get(&order_id)
            .map(|booking| self.booking_state(booking))
    }

    /// Every open order as `booking` gives it, by order id.
    fn open_orders(&self) -> Vec<(u64, BookingState)> {
        self.open_orders_where(|_| true)
    }

    /// Whether `partition`'s checks are decided here: `check_records` declines a run touching one that
    /// is not (every partition is, until told otherwise).
    fn set_served(&mut self, partition: u64, served: bool) -> PyResult<()> {
        let slot = self.served.get_mut(partition as usize).ok_or_else(|| {
            PyValueError::new_err(format!(
                "partition {partition}: there are {}",
                self.partitions
            ))
        })?;
        *slot = served;
        Ok(())
    }

    #[getter]
    fn open_order_count(&self) -> usize {
        self.open_orders.len()
    }

    /// Every account known, in the order first seen: (account, throttle tokens, credit used).
    fn accounts(&self) -> Vec<(u64, f64, i64)> {
        (0..self.accounts.len())
            .map(|row| (self.accounts[row], self.tokens[row], self.credit_used[row]))
            .collect()
    }

    /// Duplicate fingerprints remembered, with their expiry (ns).
    fn recent(&self) -> Vec<(u64, i64)> {
        let mut recent: Vec<_> = self
            .recent
            .iter()
            .map(|(key, expiry)| (*key, *expiry))
            .collect();
        recent.sort_unstable();
        recent
    }

    /// Credit used by the accounts of each firm credit bucket.
    fn firm_credit(&self) -> Vec<i128> {
        self.firm_credit.clone()
    }

    /// (position, open buy, open sell, credit used) of an account in a symbol.
    fn exposure(&self, account: u64, symbol: &[u8]) -> PyResult<(i64, i64, i64, i64)> {
        let Some(row) = self.rows.get(&account).copied() else {
            return Ok((0, 0, 0, 0));
        };
        let index = self
            .index_of(symbol)
            .ok_or_else(|| PyKeyError::new_err(format!("symbol {symbol:?} is not configured")))?;
        let cell = row * self.symbols.len() + index;
        Ok((
            self.position[cell],
            self.open_buy[cell],
            self.open_sell[cell],
            self.credit_used[row],
        ))
    }

    /// Drops every account's exposure in the partition (the accounts keep their rows, with a full
    /// throttle): its next owner rebuilds it from the log.
    fn forget_partition(&mut self, partition: u64) {
        let rows = self.rows_of(partition);
        if rows.is_empty() {
            return;
        }
        let symbols = self.symbols.len();
        let mut forgotten = vec![false; self.accounts.len()];
        let mut credit = 0i128;
        for row in rows {
            forgotten[row] = true;
            credit += i128::from(self.credit_used[row]);
            for cell in row * symbols..(row + 1) * symbols {
                self.position[cell] = 0;
                self.open_buy[cell] = 0;
                self.open_sell[cell] = 0;
            }
            self.credit_used[row] = 0;
            self.tokens[row] = self.limits.burst;
            self.tokens_at[row] = 0;
        }
        let bucket = (partition % self.firm_shares) as usize;
        self.firm_credit[bucket] = self.firm_credit[bucket].saturating_sub(credit);
        self.open_orders
            .retain(|_, booking| !forgotten[booking.row]);
    }

    /// The exposure of the partition's accounts: (account, credit used, [(symbol index, position, open
    /// buy, open sell) of each symbol held]) in the order first seen, and the open orders as (order id,
    /// account, symbol index, side, open quantity, credit price) by order id.
    fn partition_exposure(&self, partition: u64) -> (Vec<AccountState>, Vec<OrderState>) {
        let symbols = self.symbols.len();
        let rows = self.rows_of(partition);
        let accounts = rows
            .iter()
            .map(|row| {
                let held = (0..symbols)
                    .filter_map(|index| {
                        let cell = row * symbols + index;
                        let cell_state = (
                            index,
                            self.position[cell],
                            self.open_buy[cell],
                            self.open_sell[cell],
                        );
                        (cell_state.1 != 0 || cell_state.2 != 0 || cell_state.3 != 0)
                            .then_some(cell_state)
                    })
                    .collect();
                (self.accounts[*row], self.credit_used[*row], held)
            })
            .collect();
        let orders = self
            .open_orders_where(|account| account % self.partitions == partition)
            .into_iter()
            .map(
                |(order_id, (account, index, side, quantity, credit_price))| {
                    (order_id, account, index, side, quantity, credit_price)
                },
            )
            .collect();
        (accounts, orders)
    }

    /// Puts back what `partition_exposure` gave (symbol indexes of this book), after forgetting the partition.
    fn restore_exposure(
        &mut self,
        partition: u64,
        accounts: Vec<AccountState>,
        orders: Vec<OrderState>,
    ) -> PyResult<()> {
        let symbols = self.symbols.len();
        let out_of_range = accounts
            .iter()
            .flat_map(|(_, _, held)| held.iter().map(|cell| cell.0))
            .chain(orders.iter().map(|order| order.2))
            .find(|index| *index >= symbols);
        if let Some(index) = out_of_range {
            return Err(PyValueError::new_err(format!(
                "restore_partition: symbol index {index} is not below the {symbols} symbols configured"
            )));
        }
        self.forget_partition(partition);
        for (account, credit, held) in accounts {
            let row = self.row(account);
            self.add_credit(row, i128::from(credit));
            for (index, position, open_buy, open_sell) in held {
                let cell = row * symbols + index;
                self.position[cell] = position;
                self.open_buy[cell] = open_buy;
                self.open_sell[cell] = open_sell;
            }
        }
        for (order_id, account, index, side, quantity, credit_price) in orders {
            let row = self.row(account);
            let booking = Booking {
                row,
                index,
                side,
                quantity,
                credit_price,
            };
            self.open_orders.insert(order_id, booking);
        }
        Ok(())
    }
}

/// A book of AAPL and MSFT with the protocol's codes, CHECK_DTYPE's layout and limits no order of
/// `steady_check_and_done` breaks, for the allocation counts of core/src/steady_state.rs.
#[cfg(test)]
pub(crate) fn steady_book(duplicate_window_ns: i64) -> RiskBook {
    let codes = Codes {
        buy: 1,
        sell: 2,
        limit: 1,
        market: 2,
        active: 1,
        reducing: 2,
        halted: 3,
        ok: 0,
        kill_switch_halted: 20,
        throttled: 21,
        unknown_symbol: 23,
        restricted_symbol: 24,
        max_quantity: 25,
        no_reference_price: 26,
        price_collar: 27,
        max_notional: 28,
        unknown_order: 29,
        duplicate_order: 30,
        kill_switch_reducing: 31,
        position_limit: 32,
        credit_limit: 33,
        firm_credit_limit: 34,
    };
    let record = RecordLayout {
        size: 47,
        order_id: 12,
        account: 20,
        symbol: 24,
        side: 32,
        order_type: 33,
        quantity: 34,
        price: 38,
        is_replace: 46,
    };
    let symbols = vec![b"AAPL\0\0\0\0".to_vec(), b"MSFT\0\0\0\0".to_vec()];
    let Ok(mut book) = RiskBook::with(symbols, 16, 16, codes, record) else {
        panic!("a valid book");
    };
    book.limits = Limits {
        firm_credit_share: Some(i128::MAX),
        max_quantity: 1_000_000,
        max_notional: i128::MAX,
        collar: 0.05,
        max_position: i128::MAX,
        credit_limit: i128::MAX,
        rate_per_ns: 1.0,
        burst: 1e9,
        duplicate_window_ns,
        restricted: vec![false, false],
        kill_switch: 1,
    };
    book.reference = vec![1_000_000, 2_000_000];
    book
}

#[cfg(test)]
impl RiskBook {
    /// Round `round`'s order over 1,000 accounts and both symbols, checked (accepted) then released.
    pub(crate) fn steady_check_and_done(&mut self, round: u64) -> u16 {
        let index = (round % 2) as usize;
        let order = Order {
            order_id: round,
            account: 1 + round % 1000,
            symbol: self.symbols[index],
            side: 1 + (round / 2 % 2) as u8,
            order_type: 1,
            quantity: 1 + (round / 2000 % 500) as i64,
            price: self.reference[index],
            is_replace: 0,
        };
        let reason = self.decide(&order, Some(index), round as i64 * 1_000);
        self.on_done_booking(round);
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of the Python fingerprint the engine used before (same arithmetic on Python ints).
    #[test]
    fn fingerprint_matches_the_python_arithmetic() {
        assert_eq!(fingerprint(0, 0, 0, 0, 0), 0);
        assert_eq!(fingerprint(1, 0, 1, 10, 1_000_000), 0x11C8_2368_BAB1_D589);
        assert_eq!(fingerprint(7, 2, 2, 1, -5), 0xE615_85D2_7C3C_0540);
    }

    #[test]
    fn exceeds_compares_an_integer_with_a_float_exactly() {
        assert!(exceeds(6, 5.5));
        assert!(!exceeds(5, 5.0));
        assert!(exceeds(5, 4.999_999));
        assert!(!exceeds(i128::from(i64::MAX), f64::INFINITY));
        assert!(exceeds(0, f64::NEG_INFINITY));
        assert!(!exceeds(1, f64::NAN));
    }
}
