//! Fixed-size records that Python lays out with numpy dtypes and the core reads or writes in place.

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The record size and each field's offset, read from `{"size": .., name: offset, ..}` (a numpy dtype's
/// offsets) for `fields` given as (name, width in bytes); a field ending past the record is an error.
pub(crate) fn record_offsets<const N: usize>(
    offsets: &Bound<'_, PyDict>,
    fields: [(&str, usize); N],
) -> PyResult<(usize, [usize; N])> {
    let offset = |name: &str| -> PyResult<usize> {
        offsets
            .get_item(name)?
            .ok_or_else(|| PyKeyError::new_err(format!("record offsets have no {name}")))?
            .extract()
    };
    let size = offset("size")?;
    let mut found = [0; N];
    for (slot, (name, width)) in found.iter_mut().zip(fields) {
        *slot = offset(name)?;
        if *slot + width > size {
            return Err(PyValueError::new_err(format!(
                "record offsets: {name} ends past the record size {size}"
            )));
        }
    }
    if size == 0 {
        return Err(PyValueError::new_err(
            "record offsets: the record size is 0",
        ));
    }
    Ok((size, found))
}
