//! Builds instances of a Python NamedTuple class without a call through `tuple.__new__`: the books
//! return their events and messages as the protocol's NamedTuples, one allocation each.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};

pub(crate) struct NamedTupleClass {
    class: Py<PyType>,
}

impl NamedTupleClass {
    /// `class` must be a tuple subclass with no storage of its own (a NamedTuple), so that an instance
    /// can be allocated as the class and filled like a tuple; `what` names it in the error otherwise.
    pub(crate) fn new(py: Python<'_>, class: Py<PyType>, what: &str) -> PyResult<Self> {
        let bound = class.bind(py);
        // SAFETY: reading the size fields of a live type object.
        let same_layout = unsafe {
            (*bound.as_type_ptr()).tp_basicsize == pyo3::ffi::PyTuple_Type.tp_basicsize
                && (*bound.as_type_ptr()).tp_itemsize == pyo3::ffi::PyTuple_Type.tp_itemsize
        };
        if !bound.is_subclass_of::<PyTuple>()? || !same_layout {
            return Err(PyTypeError::new_err(format!(
                "{what} must be a NamedTuple, not {}",
                bound.name()?
            )));
        }
        Ok(NamedTupleClass { class })
    }

    /// An instance holding `fields`, which must be as many as the class has.
    pub(crate) fn build<'py>(
        &self,
        py: Python<'py>,
        fields: impl IntoIterator<Item = Bound<'py, PyAny>, IntoIter: ExactSizeIterator>,
    ) -> PyResult<Py<PyAny>> {
        let fields = fields.into_iter();
        let count = fields.len();
        // SAFETY: the class has a tuple's layout (checked in `new`); every item is set before the
        // instance is returned, and nothing runs Python code in between.
        unsafe {
            let class = self.class.as_ptr() as *mut pyo3::ffi::PyTypeObject;
            let alloc = (*class).tp_alloc.unwrap_or(pyo3::ffi::PyType_GenericAlloc);
            let instance = alloc(class, count as pyo3::ffi::Py_ssize_t);
            if instance.is_null() {
                return Err(PyErr::fetch(py));
            }
            for (index, field) in fields.enumerate() {
                pyo3::ffi::PyTuple_SET_ITEM(
                    instance,
                    index as pyo3::ffi::Py_ssize_t,
                    field.into_ptr(),
                );
            }
            Ok(Py::from_owned_ptr(py, instance))
        }
    }
}
