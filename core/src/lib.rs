//! tradeplane's compiled hot path, imported as `tradeplane_services._wire`: the wire codec
//! (encode, decode, the stream decoder) behind the API of `tradeplane_services.protocol`, the latency
//! histograms (histogram.rs), the venue's matching book (matching.rs), the pre-trade risk book (risk.rs),
//! the order service's order book (orders.rs), the simulated feed's ticks (feed.rs) and the shared-memory
//! rings of co-located services (ring.rs).

mod feed;
mod histogram;
mod matching;
mod named_tuple;
mod orders;
mod record;
mod ring;
mod risk;
#[cfg(test)]
mod steady_state;
pub mod wire;

use std::collections::HashMap;
use std::sync::OnceLock;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyFrozenSet, PyList, PyTuple, PyType};

use wire::{Code, Layout, Value, WireError, HEADER_SIZE, MAX_FRAME_SIZE};

/// What a field must hold, callable from Python (True: accepted) and checked by the decoder.
#[pyclass(frozen, module = "tradeplane_services._wire")]
struct Rule {
    rule: wire::Rule,
    /// An enum rule's members (None for other rules), for those who draw valid values.
    #[pyo3(get)]
    members: Option<Py<PyFrozenSet>>,
}

#[pymethods]
impl Rule {
    #[staticmethod]
    fn one_of(py: Python<'_>, members: Vec<i128>) -> PyResult<Self> {
        let frozen = PyFrozenSet::new(py, &members)?.unbind();
        Ok(Rule {
            rule: wire::Rule::OneOf(members),
            members: Some(frozen),
        })
    }

    #[staticmethod]
    fn above(bound: i128) -> Self {
        Rule {
            rule: wire::Rule::Above(bound),
            members: None,
        }
    }

    /// Text of 1 to `longest` characters, the first from `first` and the others from `rest`, NUL-padded.
    #[staticmethod]
    fn padded_text(first: &[u8], rest: &[u8], longest: usize) -> Self {
        Rule {
            rule: wire::Rule::padded_text(first, rest, longest),
            members: None,
        }
    }

    fn __call__(&self, value: &Bound<'_, PyAny>) -> bool {
        if let Ok(raw) = value.cast::<PyBytes>() {
            return self.rule.accepts(&Value::Bytes(raw.as_bytes()));
        }
        match value.extract::<i128>() {
            Ok(number) => self.rule.accepts(&Value::Int(number)),
            Err(_) => false,
        }
    }
}

/// The layouts and the Python classes a decoder builds; installed once by `protocol.py`.
#[pyclass(frozen, module = "tradeplane_services._wire")]
struct Codec {
    wire: wire::Codec,
    classes: Vec<Option<Py<PyType>>>,
    type_ids: HashMap<usize, u8>,
    protocol_error: Py<PyAny>,
    reason: Py<PyAny>,
    frame_error: Py<PyAny>,
    frame_run: Py<PyAny>,
    decode_ticks: Py<PyAny>,
    tuple_new: Py<PyAny>,
}

static CODEC: OnceLock<Py<Codec>> = OnceLock::new();

fn codec(py: Python<'_>) -> PyResult<&'static Codec> {
    let _ = py;
    CODEC.get().map(|codec| codec.get()).ok_or_else(|| {
        PyRuntimeError::new_err(
            "the wire codec is not installed (import tradeplane_services.protocol)",
        )
    })
}

/// A bytes-like object's contents, for the duration of `body` (bytes without copying; anything with
/// the buffer protocol through one contiguous view).
fn with_bytes<R>(data: &Bound<'_, PyAny>, body: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
    if let Ok(raw) = data.cast::<PyBytes>() {
        return body(raw.as_bytes());
    }
    let mut view = std::mem::MaybeUninit::<pyo3::ffi::Py_buffer>::uninit();
    // SAFETY: PyObject_GetBuffer fills `view` on success; it is released below before returning.
    unsafe {
        if pyo3::ffi::PyObject_GetBuffer(
            data.as_ptr(),
            view.as_mut_ptr(),
            pyo3::ffi::PyBUF_C_CONTIGUOUS,
        ) != 0
        {
            return Err(PyErr::fetch(data.py()));
        }
        let mut view = view.assume_init();
        let slice = if view.len == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(view.buf as *const u8, view.len as usize)
        };
        let result = body(slice);
        pyo3::ffi::PyBuffer_Release(&mut view);
        result
    }
}

