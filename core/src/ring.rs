//! A single-producer single-consumer ring of variable-length records in a shared file mapping, for
//! services in one pod (or on one node) to exchange wire frames without a syscall per message.
//!
//! The file is a 4 KiB header and a power-of-two data area. The producer owns `tail`, the consumer owns
//! `head`, each on its own cache lines; a record is published by a release store of `tail` and freed by
//! a release store of `head`, so a process killed at any point leaves either the whole record or none
//! of it visible, and the producer never writes over a record the consumer has not freed (a full ring
//! is backpressure: the write says so and writes nothing).
//!
//! Waiting spins briefly, then parks: the consumer raises `parked` and sleeps on the ring's doorbell, a
//! FIFO beside the file (`<path>.bell`); a producer rings it only when it finds `parked` raised, so a
//! busy ring costs no syscall and an idle one no core. An event loop polls the doorbell's descriptor.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub const MAGIC: u64 = u64::from_le_bytes(*b"TPLRING\0");
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 4096;
/// Bytes before each record's payload: its length (u32) and kind (u32).
pub const RECORD_HEADER: usize = 8;
pub const MIN_CAPACITY: u64 = 4096;
pub const MAX_CAPACITY: u64 = 1 << 34;

/// Record kinds; `WRAP` pads the end of the data area so that no record straddles it.
pub const KIND_DATA: u32 = 0;
pub const KIND_WRAP: u32 = u32::MAX;
/// Kinds above this are the ring's own; callers may use 0..=MAX_USER_KIND.
pub const MAX_USER_KIND: u32 = 0xFFFF;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 8;
const HEADER_SIZE_AT: usize = 12;
const CAPACITY_AT: usize = 16;
// Each shared counter on its own 128 bytes: two cache lines, as adjacent-line prefetch pairs them.
const TAIL_AT: usize = 128;
const HEAD_AT: usize = 256;
const PARKED_AT: usize = 384;

const SPIN: Duration = Duration::from_micros(20);
const WRITER_SLEEP_FIRST: Duration = Duration::from_micros(50);
const WRITER_SLEEP_MOST: Duration = Duration::from_millis(1);

#[derive(Debug, PartialEq, Eq)]
pub enum RingError {
    /// A header or record field that does not hold what it must: the field, what was found, what was wanted.
    Field {
        field: &'static str,
        detail: String,
    },
    TooLarge {
        length: usize,
        largest: usize,
    },
    Io {
        what: String,
        error: String,
    },
}

impl std::fmt::Display for RingError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingError::Field { field, detail } => write!(formatter, "ring {field}: {detail}"),
            RingError::TooLarge { length, largest } => write!(
                formatter,
                "a record of {length} bytes does not fit this ring (largest {largest})"
            ),
            RingError::Io { what, error } => write!(formatter, "{what}: {error}"),
        }
    }
}

fn field(field: &'static str, detail: String) -> RingError {
    RingError::Field { field, detail }
}

fn io(what: String, error: std::io::Error) -> RingError {
    RingError::Io {
        what,
        error: error.to_string(),
    }
}

fn padded(length: usize) -> usize {
    (length + 7) & !7
}

/// The doorbell beside a ring file.
pub fn bell_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".bell");
    PathBuf::from(name)
}

struct Mapping {
    base: *mut u8,
    length: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base and length are those mmap returned; nothing borrows the mapping past the Ring.
        unsafe {
            libc::munmap(self.base.cast(), self.length);
        }
    }
}

/// One end of a ring (which end is the caller's discipline: one process writes, one reads).
pub struct Ring {
    map: Mapping,
    capacity: u64,
    bell: OwnedFd,
    file_id: (u64, u64),
    path: PathBuf,
}

// SAFETY: the mapping is shared memory accessed through atomics and the SPSC protocol below.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

