//! Latency histograms in nanoseconds (the `hdrhistogram` crate): what the services record per message
//! and export as a Prometheus histogram and percentiles, and what the load generator and benchmarks
//! measure with.

use hdrhistogram::Histogram;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Recorded latencies from 1 ns to `highest_ns` at `significant_digits` precision. Recording is an
/// index computation and two additions into counts allocated up front (no resizing): values above
/// `highest_ns` count as `highest_ns`. The exact sum is kept beside the counts, as Prometheus' `_sum`.
#[pyclass(module = "tradeplane_services._wire")]
pub struct LatencyHistogram {
    counts: Histogram<u64>,
    sum_ns: u128,
}

impl LatencyHistogram {
    pub(crate) fn with_bounds(highest_ns: u64, significant_digits: u8) -> Result<Self, String> {
        let counts =
            Histogram::new_with_bounds(1, highest_ns, significant_digits).map_err(|error| {
                format!(
                    "highest_ns={highest_ns}, significant_digits={significant_digits}: {error:?}"
                )
            })?;
        Ok(LatencyHistogram { counts, sum_ns: 0 })
    }
}

#[pymethods]
impl LatencyHistogram {
    #[new]
    #[pyo3(signature = (highest_ns = 60_000_000_000, significant_digits = 3))]
    fn new(highest_ns: u64, significant_digits: u8) -> PyResult<Self> {
        Self::with_bounds(highest_ns, significant_digits).map_err(PyValueError::new_err)
    }

    /// `count` occurrences of a latency of `value_ns`.
    #[pyo3(signature = (value_ns, count = 1))]
    pub(crate) fn record(&mut self, value_ns: u64, count: u64) {
        self.counts.saturating_record_n(value_ns, count);
        self.sum_ns += u128::from(value_ns) * u128::from(count);
    }

    /// One occurrence of each latency in `values_ns`.
    fn record_all(&mut self, values_ns: Vec<u64>) {
        for value_ns in values_ns {
            self.record(value_ns, 1);
        }
    }

    #[getter]
    pub(crate) fn count(&self) -> u64 {
        self.counts.len()
    }

    #[getter]
    fn sum_ns(&self) -> u128 {
        self.sum_ns
    }

    #[getter]
    fn max_ns(&self) -> u64 {
        self.counts.max()
    }

    /// The latency at or below which `percentile` % of the recorded ones are (0 when none is).
    fn value_at_percentile(&self, percentile: f64) -> u64 {
        self.counts.value_at_percentile(percentile)
    }

    /// ("p50", µs), ("p99.9", µs), ... for each of `percentiles`, as the reports print them.
    fn percentiles_us(&self, percentiles: Vec<f64>) -> Vec<(String, f64)> {
        percentiles
            .into_iter()
            .map(|percentile| {
                let value_ns = self.counts.value_at_percentile(percentile);
                (format!("p{percentile}"), value_ns as f64 / 1000.0)
            })
            .collect()
    }

    /// For each bound (ascending), how many latencies are at or below it: Prometheus' cumulative `le`
    /// buckets. A latency counts at the top of the range it was recorded in (within the precision),
    /// so a bucket never claims a latency lower than the one recorded.
    fn cumulative_counts(&self, bounds_ns: Vec<u64>) -> PyResult<Vec<u64>> {
        if bounds_ns.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(PyValueError::new_err(
                "bounds_ns must be strictly ascending",
            ));
        }
        let mut per_bound = vec![0u64; bounds_ns.len()];
        for step in self.counts.iter_recorded() {
            let index = bounds_ns.partition_point(|&bound| bound < step.value_iterated_to());
            if let Some(slot) = per_bound.get_mut(index) {
                *slot += step.count_since_last_iteration();
            }
        }
        let mut running = 0;
        for slot in &mut per_bound {
            running += *slot;
            *slot = running;
        }
        Ok(per_bound)
    }

    fn reset(&mut self) {
        self.counts.reset();
        self.sum_ns = 0;
    }
}