impl Codec {
    fn error(&self, py: Python<'_>, error: WireError) -> PyErr {
        match self.error_object(py, error) {
            Ok(value) => PyErr::from_value(value),
            Err(failure) => failure,
        }
    }

    fn error_object<'py>(&self, py: Python<'py>, error: WireError) -> PyResult<Bound<'py, PyAny>> {
        let reason = self.reason.bind(py).call1((error.reason,))?;
        self.protocol_error
            .bind(py)
            .call1((reason, error.offset, error.detail))
    }

    /// The message of `frame` (one whole frame, header checked), a ProtocolError otherwise.
    /// `source` and `start` locate the frame in a Python buffer, for the zero-copy trailing records.
    fn decode_checked<'py>(
        &self,
        py: Python<'py>,
        frame: &[u8],
        type_id: u8,
        source: Option<(&Bound<'py, PyAny>, usize)>,
    ) -> Result<Bound<'py, PyAny>, WireError> {
        let layout = self.wire.check_body(frame, type_id)?;
        self.build(py, layout, frame, source)
            .map_err(|error| built_wrong(layout, error))
    }

    fn build<'py>(
        &self,
        py: Python<'py>,
        layout: &Layout,
        frame: &[u8],
        source: Option<(&Bound<'py, PyAny>, usize)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut values: Vec<Bound<'py, PyAny>> = Vec::with_capacity(layout.fields.len() + 1);
        for field in &layout.fields {
            let raw = &frame[field.offset..field.offset + field.code.size()];
            values.push(match field.code {
                Code::Bytes(_) => PyBytes::new(py, raw).into_any(),
                Code::U64 => u64::from_le_bytes(raw.try_into().unwrap())
                    .into_pyobject(py)?
                    .into_any(),
                Code::I64 => i64::from_le_bytes(raw.try_into().unwrap())
                    .into_pyobject(py)?
                    .into_any(),
                code => (code.read_int(raw) as i64).into_pyobject(py)?.into_any(),
            });
        }
        if layout.record_size > 0 {
            let Value::Int(count) = layout.value(0, frame) else {
                unreachable!("a record count is an integer")
            };
            let count = count as usize;
            let ticks = match source {
                Some((buffer, start)) => {
                    self.decode_ticks.bind(py).call1((buffer, count, start))?
                }
                None => self
                    .decode_ticks
                    .bind(py)
                    .call1((PyBytes::new(py, frame), count, 0))?,
            };
            values.push(ticks);
        }
        let class = self.classes[layout.type_id as usize]
            .as_ref()
            .expect("a layout has its class");
        self.tuple_new
            .bind(py)
            .call1((class.bind(py), PyTuple::new(py, values)?))
    }

    fn layout_of(&self, message: &Bound<'_, PyAny>) -> PyResult<&Layout> {
        let key = message.get_type().as_ptr() as usize;
        self.type_ids
            .get(&key)
            .and_then(|&type_id| self.wire.layouts[type_id as usize].as_ref())
            .ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "{} is not a wire message",
                    message
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })
    }
}

fn built_wrong(layout: &Layout, error: PyErr) -> WireError {
    WireError::new(
        wire::MALFORMED_FRAME,
        0,
        format!("{} could not be built: {error}", layout.name),
    )
}

/// A field's integer as `T`; ValueError naming the field when it is not an integer or out of range.
fn field_integer<'py, T: for<'a> FromPyObject<'a, 'py> + Into<i128>>(
    layout: &Layout,
    index: usize,
    item: &Bound<'py, PyAny>,
) -> PyResult<T> {
    match item.extract::<T>() {
        Ok(number) => Ok(number),
        Err(_) => match item.extract::<i128>() {
            Ok(number) => Err(out_of_range(layout, index, number)),
            Err(_) => {
                let field = &layout.fields[index];
                Err(PyValueError::new_err(format!(
                    "{}.{}={}: expected an integer",
                    layout.name,
                    field.name,
                    repr(item)
                )))
            }
        },
    }
}

