//! The simulated market-data feed's ticks (`SimulatedFeed` in marketdata.py): each call moves every
//! symbol's mid one step of a mean-reverting walk, then writes the ticks round-robin over the symbols
//! straight into the wire's tick records. In numpy that took a pass per field over every tick, and the
//! generator, not the network, capped the feed.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::record::record_offsets;

/// The noise of one step of the walk: its shock is this fraction of the reference price (one sigma).
const SHOCK_SIGMA: f64 = 0.0004;
/// The share of a mid's distance from its reference that one step keeps.
const REVERSION: f64 = 0.98;

/// Where a tick's fields sit in its record (numpy's TICK_DTYPE offsets).
struct TickRecord {
    size: usize,
    symbol: usize,
    bid_price: usize,
    ask_price: usize,
    last_price: usize,
    bid_quantity: usize,
    ask_quantity: usize,
    timestamp_ns: usize,
}

#[pyclass(module = "tradeplane_services._wire")]
pub struct TickWalk {
    names: Vec<[u8; 8]>,
    reference: Vec<f64>,
    mid: Vec<f64>,
    cent: i64,
    cursor: usize,
    random: SmallRng,
    shock: Normal<f64>,
    record: TickRecord,
}

#[pymethods]
impl TickWalk {
    /// `names`: 8-byte wire symbols; `reference`: their prices in wire units; `cent`: the price tick.
    #[new]
    fn new(
        names: Vec<Vec<u8>>,
        reference: Vec<i64>,
        cent: i64,
        seed: u64,
        record: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        if names.is_empty() || names.len() != reference.len() {
            return Err(PyValueError::new_err(
                "a walk needs one reference price per symbol, and at least one symbol",
            ));
        }
        let names = names
            .into_iter()
            .map(|name| {
                <[u8; 8]>::try_from(name.as_slice())
                    .map_err(|_| PyValueError::new_err(format!("symbol {name:?} is not 8 bytes")))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let (size, fields) = record_offsets(
            record,
            [
                ("symbol", 8),
                ("bid_price", 8),
                ("ask_price", 8),
                ("last_price", 8),
                ("bid_quantity", 4),
                ("ask_quantity", 4),
                ("timestamp_ns", 8),
            ],
        )?;
        let [symbol, bid_price, ask_price, last_price, bid_quantity, ask_quantity, timestamp_ns] =
            fields;
        let reference: Vec<f64> = reference.into_iter().map(|price| price as f64).collect();
        Ok(TickWalk {
            names,
            mid: reference.clone(),
            reference,
            cent,
            cursor: 0,
            random: SmallRng::seed_from_u64(seed),
            shock: Normal::new(0.0, SHOCK_SIGMA).expect("a finite, positive sigma"),
            record: TickRecord {
                size,
                symbol,
                bid_price,
                ask_price,
                last_price,
                bid_quantity,
                ask_quantity,
                timestamp_ns,
            },
        })
    }

    /// `count` tick records stamped `now_ns`, after one step of the walk; quantities are 100 to 900 in
    /// round lots, prices the mid rounded to the cent (half to even) with the bid and ask a cent away.
    fn take<'py>(
        &mut self,
        py: Python<'py>,
        count: usize,
        now_ns: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let cent = self.cent as f64;
        let last: Vec<i64> = (0..self.names.len())
            .map(|index| {
                let reference = self.reference[index];
                let shock = self.shock.sample(&mut self.random);
                self.mid[index] =
                    reference + (self.mid[index] - reference) * REVERSION + reference * shock;
                ((self.mid[index] / cent).round_ties_even() * cent) as i64
            })
            .collect();
        let record = &self.record;
        let symbols = self.names.len();
        let length = count
            .checked_mul(record.size)
            .ok_or_else(|| PyValueError::new_err(format!("{count} ticks do not fit in memory")))?;
        let names = &self.names;
        let random = &mut self.random;
        let mut which = self.cursor;
        let ticks = PyBytes::new_with(py, length, |out| {
            for tick in out.chunks_exact_mut(record.size) {
                let price = last[which];
                tick[record.symbol..record.symbol + 8].copy_from_slice(&names[which]);
                put(tick, record.last_price, &price.to_le_bytes());
                put(tick, record.bid_price, &(price - self.cent).to_le_bytes());
                put(tick, record.ask_price, &(price + self.cent).to_le_bytes());
                put(
                    tick,
                    record.bid_quantity,
                    &(random.random_range(1..10u32) * 100).to_le_bytes(),
                );
                put(
                    tick,
                    record.ask_quantity,
                    &(random.random_range(1..10u32) * 100).to_le_bytes(),
                );
                put(tick, record.timestamp_ns, &now_ns.to_le_bytes());
                which = if which + 1 == symbols { 0 } else { which + 1 };
            }
            Ok(())
        })?;
        self.cursor = which;
        Ok(ticks)
    }
}

fn put(record: &mut [u8], offset: usize, value: &[u8]) {
    record[offset..offset + value.len()].copy_from_slice(value);
}