fn map_file(file: &File, length: usize, what: &Path) -> Result<Mapping, RingError> {
    // SAFETY: a fresh shared mapping of an open file; checked for MAP_FAILED.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io(
            format!("mapping {}", what.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(Mapping {
        base: base.cast(),
        length,
    })
}

fn open_bell(path: &Path) -> Result<OwnedFd, RingError> {
    let bell = bell_path(path);
    let name = CString::new(bell.as_os_str().as_encoded_bytes())
        .map_err(|_| field("path", format!("{} holds a NUL byte", bell.display())))?;
    // Read-write: a FIFO opened so never blocks on open and never signals EPIPE when the other end is gone.
    // SAFETY: a NUL-terminated path; the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io(
            format!("opening the doorbell {}", bell.display()),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn make_bell(path: &Path) -> Result<(), RingError> {
    let bell = bell_path(path);
    let name = CString::new(bell.as_os_str().as_encoded_bytes())
        .map_err(|_| field("path", format!("{} holds a NUL byte", bell.display())))?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::mkfifo(name.as_ptr(), 0o600) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(io(
                format!("creating the doorbell {}", bell.display()),
                error,
            ));
        }
    }
    Ok(())
}

impl Ring {
    /// A new empty ring at `path` (replacing any ring there: whoever mapped the old one keeps an
    /// orphaned copy, never a half-initialised one). On hugetlbfs the file grows to whole huge pages.
    pub fn create(path: &Path, capacity: u64) -> Result<Ring, RingError> {
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(field(
                "capacity",
                format!("{capacity} is not a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}"),
            ));
        }
        let directory = path.parent().unwrap_or(Path::new("."));
        let block = fs::metadata(directory)
            .map_err(|error| io(format!("reading {}", directory.display()), error))?
            .blksize()
            .max(4096);
        let length = (HEADER_SIZE as u64 + capacity).div_ceil(block) * block;
        let mut staging = path.as_os_str().to_owned();
        staging.push(format!(".new-{}", std::process::id()));
        let staging = PathBuf::from(staging);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&staging)
            .map_err(|error| io(format!("creating {}", staging.display()), error))?;
        file.set_len(length).map_err(|error| {
            io(
                format!("sizing {} to {length} bytes", staging.display()),
                error,
            )
        })?;
        let map = map_file(&file, length as usize, &staging)?;
        // SAFETY: the mapping is at least HEADER_SIZE long and nobody else has it yet.
        unsafe {
            ptr::write(map.base.add(VERSION_AT).cast::<u32>(), VERSION);
            ptr::write(
                map.base.add(HEADER_SIZE_AT).cast::<u32>(),
                HEADER_SIZE as u32,
            );
            ptr::write(map.base.add(CAPACITY_AT).cast::<u64>(), capacity);
            (*map.base.add(MAGIC_AT).cast::<AtomicU64>()).store(MAGIC, Ordering::Release);
        }
        make_bell(path)?;
        fs::rename(&staging, path).map_err(|error| {
            let _ = fs::remove_file(&staging);
            io(format!("publishing {}", path.display()), error)
        })?;
        drop(map);
        Ring::open(path)
    }

    /// The ring at `path`, its header checked: a wrong or damaged file is an error naming the field.
    pub fn open(path: &Path) -> Result<Ring, RingError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|error| io(format!("opening {}", path.display()), error))?;
        let metadata = file
            .metadata()
            .map_err(|error| io(format!("reading {}", path.display()), error))?;
        let length = metadata.len() as usize;
        if length < HEADER_SIZE {
            return Err(field(
                "size",
                format!("{length} bytes, shorter than the {HEADER_SIZE}-byte header"),
            ));
        }
        let map = map_file(&file, length, path)?;
        // SAFETY: the mapping holds at least the header.
        let (magic, version, header_size, capacity) = unsafe {
            (
                (*map.base.add(MAGIC_AT).cast::<AtomicU64>()).load(Ordering::Acquire),
                ptr::read(map.base.add(VERSION_AT).cast::<u32>()),
                ptr::read(map.base.add(HEADER_SIZE_AT).cast::<u32>()),
                ptr::read(map.base.add(CAPACITY_AT).cast::<u64>()),
            )
        };
        if magic != MAGIC {
            return Err(field(
                "magic",
                format!("{magic:#018x}, expected {MAGIC:#018x}: not a tradeplane ring"),
            ));
        }
        if version != VERSION {
            return Err(field(
                "version",
                format!("{version}, this build reads version {VERSION}"),
            ));
        }
        if header_size as usize != HEADER_SIZE {
            return Err(field(
                "header_size",
                format!("{header_size}, expected {HEADER_SIZE}"),
            ));
        }
        if !capacity.is_power_of_two()
            || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
            || HEADER_SIZE as u64 + capacity > length as u64
        {
            return Err(field(
                "capacity",
                format!(
                    "{capacity}: not a power of two from {MIN_CAPACITY} to {MAX_CAPACITY} that fits the \
                     {length}-byte file"
                ),
            ));
        }
        let ring = Ring {
            map,
            capacity,
            bell: open_bell(path)?,
            file_id: (metadata.dev(), metadata.ino()),
            path: path.to_path_buf(),
        };
        let (head, tail) = (
            ring.head().load(Ordering::Acquire),
            ring.tail().load(Ordering::Acquire),
        );
        if tail < head || tail - head > capacity {
            return Err(field(
                "tail",
                format!("{tail} with head {head}: more than the capacity {capacity} apart"),
            ));
        }
        Ok(ring)
    }

    fn counter(&self, at: usize) -> &AtomicU64 {
        // SAFETY: at is inside the header, 8-aligned; the mapping lives as long as self.
        unsafe { &*self.map.base.add(at).cast::<AtomicU64>() }
    }

    fn tail(&self) -> &AtomicU64 {
        self.counter(TAIL_AT)
    }

    fn head(&self) -> &AtomicU64 {
        self.counter(HEAD_AT)
    }

    fn parked(&self) -> &AtomicU32 {
        // SAFETY: as counter().
        unsafe { &*self.map.base.add(PARKED_AT).cast::<AtomicU32>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area follows the header inside the mapping.
        unsafe { self.map.base.add(HEADER_SIZE) }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The largest payload one record can carry: half the ring, so a record always fits after a wrap.
    pub fn largest(&self) -> usize {
        self.capacity as usize / 2 - RECORD_HEADER
    }

    /// Bytes written and not yet freed by the consumer.
    pub fn pending(&self) -> u64 {
        self.tail().load(Ordering::Acquire) - self.head().load(Ordering::Acquire)
    }

    /// (device, inode) of the file mapped: a ring created again at the same path is another file.
    pub fn file_id(&self) -> (u64, u64) {
        self.file_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bell_fd(&self) -> RawFd {
        self.bell.as_raw_fd()
    }

    /// Producer: append one record, or return false (writing nothing) when the ring lacks room for it.
    pub fn try_write(&self, kind: u32, payload: &[u8]) -> Result<bool, RingError> {
        if payload.len() > self.largest() {
            return Err(RingError::TooLarge {
                length: payload.len(),
                largest: self.largest(),
            });
        }
        let need = (RECORD_HEADER + padded(payload.len())) as u64;
        let tail = self.tail().load(Ordering::Relaxed);
        let at = tail & (self.capacity - 1);
        let to_end = self.capacity - at;
        let skip = if to_end < need { to_end } else { 0 };
        let head = self.head().load(Ordering::Acquire);
        if tail + skip + need - head > self.capacity {
            return Ok(false);
        }
        let data = self.data();
        // SAFETY: [tail, tail + skip + need) is free (checked against head) and inside the data area.
        unsafe {
            if skip > 0 {
                ptr::write(data.add(at as usize).cast::<[u32; 2]>(), [0, KIND_WRAP]);
            }
            let at = ((tail + skip) & (self.capacity - 1)) as usize;
            ptr::write(
                data.add(at).cast::<[u32; 2]>(),
                [payload.len() as u32, kind],
            );
            ptr::copy_nonoverlapping(
                payload.as_ptr(),
                data.add(at + RECORD_HEADER),
                payload.len(),
            );
        }
        self.tail().store(tail + skip + need, Ordering::Release);
        self.wake_consumer();
        Ok(true)
    }

    /// Ring the doorbell if the consumer parked (the fence pairs with the one in `park`: either the
    /// consumer sees the new tail or this sees its flag).
    fn wake_consumer(&self) {
        fence(Ordering::SeqCst);
        if self.parked().load(Ordering::Relaxed) != 0
            && self.parked().swap(0, Ordering::SeqCst) != 0
        {
            // A full FIFO (EAGAIN) already holds a wake-up: nothing to add.
            // SAFETY: one byte from a live buffer to our own descriptor.
            unsafe {
                libc::write(self.bell.as_raw_fd(), [1u8].as_ptr().cast(), 1);
            }
        }
    }

    /// Producer: append one record, waiting up to `timeout` for room (spinning, then sleeping in
    /// growing steps). False when the consumer freed too little in time.
    pub fn write_waiting(
        &self,
        kind: u32,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<bool, RingError> {
        let started = Instant::now();
        let mut sleep = WRITER_SLEEP_FIRST;
        loop {
            if self.try_write(kind, payload)? {
                return Ok(true);
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Ok(false);
            }
            if waited < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(sleep.min(timeout - waited));
                sleep = (sleep * 2).min(WRITER_SLEEP_MOST);
            }
        }
    }

    /// Consumer: the next record's kind and payload, handed to `take`, then freed; None when empty.
    pub fn try_read<R>(&self, take: impl FnOnce(u32, &[u8]) -> R) -> Result<Option<R>, RingError> {
        let mut head = self.head().load(Ordering::Relaxed);
        let tail = self.tail().load(Ordering::Acquire);
        loop {
            if head == tail {
                return Ok(None);
            }
            let at = (head & (self.capacity - 1)) as usize;
            // SAFETY: [head, tail) was published by the producer's release store of tail.
            let [length, kind] = unsafe { ptr::read(self.data().add(at).cast::<[u32; 2]>()) };
            if kind == KIND_WRAP {
                head += self.capacity - at as u64;
                self.head().store(head, Ordering::Release);
                continue;
            }
            let need = (RECORD_HEADER + padded(length as usize)) as u64;
            if length as usize > self.largest() || head + need > tail {
                return Err(field(
                    "record length",
                    format!(
                        "{length} at position {head}: past the {} bytes written",
                        tail - head
                    ),
                ));
            }
            if kind > MAX_USER_KIND {
                return Err(field("record kind", format!("{kind} at position {head}")));
            }
            // SAFETY: the payload lies inside the published range.
            let payload = unsafe {
                std::slice::from_raw_parts(self.data().add(at + RECORD_HEADER), length as usize)
            };
            let taken = take(kind, payload);
            // Freed only once taken: a consumer killed before this line reads the record again.
            self.head().store(head + need, Ordering::Release);
            return Ok(Some(taken));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.head().load(Ordering::Relaxed) == self.tail().load(Ordering::Acquire)
    }

    /// Consumer: raise the parked flag unless a record is already waiting; true when parked (the next
    /// write rings the doorbell), false when there is something to read.
    pub fn park(&self) -> bool {
        self.parked().store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.is_empty() {
            return true;
        }
        self.parked().store(0, Ordering::Relaxed);
        false
    }

    /// Consumer: empty the doorbell of the wake-ups it holds.
    pub fn clear_bell(&self) {
        let mut sink = [0u8; 64];
        // SAFETY: reads into a live stack buffer from our own non-blocking descriptor.
        while unsafe { libc::read(self.bell.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) }
            == sink.len() as isize
        {}
    }

    /// Consumer: wait up to `timeout` for a record: spin briefly, then park on the doorbell.
    /// True when one is there.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < SPIN.min(timeout) {
            if !self.is_empty() {
                return true;
            }
            std::hint::spin_loop();
        }
        loop {
            if !self.park() {
                return true;
            }
            let waited = started.elapsed();
            if waited >= timeout {
                self.parked().store(0, Ordering::Relaxed);
                return !self.is_empty();
            }
            let left = timeout - waited;
            let limit = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            let mut poll = libc::pollfd {
                fd: self.bell.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd and a live timespec.
            unsafe {
                libc::ppoll(&mut poll, 1, &limit, ptr::null());
            }
            self.clear_bell();
            if !self.is_empty() {
                self.parked().store(0, Ordering::Relaxed);
                return true;
            }
        }
    }
}

/// The ring to Python, as `tradeplane_services._wire.Ring`: waits release the GIL.
#[pyclass(name = "Ring", frozen, module = "tradeplane_services._wire")]
struct PyRing {
    ring: Ring,
}

mod python_errors {
    pyo3::create_exception!(
        tradeplane_services._wire,
        RingError,
        pyo3::exceptions::PyValueError,
        "A ring file or record that is not what it must be; the message names the field."
    );
}

fn to_python(error: RingError) -> PyErr {
    match error {
        RingError::Io { .. } => PyOSError::new_err(error.to_string()),
        _ => python_errors::RingError::new_err(error.to_string()),
    }
}

fn timeout_of(seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("timeout {seconds}: expected seconds >= 0")))
}