fn out_of_range(layout: &Layout, index: usize, number: i128) -> PyErr {
    let field = &layout.fields[index];
    let (low, high) = field.code.bounds().expect("an integer field");
    PyValueError::new_err(format!(
        "{}.{}={}: out of range {}..{}",
        layout.name, field.name, number, low, high
    ))
}

fn repr(item: &Bound<'_, PyAny>) -> String {
    item.repr()
        .map(|text| text.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

#[pymethods]
impl Codec {
    /// `layouts`: (type_id, class, field names, struct codes, record size, [(field index, rule,
    /// expected)], [(first, last)]) per message type.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        version: u8,
        layouts: Vec<(
            u8,
            Bound<'_, PyType>,
            Vec<String>,
            String,
            usize,
            Vec<(usize, Py<Rule>, String)>,
            Vec<(usize, usize)>,
        )>,
        protocol_error: Py<PyAny>,
        reason: Py<PyAny>,
        frame_error: Py<PyAny>,
        frame_run: Py<PyAny>,
        decode_ticks: Py<PyAny>,
    ) -> PyResult<Self> {
        let mut by_id = Vec::with_capacity(layouts.len());
        let mut classes: Vec<Option<Py<PyType>>> = (0..256).map(|_| None).collect();
        let mut type_ids = HashMap::new();
        for (type_id, class, names, format, record_size, checks, ordered) in layouts {
            let codes = wire::parse_codes(&format).map_err(PyValueError::new_err)?;
            let checks = checks
                .into_iter()
                .map(|(field, rule, expected)| wire::Check {
                    field,
                    rule: rule.get().rule.clone(),
                    expected,
                })
                .collect();
            let name = class.name()?.to_string();
            let layout = Layout::new(type_id, name, names, codes, record_size, checks, ordered)
                .map_err(PyValueError::new_err)?;
            by_id.push(layout);
            type_ids.insert(class.as_ptr() as usize, type_id);
            classes[type_id as usize] = Some(class.unbind());
        }
        let tuple_new = py.get_type::<PyTuple>().getattr("__new__")?.unbind();
        Ok(Codec {
            wire: wire::Codec::new(version, by_id).map_err(PyValueError::new_err)?,
            classes,
            type_ids,
            protocol_error,
            reason,
            frame_error,
            frame_run,
            decode_ticks,
            tuple_new,
        })
    }

    /// The layouts as text, for a decoder without Python (see wire::Codec::describe).
    fn describe(&self) -> String {
        self.wire.describe()
    }

    /// The frame of `message` with `sequence` in its header.
    #[pyo3(signature = (message, sequence = 0))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
        sequence: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let layout = self.layout_of(message)?;
        let values = message.cast::<PyTuple>()?;
        if values.len() < layout.fields.len() {
            return Err(PyValueError::new_err(format!(
                "{} has {} fields, not {}",
                layout.name,
                layout.fields.len(),
                values.len()
            )));
        }
        PyBytes::new_with(py, layout.size, |out| {
            wire::write_header(
                out,
                layout.size,
                layout.type_id,
                self.wire.version,
                sequence,
            );
            for (index, field) in layout.fields.iter().enumerate() {
                let item = values.get_borrowed_item(index)?;
                let text;
                let value = match field.code {
                    Code::Bytes(_) => {
                        text = item.cast::<PyBytes>().map_err(|_| {
                            PyTypeError::new_err(format!(
                                "{}.{}={}: expected bytes",
                                layout.name,
                                field.name,
                                repr(&item)
                            ))
                        })?;
                        Value::Bytes(text.as_bytes())
                    }
                    Code::U64 => Value::Int(field_integer::<u64>(layout, index, &item)?.into()),
                    _ => Value::Int(field_integer::<i64>(layout, index, &item)?.into()),
                };
                field
                    .write(&value, &mut out[field.offset..])
                    .map_err(|error| PyValueError::new_err(format!("{}.{error}", layout.name)))?;
            }
            Ok(())
        })
    }

    /// A market-data frame: the batch header of `layout_id` then `ticks`, the records' raw bytes.
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        layout_id: u8,
        ticks: &Bound<'py, PyAny>,
        count: usize,
        sequence: u64,
        flags: u8,
        channel: u8,
        now_ns: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let layout = self.wire.layouts[layout_id as usize]
            .as_ref()
            .filter(|layout| layout.record_size > 0)
            .ok_or_else(|| {
                PyValueError::new_err(format!("message type {layout_id} carries no records"))
            })?;
        let size = layout.size + count * layout.record_size;
        if size > MAX_FRAME_SIZE {
            return Err(PyValueError::new_err(format!(
                "{count} ticks make a {size}-byte frame; the limit is {MAX_FRAME_SIZE}"
            )));
        }
        with_bytes(ticks, |records| {
            if records.len() != count * layout.record_size {
                return Err(PyValueError::new_err(format!(
                    "{} bytes of records for {count} of {} bytes",
                    records.len(),
                    layout.record_size
                )));
            }
            let body = [
                count as i128,
                flags as i128,
                channel as i128,
                now_ns as i128,
            ];
            PyBytes::new_with(py, size, |out| {
                wire::write_header(out, size, layout.type_id, self.wire.version, sequence);
                for (field, value) in layout.fields.iter().zip(body) {
                    field
                        .write(&Value::Int(value), &mut out[field.offset..])
                        .map_err(PyValueError::new_err)?;
                }
                out[layout.size..].copy_from_slice(records);
                Ok(())
            })
        })
    }

    /// (message, sequence) of one complete frame, e.g. a datagram; anything else is a ProtocolError.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        frame: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, u64)> {
        with_bytes(frame, |raw| {
            let decoded = self
                .wire
                .decode(raw)
                .map_err(|error| self.error(py, error))?;
            let message = self
                .build(py, decoded.layout, raw, Some((frame, 0)))
                .map_err(|error| self.error(py, built_wrong(decoded.layout, error)))?;
            Ok((message, decoded.sequence))
        })
    }

    /// The message of a frame whose header was checked and whose `length` bytes are all present.
    fn decode_body<'py>(
        &self,
        py: Python<'py>,
        buffer: &Bound<'py, PyAny>,
        offset: usize,
        length: usize,
        type_id: u8,
    ) -> PyResult<Bound<'py, PyAny>> {
        with_bytes(buffer, |raw| {
            let frame = raw.get(offset..offset + length).ok_or_else(|| {
                self.error(
                    py,
                    WireError::new(
                        wire::TRUNCATED,
                        raw.len().saturating_sub(offset),
                        format!("the buffer ends before byte {}", offset + length),
                    ),
                )
            })?;
            self.decode_checked(py, frame, type_id, Some((buffer, offset)))
                .map_err(|error| self.error(py, error))
        })
    }
}

