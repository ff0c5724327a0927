//! The hot paths allocate nothing once warm: a counting global allocator (this test binary's only; the
//! extension module keeps the system's) counts each thread's allocations while a path runs many times
//! after a warm-up. `bench/core_allocations.py` prints the counts per operation.

use std::alloc::{GlobalAlloc, Layout as Memory, System};
use std::cell::Cell;
use std::path::PathBuf;

use crate::histogram::LatencyHistogram;
use crate::orders::{protocol_codes, Book};
use crate::ring::{Ring, KIND_DATA};
use crate::risk::steady_book;
use crate::wire::{parse_codes, Check, Codec, Layout, Rule, Value};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // try_with: a thread being torn down may still free and allocate.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call goes to the system allocator unchanged; counting touches only a thread-local Cell.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, memory: Memory) -> *mut u8 {
        count_one();
        System.alloc(memory)
    }

    unsafe fn alloc_zeroed(&self, memory: Memory) -> *mut u8 {
        count_one();
        System.alloc_zeroed(memory)
    }

    unsafe fn realloc(&self, pointer: *mut u8, memory: Memory, size: usize) -> *mut u8 {
        count_one();
        System.realloc(pointer, memory, size)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, memory: Memory) {
        System.dealloc(pointer, memory)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const WARM_UP: u64 = 10_000;
const OPERATIONS: u64 = 1_000_000;

/// Allocations made by `operation` over OPERATIONS runs after WARM_UP runs, printed per operation.
fn steady_allocations(path: &str, mut operation: impl FnMut(u64)) -> u64 {
    for round in 0..WARM_UP {
        operation(round);
    }
    let before = ALLOCATIONS.with(Cell::get);
    for round in WARM_UP..WARM_UP + OPERATIONS {
        operation(round);
    }
    let allocations = ALLOCATIONS.with(Cell::get) - before;
    println!(
        "steady state: {path}: {allocations} allocations in {OPERATIONS} operations ({} per operation)",
        allocations as f64 / OPERATIONS as f64
    );
    allocations
}

/// protocol.py's NewOrder and its field rules.
fn new_order_codec() -> Codec {
    let symbol_start = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let symbol_rest = [&symbol_start[..], b"./-"].concat();
    let names = [
        "client_order_id",
        "account",
        "symbol",
        "side",
        "order_type",
        "time_in_force",
        "quantity",
        "price",
    ];
    let check = |field, rule, expected: &str| Check {
        field,
        rule,
        expected: expected.to_owned(),
    };
    let checks = vec![
        check(
            2,
            Rule::padded_text(symbol_start, &symbol_rest, 8),
            "a symbol",
        ),
        check(3, Rule::OneOf(vec![1, 2]), "buy or sell"),
        check(4, Rule::OneOf(vec![1, 2]), "limit or market"),
        check(5, Rule::OneOf(vec![1, 2]), "day or ioc"),
        check(6, Rule::Above(0), "must be positive"),
        check(7, Rule::Above(-1), "must not be negative"),
    ];
    let layout = Layout::new(
        10,
        "NewOrder".to_owned(),
        names.map(str::to_owned).to_vec(),
        parse_codes("QI8sBBBIq").unwrap(),
        0,
        checks,
        Vec::new(),
    )
    .unwrap();
    Codec::new(2, vec![layout]).unwrap()
}

#[test]
fn wire_encode_and_decode_of_orders_into_a_reused_buffer_allocate_nothing() {
    let codec = new_order_codec();
    let layout = codec.layouts[10].as_ref().unwrap();
    let mut frame = Vec::with_capacity(layout.size);
    let mut echo = Vec::with_capacity(layout.size);
    let allocations = steady_allocations("wire encode + decode (NewOrder)", |round| {
        let order: [Value; 8] = [
            Value::Int(round as i128),
            Value::Int(7),
            Value::Bytes(b"AAPL"),
            Value::Int(1 + (round % 2) as i128),
            Value::Int(1),
            Value::Int(1),
            Value::Int(100 + (round % 50) as i128),
            Value::Int(1_900_000),
        ];
        layout
            .encode_into(codec.version, round, &order, &[], &mut frame)
            .unwrap();
        let decoded = codec.decode(&frame).unwrap();
        let values: [Value; 8] = std::array::from_fn(|index| decoded.value(index));
        layout
            .encode_into(codec.version, decoded.sequence, &values, &[], &mut echo)
            .unwrap();
        assert_eq!(echo, frame);
    });
    assert_eq!(allocations, 0);
}

#[test]
fn a_refused_frame_allocates_its_error_text() {
    // The one allocation a decode makes: the text of a refusal, built only when a frame is refused.
    let codec = new_order_codec();
    let mut frame = Vec::new();
    let layout = codec.layouts[10].as_ref().unwrap();
    let order = [0, 7, 0, 3, 1, 1, 100, 1].map(|number| Value::Int(number as i128));
    let mut order = order;
    order[2] = Value::Bytes(b"AAPL");
    layout
        .encode_into(codec.version, 1, &order, &[], &mut frame)
        .unwrap();
    let allocations = steady_allocations("wire decode of a refused frame", |_| {
        assert!(codec.decode(&frame).is_err());
    });
    assert!(allocations >= OPERATIONS, "{allocations}");
}

fn scratch(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("tp-steady-test-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    directory.join(name)
}

#[test]
fn ring_push_and_pop_allocate_nothing() {
    let ring = Ring::create(&scratch("ring"), 1 << 16).unwrap();
    let mut payload = [0u8; 47];
    let allocations = steady_allocations("ring push + pop (47-byte frame)", |round| {
        payload[..8].copy_from_slice(&round.to_le_bytes());
        assert!(ring.try_write(KIND_DATA, &payload).unwrap());
        let read = ring
            .try_read(|kind, record| kind == KIND_DATA && record == payload)
            .unwrap();
        assert_eq!(read, Some(true));
    });
    assert_eq!(allocations, 0);
}

#[test]
fn histogram_record_allocates_nothing() {
    let mut histogram = LatencyHistogram::with_bounds(60_000_000_000, 3).unwrap();
    let allocations = steady_allocations("histogram record", |round| {
        // Latencies over the whole range, above it too (counted at the top).
        histogram.record((round * 7919) % 90_000_000_000 + 1, 1);
    });
    assert_eq!(allocations, 0);
    assert_eq!(histogram.count(), WARM_UP + OPERATIONS);
}

#[test]
fn risk_check_and_release_allocate_nothing() {
    // Duplicate fingerprints expire 50 us after their order (a round is 1 us): the map of them is
    // pruned in place and keeps its capacity.
    let mut book = steady_book(50_000);
    let allocations = steady_allocations("risk check + release", |round| {
        assert_eq!(book.steady_check_and_done(round), 0);
    });
    assert_eq!(allocations, 0);
}

#[test]
fn an_orders_lifecycle_allocates_nothing_but_its_sessions_id_set_growing() {
    // New, risk OK, filled, swept: the order's slot and map entries are reused; the session's set of
    // used client order ids grows by doubling (ids are never forgotten while the session lasts).
    let mut book = Book::new(protocol_codes(), 0, 0);
    let allocations = steady_allocations("order new + risk OK + fill (one cycle)", |round| {
        assert_eq!(book.steady_cycle(round), 6);
    });
    let doublings = (WARM_UP + OPERATIONS).ilog2() as u64;
    assert!(allocations <= doublings, "{allocations}");
}