fn user_kind(kind: u32) -> PyResult<u32> {
    if kind > MAX_USER_KIND {
        return Err(PyValueError::new_err(format!(
            "kind {kind}: expected 0 to {MAX_USER_KIND}"
        )));
    }
    Ok(kind)
}

#[pymethods]
impl PyRing {
    #[staticmethod]
    fn create(path: PathBuf, capacity: u64) -> PyResult<Self> {
        Ring::create(&path, capacity)
            .map(|ring| PyRing { ring })
            .map_err(to_python)
    }

    #[staticmethod]
    fn open(path: PathBuf) -> PyResult<Self> {
        Ring::open(&path)
            .map(|ring| PyRing { ring })
            .map_err(to_python)
    }

    #[getter]
    fn capacity(&self) -> u64 {
        self.ring.capacity()
    }

    #[getter]
    fn largest(&self) -> usize {
        self.ring.largest()
    }

    #[getter]
    fn pending(&self) -> u64 {
        self.ring.pending()
    }

    #[getter]
    fn file_id(&self) -> (u64, u64) {
        self.ring.file_id()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.ring.path().to_path_buf()
    }

    #[getter]
    fn bell_fileno(&self) -> i32 {
        self.ring.bell_fd()
    }

    /// Append a record; False (nothing written) when the ring lacks room.
    #[pyo3(signature = (data, kind = KIND_DATA))]
    fn write(&self, data: &[u8], kind: u32) -> PyResult<bool> {
        self.ring
            .try_write(user_kind(kind)?, data)
            .map_err(to_python)
    }