/// Splits a byte stream into frames: (message, sequence), FrameError, or FrameRun (see protocol.py).
#[pyclass(module = "tradeplane_services._wire")]
struct StreamDecoder {
    pending: Vec<u8>,
    /// A fixed-size type -> the shortest run of it worth handing over raw; replaceable between feeds.
    #[pyo3(get, set)]
    batch_types: Py<PyDict>,
    #[pyo3(get)]
    failed: bool,
}

#[pymethods]
impl StreamDecoder {
    #[new]
    #[pyo3(signature = (batch_types = None))]
    fn new(py: Python<'_>, batch_types: Option<Py<PyDict>>) -> Self {
        StreamDecoder {
            pending: Vec::new(),
            batch_types: batch_types.unwrap_or_else(|| PyDict::new(py).unbind()),
            failed: false,
        }
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.pending.len()
    }

    fn feed<'py>(
        &mut self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let items = PyList::empty(py);
        if self.failed {
            return Ok(items);
        }
        let codec = codec(py)?;
        let mut minimum_runs = [0usize; 256];
        for (type_id, minimum) in self.batch_types.bind(py).iter() {
            if let (Ok(type_id), Ok(minimum)) =
                (type_id.extract::<u8>(), minimum.extract::<usize>())
            {
                minimum_runs[type_id as usize] = minimum.max(1);
            }
        }
        let mut pending = std::mem::take(&mut self.pending);
        let consumed = if pending.is_empty() {
            let consumed = with_bytes(data, |raw| {
                self.split(py, codec, raw, Some(data), &minimum_runs, &items)
            })?;
            if !self.failed {
                with_bytes(data, |raw| {
                    pending.extend_from_slice(&raw[consumed..]);
                    Ok(())
                })?;
            }
            pending
        } else {
            with_bytes(data, |raw| {
                pending.extend_from_slice(raw);
                Ok(())
            })?;
            let consumed = self.split(py, codec, &pending, None, &minimum_runs, &items)?;
            if self.failed {
                Vec::new()
            } else {
                pending.split_off(consumed)
            }
        };
        self.pending = if self.failed { Vec::new() } else { consumed };
        Ok(items)
    }
}