    /// Append a record, waiting up to `timeout` seconds for room (without the GIL).
    #[pyo3(signature = (data, timeout, kind = KIND_DATA))]
    fn write_waiting(
        &self,
        py: Python<'_>,
        data: &[u8],
        timeout: f64,
        kind: u32,
    ) -> PyResult<bool> {
        let (kind, timeout) = (user_kind(kind)?, timeout_of(timeout)?);
        py.detach(|| self.ring.write_waiting(kind, data, timeout))
            .map_err(to_python)
    }

    /// The next record as (kind, payload), None when the ring is empty.
    fn read<'py>(&self, py: Python<'py>) -> PyResult<Option<(u32, Bound<'py, PyBytes>)>> {
        self.ring
            .try_read(|kind, payload| (kind, PyBytes::new(py, payload)))
            .map_err(to_python)
    }

    /// The next record, waiting up to `timeout` seconds for one (without the GIL).
    fn read_waiting<'py>(
        &self,
        py: Python<'py>,
        timeout: f64,
    ) -> PyResult<Option<(u32, Bound<'py, PyBytes>)>> {
        let timeout = timeout_of(timeout)?;
        if !py.detach(|| self.ring.wait_readable(timeout)) {
            return Ok(None);
        }
        self.read(py)
    }

    /// Everything waiting (at most a ring's worth), as (kind, payload) with neighbouring data records
    /// joined into one payload: what an event loop hands to a stream decoder.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Vec<(u32, Bound<'py, PyBytes>)>> {
        let mut items = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        let mut budget = self.ring.capacity() as usize;
        while budget > 0 {
            let taken = self
                .ring
                .try_read(|kind, payload| {
                    budget = budget.saturating_sub(payload.len() + RECORD_HEADER);
                    if kind == KIND_DATA {
                        data.extend_from_slice(payload);
                        None
                    } else {
                        Some((kind, payload.to_vec()))
                    }
                })
                .map_err(to_python)?;
            match taken {
                None => break,
                Some(None) => {}
                Some(Some((kind, payload))) => {
                    if !data.is_empty() {
                        items.push((KIND_DATA, PyBytes::new(py, &data)));
                        data.clear();
                    }
                    items.push((kind, PyBytes::new(py, &payload)));
                }
            }
        }
        if !data.is_empty() {
            items.push((KIND_DATA, PyBytes::new(py, &data)));
        }
        Ok(items)
    }

    /// Wait up to `timeout` seconds for a record (spin, then park), without the GIL.
    fn wait_readable(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = timeout_of(timeout)?;
        Ok(py.detach(|| self.ring.wait_readable(timeout)))
    }

    /// Ask the next write to ring the doorbell; False when a record is already waiting.
    fn park(&self) -> bool {
        self.ring.park()
    }

    fn clear_bell(&self) {
        self.ring.clear_bell()
    }
}