impl StreamDecoder {
    /// Appends the items of `buffer` to `items`; returns how many bytes whole frames used.
    fn split<'py>(
        &mut self,
        py: Python<'py>,
        codec: &Codec,
        buffer: &[u8],
        source: Option<&Bound<'py, PyAny>>,
        minimum_runs: &[usize; 256],
        items: &Bound<'py, PyList>,
    ) -> PyResult<usize> {
        let mut position = 0;
        let end = buffer.len();
        while end - position >= HEADER_SIZE {
            let header = wire::read_header(&buffer[position..]);
            if header.length < HEADER_SIZE {
                let error = codec.error_object(py, wire::malformed_length(header.length))?;
                items.append(codec.frame_error.bind(py).call1((
                    error,
                    header.type_id,
                    header.sequence,
                    true,
                ))?)?;
                self.failed = true;
                return Ok(end);
            }
            if end - position < header.length {
                break;
            }
            let minimum_run = minimum_runs[header.type_id as usize];
            if minimum_run > 0 && header.version == codec.wire.version {
                let fixed = codec.wire.layouts[header.type_id as usize]
                    .as_ref()
                    .is_some_and(|layout| layout.record_size == 0 && layout.size == header.length);
                let run_end = if fixed {
                    wire::run_end(buffer, position, header.length)
                } else {
                    position
                };
                let count = (run_end - position) / header.length;
                if count >= minimum_run {
                    let data = PyBytes::new(py, &buffer[position..run_end]);
                    items.append(codec.frame_run.bind(py).call1((
                        header.type_id,
                        data,
                        count,
                    ))?)?;
                    position = run_end;
                    continue;
                }
            }
            let frame = &buffer[position..position + header.length];
            let decoded = if header.version != codec.wire.version {
                Err(wire::wrong_version(header.version, codec.wire.version))
            } else {
                codec.decode_checked(
                    py,
                    frame,
                    header.type_id,
                    source.map(|data| (data, position)),
                )
            };
            match decoded {
                Ok(message) => items.append((message, header.sequence))?,
                Err(error) => {
                    let error = codec.error_object(py, error)?;
                    items.append(codec.frame_error.bind(py).call1((
                        error,
                        header.type_id,
                        header.sequence,
                        false,
                    ))?)?
                }
            }
            position += header.length;
        }
        Ok(position)
    }
}

impl Codec {
    /// The layout of the message class `name` (as protocol.py names it).
    pub(crate) fn layout_named(&self, name: &str) -> PyResult<&Layout> {
        self.wire
            .layouts
            .iter()
            .flatten()
            .find(|layout| layout.name == name)
            .ok_or_else(|| PyTypeError::new_err(format!("the wire codec has no {name} layout")))
    }
}