/// Adds the ring's class, error and constants to the extension module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyRing>()?;
    module.add(
        "RingError",
        module.py().get_type::<python_errors::RingError>(),
    )?;
    module.add("RING_MIN_CAPACITY", MIN_CAPACITY)?;
    module.add("RING_MAX_KIND", MAX_USER_KIND)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn scratch(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("tp-ring-test-{}", std::process::id()));
        fs::create_dir_all(&directory).unwrap();
        directory.join(name)
    }

    fn read_one(ring: &Ring) -> Option<(u32, Vec<u8>)> {
        ring.try_read(|kind, payload| (kind, payload.to_vec()))
            .unwrap()
    }

    #[test]
    fn records_come_out_as_written_across_many_wraps() {
        let ring = Ring::create(&scratch("wraps"), 4096).unwrap();
        for round in 0..2000u32 {
            let payload: Vec<u8> = (0..(round % 300))
                .map(|byte| (byte + round) as u8)
                .collect();
            assert!(ring.try_write(round % 7, &payload).unwrap());
            assert_eq!(read_one(&ring), Some((round % 7, payload)));
        }
        assert_eq!(read_one(&ring), None);
        assert_eq!(ring.pending(), 0);
    }

    #[test]
    fn a_full_ring_refuses_the_write_and_keeps_unread_records() {
        let ring = Ring::create(&scratch("full"), 4096).unwrap();
        let mut written = 0u32;
        while ring
            .try_write(KIND_DATA, &written.to_le_bytes().repeat(25))
            .unwrap()
        {
            written += 1;
        }
        assert!(written > 30, "only {written} records of 108 bytes fit 4096");
        assert!(!ring
            .write_waiting(KIND_DATA, &[9; 100], Duration::from_millis(5))
            .unwrap());
        for expected in 0..written {
            let (_, payload) = read_one(&ring).unwrap();
            assert_eq!(payload, expected.to_le_bytes().repeat(25));
        }
        assert_eq!(read_one(&ring), None);
    }

    #[test]
    fn a_record_larger_than_half_the_ring_is_refused_by_size() {
        let ring = Ring::create(&scratch("large"), 4096).unwrap();
        let error = ring.try_write(KIND_DATA, &[0; 2041]).unwrap_err();
        assert_eq!(
            error,
            RingError::TooLarge {
                length: 2041,
                largest: 2040
            }
        );
        assert!(ring.try_write(KIND_DATA, &[0; 2040]).unwrap());
    }

    #[test]
    fn a_wrong_file_is_refused_naming_the_field() {
        let path = scratch("wrong");
        fs::write(&path, vec![0u8; 8192]).unwrap();
        make_bell(&path).unwrap();
        let error = Ring::open(&path).err().unwrap();
        assert!(error.to_string().starts_with("ring magic: "), "{error}");

        let ring = Ring::create(&path, 4096).unwrap();
        drop(ring);
        let mut bytes = fs::read(&path).unwrap();
        bytes[VERSION_AT] = 9;
        fs::write(&path, &bytes).unwrap();
        let error = Ring::open(&path).err().unwrap();
        assert_eq!(
            error.to_string(),
            "ring version: 9, this build reads version 1"
        );

        bytes[VERSION_AT] = 1;
        bytes[CAPACITY_AT..CAPACITY_AT + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let error = Ring::open(&path).err().unwrap();
        assert!(
            error.to_string().starts_with("ring capacity: 1048576"),
            "{error}"
        );

        fs::write(&path, [0u8; 100]).unwrap();
        let error = Ring::open(&path).err().unwrap();
        assert!(
            error.to_string().starts_with("ring size: 100 bytes"),
            "{error}"
        );
    }

    #[test]
    fn a_damaged_record_length_is_an_error_not_a_wild_read() {
        let path = scratch("damaged");
        let ring = Ring::create(&path, 4096).unwrap();
        assert!(ring.try_write(KIND_DATA, b"hello").unwrap());
        // SAFETY: test-only scribble over the first record's length inside the mapping.
        unsafe { ptr::write(ring.data().cast::<u32>(), 3000) };
        let error = ring.try_read(|_, _| ()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "ring record length: 3000 at position 0: past the 16 bytes written"
        );
    }

    #[test]
    fn a_parked_consumer_is_woken_by_the_next_write_and_idles_otherwise() {
        let path = scratch("parked");
        let consumer = Arc::new(Ring::create(&path, 1 << 16).unwrap());
        let producer = Ring::open(&path).unwrap();
        let started = Instant::now();
        assert!(!consumer.wait_readable(Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));

        let waiting = Arc::clone(&consumer);
        let reader = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while seen.len() < 10_000 {
                assert!(waiting.wait_readable(Duration::from_secs(10)), "no wake-up");
                while let Some(value) = waiting
                    .try_read(|_, payload| u32::from_le_bytes(payload.try_into().unwrap()))
                    .unwrap()
                {
                    seen.push(value);
                }
            }
            seen
        });
        for value in 0..10_000u32 {
            assert!(producer
                .write_waiting(KIND_DATA, &value.to_le_bytes(), Duration::from_secs(10))
                .unwrap());
            if value % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(2)); // let the consumer park
            }
        }
        assert_eq!(reader.join().unwrap(), (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_capacity_that_is_no_power_of_two_is_refused() {
        let error = Ring::create(&scratch("odd"), 5000).err().unwrap();
        assert!(
            error.to_string().starts_with("ring capacity: 5000"),
            "{error}"
        );
    }
}