/// Frames the Rust core builds back to back for one destination, with sequence 0: the connection that
/// sends them numbers them (`number_frames`).
pub(crate) struct FrameWriter {
    codec: &'static Codec,
    scratch: Vec<u8>,
}

impl FrameWriter {
    pub(crate) fn new(py: Python<'_>) -> PyResult<Self> {
        Ok(FrameWriter {
            codec: codec(py)?,
            scratch: Vec::new(),
        })
    }

    pub(crate) fn codec(&self) -> &'static Codec {
        self.codec
    }

    pub(crate) fn layout(&self, type_id: u8) -> &'static Layout {
        self.codec.wire.layouts[type_id as usize]
            .as_ref()
            .expect("a type id taken from the installed codec")
    }

    /// Appends the frame of `values` (one per field of `type_id`'s layout) to `out`.
    pub(crate) fn append(
        &mut self,
        type_id: u8,
        values: &[Value],
        out: &mut Vec<u8>,
    ) -> PyResult<()> {
        self.layout(type_id)
            .encode_into(self.codec.wire.version, 0, values, &[], &mut self.scratch)
            .map_err(PyValueError::new_err)?;
        out.extend_from_slice(&self.scratch);
        Ok(())
    }

    /// Whether every frame of `data` (whole frames of `type_id`) keeps its layout's rules.
    pub(crate) fn all_valid(&self, type_id: u8, data: &[u8]) -> PyResult<bool> {
        let layout = self.layout(type_id);
        if data.len() % layout.size != 0 {
            return Err(PyValueError::new_err(format!(
                "a run of {} bytes is not whole {}-byte {} frames",
                data.len(),
                layout.size,
                layout.name
            )));
        }
        Ok(data
            .chunks_exact(layout.size)
            .all(|frame| layout.validate(frame).is_ok()))
    }
}

/// Numbers the whole frames in `buffer` from `first_sequence` on, in place; how many there were.
#[pyfunction]
fn number_frames(buffer: &Bound<'_, PyByteArray>, first_sequence: u64) -> PyResult<u64> {
    // SAFETY: the bytes are not resized while this holds the slice, and no Python code runs meanwhile.
    let frames = unsafe { buffer.as_bytes_mut() };
    let mut position = 0;
    let mut sequence = first_sequence;
    while frames.len() - position >= HEADER_SIZE {
        let header = wire::read_header(&frames[position..]);
        if header.length < HEADER_SIZE || frames.len() - position < header.length {
            return Err(PyValueError::new_err(format!(
                "frame at byte {position}: its length {} does not fit the buffer",
                header.length
            )));
        }
        wire::write_header(
            &mut frames[position..],
            header.length,
            header.type_id,
            header.version,
            sequence,
        );
        sequence += 1;
        position += header.length;
    }
    if position != frames.len() {
        return Err(PyValueError::new_err(format!(
            "{} bytes after the last whole frame",
            frames.len() - position
        )));
    }
    Ok(sequence - first_sequence)
}

/// Makes `codec` the one every StreamDecoder uses; once per process (protocol.py does it on import).
#[pyfunction]
fn install(codec: Py<Codec>) -> PyResult<()> {
    CODEC
        .set(codec)
        .map_err(|_| PyRuntimeError::new_err("the wire codec is already installed"))
}

#[pymodule]
fn _wire(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Rule>()?;
    module.add_class::<Codec>()?;
    module.add_class::<StreamDecoder>()?;
    module.add_class::<histogram::LatencyHistogram>()?;
    module.add_class::<matching::MatchingBook>()?;
    module.add_class::<risk::RiskBook>()?;
    module.add_class::<feed::TickWalk>()?;
    orders::register(module)?;
    module.add_function(wrap_pyfunction!(install, module)?)?;
    module.add_function(wrap_pyfunction!(number_frames, module)?)?;
    module.add("HEADER_SIZE", HEADER_SIZE)?;
    module.add("MAX_FRAME_SIZE", MAX_FRAME_SIZE)?;
    ring::register(module)?;
    Ok(())
}
