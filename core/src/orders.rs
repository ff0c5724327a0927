//! The order service's order lifecycle behind `tradeplane_services.order` (its docstring gives the
//! rules): every order's record and status, pending cancels and replaces, each session's client order
//! ids and live orders, the deadlines of risk checks, and every transition.
//!
//! `Book` is the state machine in plain Rust: each transition appends `Outcome`s (a report to a
//! session, a message to risk or to the venue, a latency to record) to a reused vector. `OrderBook`, the
//! Python class, decodes a message's fields, runs one transition and returns its outcomes as
//! `(kind, target, message)` tuples holding the protocol's NamedTuples, which `OrderManager` sends. A
//! send can fail: the manager then says so (`risk_unsent`, `venue_unsent`) and sends what that
//! transition returns.
//!
//! Orders live in a slab whose freed slots are reused; the maps keep their capacity, so the lifecycle of
//! an order in steady state allocates nothing but the growth of its session's set of used ids.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasherDefault;

use pyo3::conversion::IntoPyObjectExt;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyModule, PyTuple, PyType};

use crate::wire::{OrderFrame, Value};
use crate::FrameWriter;

use crate::named_tuple::NamedTupleClass;
use crate::risk::{fast_map, FastMap, MultiplyHasher};

type FastSet = HashSet<u64, BuildHasherDefault<MultiplyHasher>>;

/// What the book has reserved room for before it grows.
const ORDERS_CAPACITY: usize = 4096;
const SESSION_IDS_CAPACITY: usize = 1024;

/// The protocol's codes the book uses, read from protocol.py's enums (which own them).
pub(crate) struct Codes {
    // OrderStatus
    pending_new: i64,
    new: i64,
    partially_filled: i64,
    filled: i64,
    canceled: i64,
    rejected: i64,
    // ExecType
    exec_new: i64,
    exec_rejected: i64,
    exec_trade: i64,
    exec_canceled: i64,
    exec_replaced: i64,
    exec_cancel_rejected: i64,
    // Reason
    duplicate_client_order_id: i64,
    unknown_order: i64,
    order_not_open: i64,
    change_pending: i64,
    risk_unavailable: i64,
    venue_unavailable: i64,
    shutting_down: i64,
    canceled_on_disconnect: i64,
    canceled_by_kill_switch: i64,
    // KillSwitchState
    active: i64,
    halted: i64,
}

impl Codes {
    fn from_protocol(protocol: &Bound<'_, PyModule>) -> PyResult<Self> {
        let code = |enum_name: &str, member: &str| -> PyResult<i64> {
            protocol.getattr(enum_name)?.getattr(member)?.extract()
        };
        let status = |member: &str| code("OrderStatus", member);
        let exec = |member: &str| code("ExecType", member);
        let reason = |member: &str| code("Reason", member);
        Ok(Codes {
            pending_new: status("PENDING_NEW")?,
            new: status("NEW")?,
            partially_filled: status("PARTIALLY_FILLED")?,
            filled: status("FILLED")?,
            canceled: status("CANCELED")?,
            rejected: status("REJECTED")?,
            exec_new: exec("NEW")?,
            exec_rejected: exec("REJECTED")?,
            exec_trade: exec("TRADE")?,
            exec_canceled: exec("CANCELED")?,
            exec_replaced: exec("REPLACED")?,
            exec_cancel_rejected: exec("CANCEL_REJECTED")?,
            duplicate_client_order_id: reason("DUPLICATE_CLIENT_ORDER_ID")?,
            unknown_order: reason("UNKNOWN_ORDER")?,
            order_not_open: reason("ORDER_NOT_OPEN")?,
            change_pending: reason("CHANGE_PENDING")?,
            risk_unavailable: reason("RISK_UNAVAILABLE")?,
            venue_unavailable: reason("VENUE_UNAVAILABLE")?,
            shutting_down: reason("SHUTTING_DOWN")?,
            canceled_on_disconnect: reason("CANCELED_ON_DISCONNECT")?,
            canceled_by_kill_switch: reason("CANCELED_BY_KILL_SWITCH")?,
            active: code("KillSwitchState", "ACTIVE")?,
            halted: code("KillSwitchState", "HALTED")?,
        })
    }

    fn open(&self, status: i64) -> bool {
        status == self.new || status == self.partially_filled
    }
}

/// A cancel or replace waiting for the venue (or for risk, for a replace).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Change {
    client_order_id: u64,
    received_ns: i64,
    /// 0: a cancel.
    quantity: i64,
    price: i64,
    /// Why the order is canceled, when the client did not ask (a disconnect, the kill switch).
    reason: i64,
}

#[derive(Clone, Debug)]
struct Order {
    order_id: u64,
    /// None once its client left.
    session: Option<u64>,
    client_order_id: u64,
    account: u64,
    side: i64,
    order_type: i64,
    time_in_force: i64,
    quantity: i64,
    price: i64,
    filled: i64,
    status: i64,
    received_ns: i64,
    change: Option<Change>,
    /// When it last took a client order id in its session: a disconnect cancels in this order.
    live_since: u64,
}

/// A client session's orders: every client order id it used, and its orders still alive (by id).
struct Session {
    used: FastSet,
    live: FastMap<u32>,
}

impl Session {
    fn new() -> Self {
        Session {
            used: FastSet::with_capacity_and_hasher(SESSION_IDS_CAPACITY, Default::default()),
            live: fast_map(SESSION_IDS_CAPACITY),
        }
    }
}

/// Whose symbol a message carries: the order's in `slot`, the request's being handled, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Symbol {
    Slot(u32),
    Request,
    Blank,
}

/// An ExecutionReport's fields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Report {
    client_order_id: u64,
    order_id: u64,
    exec_type: i64,
    status: i64,
    reason: i64,
    symbol: Symbol,
    side: i64,
    last_quantity: i64,
    last_price: i64,
    cumulative_quantity: i64,
    leaves_quantity: i64,
    price: i64,
}

/// What a transition wants done, in order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Outcome {
    Report {
        session: u64,
        report: Report,
    },
    /// A request's latency, and whether it ended well.
    Record {
        received_ns: i64,
        ok: bool,
    },
    /// A RiskCheck; when it cannot be sent, `risk_unsent`.
    Check {
        order_id: u64,
        account: u64,
        symbol: Symbol,
        side: i64,
        order_type: i64,
        quantity: i64,
        price: i64,
        is_replace: bool,
    },
    /// A RiskUpdate: a fill, or (done with nothing filled) a release of the order's exposure.
    Update {
        order_id: u64,
        account: u64,
        quantity: i64,
        price: i64,
        done: bool,
    },
    /// A RouteOrder; when it cannot be sent, `venue_unsent`, and the outcomes after it did not happen.
    Route {
        session: u64,
        order_id: u64,
        account: u64,
        symbol: Symbol,
        side: i64,
        order_type: i64,
        time_in_force: i64,
        quantity: i64,
        price: i64,
    },
    /// A CancelRoute; when it cannot be sent, `venue_unsent`.
    CancelRoute {
        order_id: u64,
    },
    /// A ReplaceRoute; when it cannot be sent, `venue_unsent`.
    ReplaceRoute {
        order_id: u64,
        quantity: i64,
        price: i64,
    },
}

/// The messages outcomes send.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Message {
    ExecutionReport,
    RiskCheck,
    RiskUpdate,
    RouteOrder,
    CancelRoute,
    ReplaceRoute,
}

/// Where a message's fields go, in its layout's order: a NamedTuple's items, or a frame's values.
trait FieldSink {
    fn int<T: WireInt>(&mut self, value: T);
    fn symbol(&mut self, symbol: Symbol);
}

/// An integer field as the book holds it: a wire value, and a Python int by its own (fast) conversion.
trait WireInt: Into<i128> + for<'py> IntoPyObject<'py, Error = std::convert::Infallible> {}

impl<T: Into<i128> + for<'py> IntoPyObject<'py, Error = std::convert::Infallible>> WireInt for T {}

impl Outcome {
    /// The message it sends, its fields given to `sink` in order; None, nothing given, for a latency to
    /// record.
    fn send_to(&self, sink: &mut impl FieldSink) -> Option<Message> {
        match *self {
            Outcome::Report { report, .. } => {
                sink.int(report.client_order_id);
                sink.int(report.order_id);
                sink.int(report.exec_type);
                sink.int(report.status);
                sink.int(report.reason);
                sink.symbol(report.symbol);
                sink.int(report.side);
                sink.int(report.last_quantity);
                sink.int(report.last_price);
                sink.int(report.cumulative_quantity);
                sink.int(report.leaves_quantity);
                sink.int(report.price);
                Some(Message::ExecutionReport)
            }
            Outcome::Record { .. } => None,
            Outcome::Check {
                order_id,
                account,
                symbol,
                side,
                order_type,
                quantity,
                price,
                is_replace,
            } => {
                sink.int(order_id);
                sink.int(account);
                sink.symbol(symbol);
                sink.int(side);
                sink.int(order_type);
                sink.int(quantity);
                sink.int(price);
                sink.int(u8::from(is_replace));
                Some(Message::RiskCheck)
            }
            Outcome::Update {
                order_id,
                quantity,
                price,
                done,
                ..
            } => {
                sink.int(order_id);
                sink.int(quantity);
                sink.int(price);
                sink.int(u8::from(done));
                Some(Message::RiskUpdate)
            }
            Outcome::Route {
                order_id,
                account,
                symbol,
                side,
                order_type,
                time_in_force,
                quantity,
                price,
                ..
            } => {
                sink.int(order_id);
                sink.int(account);
                sink.symbol(symbol);
                sink.int(side);
                sink.int(order_type);
                sink.int(time_in_force);
                sink.int(quantity);
                sink.int(price);
                Some(Message::RouteOrder)
            }
            Outcome::CancelRoute { order_id } => {
                sink.int(order_id);
                Some(Message::CancelRoute)
            }
            Outcome::ReplaceRoute {
                order_id,
                quantity,
                price,
            } => {
                sink.int(order_id);
                sink.int(quantity);
                sink.int(price);
                Some(Message::ReplaceRoute)
            }
        }
    }
}

/// A message's fields as Python objects, for its NamedTuple.
struct TupleFields<'a, 'py> {
    book: &'a OrderBook,
    py: Python<'py>,
    request_symbol: Option<&'a Bound<'py, PyBytes>>,
    items: [Option<Bound<'py, PyAny>>; 12],
    len: usize,
}

impl FieldSink for TupleFields<'_, '_> {
    fn int<T: WireInt>(&mut self, value: T) {
        let item = value
            .into_bound_py_any(self.py)
            .expect("an integer converts");
        self.items[self.len] = Some(item);
        self.len += 1;
    }

    fn symbol(&mut self, symbol: Symbol) {
        self.items[self.len] = Some(self.book.symbol(self.py, symbol, self.request_symbol));
        self.len += 1;
    }
}

/// A message's fields as wire values, for its frame.
struct FrameFields<'a> {
    book: &'a OrderBook,
    py: Python<'a>,
    values: [Value<'a>; 12],
    len: usize,
}

impl FieldSink for FrameFields<'_> {
    fn int<T: WireInt>(&mut self, value: T) {
        self.values[self.len] = Value::Int(value.into());
        self.len += 1;
    }

    fn symbol(&mut self, symbol: Symbol) {
        self.values[self.len] = Value::Bytes(self.book.symbol_bytes(self.py, symbol));
        self.len += 1;
    }
}

/// A NewOrder's fields but the symbol (the Python side keeps it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewRequest {
    client_order_id: u64,
    account: u64,
    side: i64,
    order_type: i64,
    time_in_force: i64,
    quantity: i64,
    price: i64,
}

impl From<OrderFrame<'_>> for NewRequest {
    fn from(order: OrderFrame<'_>) -> Self {
        NewRequest {
            client_order_id: order.id,
            account: order.account,
            side: order.side,
            order_type: order.order_type,
            time_in_force: order.time_in_force,
            quantity: order.quantity,
            price: order.price,
        }
    }
}

pub(crate) struct Book {
    codes: Codes,
    slots: Vec<Order>,
    free: Vec<u32>,
    /// Order id -> slot of every order not yet terminal.
    by_id: FastMap<u32>,
    sessions: FastMap<Session>,
    /// (deadline ns, order id) of new orders' risk checks, first asked first.
    deadlines: VecDeque<(i64, u64)>,
    /// Orders a bulk transition goes through, reused.
    scratch: Vec<(u64, u32)>,
    outcomes: Vec<Outcome>,
    last_order_id: u64,
    live_clock: u64,
    risk_timeout_ns: i64,
    /// New orders waiting for risk's answer, and how many may: past that a new order is refused at
    /// once, so under overload the answered ones keep their latency and the rest learn in microseconds.
    checks_in_flight: usize,
    max_checks_in_flight: usize,
    accepting: bool,
    kill_switch: i64,
}

impl Book {
    /// `last_order_id`: the next order's id is one more.
    pub(crate) fn new(codes: Codes, risk_timeout_ns: i64, last_order_id: u64) -> Self {
        Book {
            kill_switch: codes.active,
            codes,
            slots: Vec::with_capacity(ORDERS_CAPACITY),
            free: Vec::with_capacity(ORDERS_CAPACITY),
            by_id: fast_map(ORDERS_CAPACITY),
            sessions: fast_map(64),
            deadlines: VecDeque::with_capacity(ORDERS_CAPACITY),
            scratch: Vec::with_capacity(ORDERS_CAPACITY),
            outcomes: Vec::with_capacity(16),
            last_order_id,
            live_clock: 0,
            risk_timeout_ns,
            checks_in_flight: 0,
            max_checks_in_flight: usize::MAX,
            accepting: true,
        }
    }

    fn slot(&self, order_id: u64) -> Option<u32> {
        self.by_id.get(&order_id).copied()
    }

    fn store(&mut self, order: Order) -> u32 {
        let order_id = order.order_id;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = order;
                slot
            }
            None => {
                self.slots.push(order);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(order_id, slot);
        slot
    }

    fn next_live_since(&mut self) -> u64 {
        self.live_clock += 1;
        self.live_clock
    }

    // --- client requests ------------------------------------------------------------------------

    /// The new order's slot when it went to risk.
    pub(crate) fn new_order(
        &mut self,
        session_id: u64,
        request: NewRequest,
        received_ns: i64,
    ) -> Option<u32> {
        let codes = &self.codes;
        let session = self.sessions.entry(session_id).or_insert_with(Session::new);
        let refusal = if !session.used.insert(request.client_order_id) {
            Some(codes.duplicate_client_order_id)
        } else if !self.accepting {
            Some(codes.shutting_down)
        } else if self.checks_in_flight >= self.max_checks_in_flight {
            Some(codes.risk_unavailable)
        } else {
            None
        };
        if let Some(reason) = refusal {
            let ok = reason != codes.risk_unavailable;
            self.refuse(session_id, &request, Symbol::Request, reason);
            self.outcomes.push(Outcome::Record { received_ns, ok });
            return None;
        }
        self.checks_in_flight += 1;
        self.last_order_id += 1;
        let order_id = self.last_order_id;
        let live_since = self.next_live_since();
        let slot = self.store(Order {
            order_id,
            session: Some(session_id),
            client_order_id: request.client_order_id,
            account: request.account,
            side: request.side,
            order_type: request.order_type,
            time_in_force: request.time_in_force,
            quantity: request.quantity,
            price: request.price,
            filled: 0,
            status: self.codes.pending_new,
            received_ns,
            change: None,
            live_since,
        });
        self.live_of(session_id)
            .insert(request.client_order_id, slot);
        self.deadlines
            .push_back((received_ns.saturating_add(self.risk_timeout_ns), order_id));
        self.outcomes.push(Outcome::Check {
            order_id,
            account: request.account,
            symbol: Symbol::Slot(slot),
            side: request.side,
            order_type: request.order_type,
            quantity: request.quantity,
            price: request.price,
            is_replace: false,
        });
        Some(slot)
    }

    fn live_of(&mut self, session_id: u64) -> &mut FastMap<u32> {
        &mut self
            .sessions
            .entry(session_id)
            .or_insert_with(Session::new)
            .live
    }

    fn refuse(&mut self, session: u64, request: &NewRequest, symbol: Symbol, reason: i64) {
        let report = Report {
            client_order_id: request.client_order_id,
            order_id: 0,
            exec_type: self.codes.exec_rejected,
            status: self.codes.rejected,
            reason,
            symbol,
            side: request.side,
            last_quantity: 0,
            last_price: 0,
            cumulative_quantity: 0,
            leaves_quantity: 0,
            price: request.price,
        };
        self.outcomes.push(Outcome::Report { session, report });
    }

    pub(crate) fn cancel(
        &mut self,
        session_id: u64,
        client_order_id: u64,
        original: u64,
        received_ns: i64,
    ) {
        let Some(slot) = self.changeable(session_id, client_order_id, original, received_ns) else {
            return;
        };
        let order = &mut self.slots[slot as usize];
        order.change = Some(Change {
            client_order_id,
            received_ns,
            quantity: 0,
            price: 0,
            reason: 0,
        });
        let order_id = order.order_id;
        self.outcomes.push(Outcome::CancelRoute { order_id });
    }

    pub(crate) fn replace(
        &mut self,
        session_id: u64,
        client_order_id: u64,
        original: u64,
        quantity: i64,
        price: i64,
        received_ns: i64,
    ) {
        let Some(slot) = self.changeable(session_id, client_order_id, original, received_ns) else {
            return;
        };
        let order = &mut self.slots[slot as usize];
        order.change = Some(Change {
            client_order_id,
            received_ns,
            quantity,
            price,
            reason: 0,
        });
        if quantity <= order.filled {
            // Down to what already traded: only less exposure, nothing for risk to check.
            self.route_replace(slot);
            return;
        }
        let check = Outcome::Check {
            order_id: order.order_id,
            account: order.account,
            symbol: Symbol::Slot(slot),
            side: order.side,
            order_type: order.order_type,
            quantity: quantity - order.filled,
            price,
            is_replace: true,
        };
        self.outcomes.push(check);
    }

    /// The slot of the open order a cancel or replace may change; otherwise the client hears why not.
    fn changeable(
        &mut self,
        session_id: u64,
        client_order_id: u64,
        original: u64,
        received_ns: i64,
    ) -> Option<u32> {
        let codes = &self.codes;
        let session = self.sessions.entry(session_id).or_insert_with(Session::new);
        let slot = session.live.get(&original).copied();
        let order = slot.map(|slot| &self.slots[slot as usize]);
        let reason = if session.used.contains(&client_order_id) {
            Some(codes.duplicate_client_order_id)
        } else if let Some(order) = order {
            (order.change.is_some() || order.status == codes.pending_new)
                .then_some(codes.change_pending)
        } else if session.used.contains(&original) {
            Some(codes.order_not_open)
        } else {
            Some(codes.unknown_order)
        };
        session.used.insert(client_order_id);
        let Some(reason) = reason else {
            return slot;
        };
        let report = match (slot, order) {
            (Some(slot), Some(order)) => Report {
                client_order_id,
                order_id: order.order_id,
                exec_type: codes.exec_cancel_rejected,
                status: order.status,
                reason,
                symbol: Symbol::Slot(slot),
                side: order.side,
                last_quantity: 0,
                last_price: 0,
                cumulative_quantity: order.filled,
                leaves_quantity: order.quantity - order.filled,
                price: order.price,
            },
            _ => Report {
                client_order_id,
                order_id: 0,
                exec_type: codes.exec_cancel_rejected,
                status: codes.rejected,
                reason,
                symbol: Symbol::Blank,
                side: 0,
                last_quantity: 0,
                last_price: 0,
                cumulative_quantity: 0,
                leaves_quantity: 0,
                price: 0,
            },
        };
        self.outcomes.push(Outcome::Report {
            session: session_id,
            report,
        });
        self.outcomes.push(Outcome::Record {
            received_ns,
            ok: true,
        });
        None
    }

    // --- risk -----------------------------------------------------------------------------------

    pub(crate) fn risk_result(&mut self, order_id: u64, reason: i64) {
        let Some(slot) = self.slot(order_id) else {
            return;
        };
        let order = &mut self.slots[slot as usize];
        if order.status == self.codes.pending_new {
            self.risk_decided_new(slot, reason);
            return;
        }
        match order.change {
            Some(change) if change.quantity != 0 => {
                if reason != 0 {
                    self.reject_change(slot, reason);
                    self.outcomes.push(Outcome::Record {
                        received_ns: change.received_ns,
                        ok: true,
                    });
                } else {
                    self.route_replace(slot);
                }
            }
            _ => {}
        }
    }

    fn risk_decided_new(&mut self, slot: u32, reason: i64) {
        self.checks_in_flight -= 1;
        let codes = &self.codes;
        let order = &mut self.slots[slot as usize];
        if reason != 0 {
            order.status = codes.rejected;
            let received_ns = order.received_ns;
            self.retire(slot);
            self.report(slot, self.codes.exec_rejected, reason);
            self.outcomes.push(Outcome::Record {
                received_ns,
                ok: true,
            });
            return;
        }
        let Some(session) = order.session else {
            // The client left while risk was deciding.
            self.release(slot);
            return;
        };
        order.status = codes.new;
        let route = Outcome::Route {
            session,
            order_id: order.order_id,
            account: order.account,
            symbol: Symbol::Slot(slot),
            side: order.side,
            order_type: order.order_type,
            time_in_force: order.time_in_force,
            quantity: order.quantity,
            price: order.price,
        };
        let received_ns = order.received_ns;
        self.outcomes.push(route);
        self.report(slot, self.codes.exec_new, 0);
        self.outcomes.push(Outcome::Record {
            received_ns,
            ok: true,
        });
    }

    /// A RiskCheck could not reach risk (`reason` says why): a new order is refused, a replace
    /// rejected.
    pub(crate) fn risk_unsent(&mut self, order_id: u64, reason: i64) {
        let Some(slot) = self.slot(order_id) else {
            return;
        };
        let order = self.slots[slot as usize].clone();
        if order.status == self.codes.pending_new {
            self.checks_in_flight -= 1;
            self.retire(slot);
            if let Some(session) = order.session {
                let request = NewRequest {
                    client_order_id: order.client_order_id,
                    account: order.account,
                    side: order.side,
                    order_type: order.order_type,
                    time_in_force: order.time_in_force,
                    quantity: order.quantity,
                    price: order.price,
                };
                self.refuse(session, &request, Symbol::Slot(slot), reason);
            }
            self.outcomes.push(Outcome::Record {
                received_ns: order.received_ns,
                ok: false,
            });
        } else if let Some(change) = order.change.filter(|change| change.quantity != 0) {
            self.reject_change(slot, reason);
            self.outcomes.push(Outcome::Record {
                received_ns: change.received_ns,
                ok: false,
            });
        }
    }

    /// Orders risk did not answer in time are rejected: fail closed.
    pub(crate) fn expire_risk_checks(&mut self, now_ns: i64) {
        while let Some(&(deadline, order_id)) = self.deadlines.front() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop_front();
            if let Some(slot) = self.slot(order_id) {
                if self.slots[slot as usize].status == self.codes.pending_new {
                    self.risk_unanswered(slot);
                }
            }
        }
    }

    /// A risk replica went away: the orders it was deciding for (`served` their account) are rejected.
    pub(crate) fn risk_lost<E>(
        &mut self,
        mut served: impl FnMut(u64) -> Result<bool, E>,
    ) -> Result<(), E> {
        let pending_new = self.codes.pending_new;
        self.collect(|order| order.status == pending_new);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut kept = 0;
        for index in 0..scratch.len() {
            let slot = scratch[index].1;
            match served(self.slots[slot as usize].account) {
                Ok(true) => {
                    scratch[kept] = scratch[index];
                    kept += 1;
                }
                Ok(false) => {}
                Err(error) => {
                    self.scratch = scratch;
                    return Err(error);
                }
            }
        }
        for &(_, slot) in &scratch[..kept] {
            self.risk_unanswered(slot);
        }
        self.scratch = scratch;
        Ok(())
    }

    fn risk_unanswered(&mut self, slot: u32) {
        self.checks_in_flight -= 1;
        let order = &mut self.slots[slot as usize];
        order.status = self.codes.rejected;
        let (order_id, account, received_ns) = (order.order_id, order.account, order.received_ns);
        self.retire(slot);
        self.report(slot, self.codes.exec_rejected, self.codes.risk_unavailable);
        self.outcomes.push(Outcome::Record {
            received_ns,
            ok: false,
        });
        // Risk may have booked it before going quiet.
        self.outcomes.push(Outcome::Update {
            order_id,
            account,
            quantity: 0,
            price: 0,
            done: true,
        });
    }

    // --- the venue ------------------------------------------------------------------------------

    pub(crate) fn venue_report(
        &mut self,
        order_id: u64,
        exec_type: i64,
        reason: i64,
        last_quantity: i64,
        last_price: i64,
        leaves_quantity: i64,
    ) {
        let Some(slot) = self.slot(order_id) else {
            return;
        };
        let codes = &self.codes;
        let order = &mut self.slots[slot as usize];
        if exec_type == codes.exec_trade {
            order.filled += last_quantity;
            let done = order.filled >= order.quantity;
            order.status = if done {
                codes.filled
            } else {
                codes.partially_filled
            };
            self.outcomes.push(Outcome::Update {
                order_id,
                account: order.account,
                quantity: last_quantity,
                price: last_price,
                done,
            });
            if let Some(session) = order.session {
                let report = Report {
                    client_order_id: order.client_order_id,
                    order_id,
                    exec_type: codes.exec_trade,
                    status: order.status,
                    reason: 0,
                    symbol: Symbol::Slot(slot),
                    side: order.side,
                    last_quantity,
                    last_price,
                    cumulative_quantity: order.filled,
                    leaves_quantity: order.quantity - order.filled,
                    price: order.price,
                };
                self.outcomes.push(Outcome::Report { session, report });
            }
            if done {
                self.retire(slot);
            }
        } else if exec_type == codes.exec_canceled {
            let change = order.change;
            order.status = codes.canceled;
            let reason = if reason != 0 {
                reason
            } else {
                change.map_or(0, |change| change.reason)
            };
            if let Some(change) = change {
                self.rename(slot, change.client_order_id);
            }
            self.release(slot);
            self.report(slot, self.codes.exec_canceled, reason);
            if let Some(change) = change {
                self.outcomes.push(Outcome::Record {
                    received_ns: change.received_ns,
                    ok: true,
                });
            }
        } else if exec_type == codes.exec_replaced {
            let Some(change) = order.change.take() else {
                return;
            };
            order.quantity = change.quantity;
            order.price = change.price;
            if leaves_quantity == 0 {
                order.status = if order.filled >= order.quantity {
                    codes.filled
                } else {
                    codes.canceled
                };
            }
            self.rename(slot, change.client_order_id);
            if leaves_quantity == 0 {
                self.release(slot);
            }
            self.report(slot, self.codes.exec_replaced, 0);
            self.outcomes.push(Outcome::Record {
                received_ns: change.received_ns,
                ok: true,
            });
        } else if exec_type == codes.exec_cancel_rejected {
            if order.change.is_some() {
                let reason = if reason != 0 {
                    reason
                } else {
                    codes.order_not_open
                };
                self.reject_change(slot, reason);
            }
        } else if exec_type == codes.exec_rejected {
            order.status = codes.rejected;
            self.release(slot);
            self.report(slot, self.codes.exec_rejected, reason);
        }
    }

    /// A RouteOrder, CancelRoute or ReplaceRoute could not reach the venue.
    pub(crate) fn venue_unsent(&mut self, order_id: u64) {
        let Some(slot) = self.slot(order_id) else {
            return;
        };
        let order = &mut self.slots[slot as usize];
        if order.change.is_some() {
            self.venue_lost_order(slot);
            return;
        }
        // A new order's route: it never reached the venue.
        order.status = self.codes.rejected;
        let received_ns = order.received_ns;
        self.release(slot);
        self.report(slot, self.codes.exec_rejected, self.codes.venue_unavailable);
        self.outcomes.push(Outcome::Record {
            received_ns,
            ok: false,
        });
    }

    /// The venue cancels the orders of a connection it lost; say so to their owners.
    pub(crate) fn venue_lost(&mut self) {
        let codes = &self.codes;
        let (new, partially_filled) = (codes.new, codes.partially_filled);
        self.collect(|order| order.status == new || order.status == partially_filled);
        for index in 0..self.scratch.len() {
            self.venue_lost_order(self.scratch[index].1);
        }
    }

    fn venue_lost_order(&mut self, slot: u32) {
        self.slots[slot as usize].status = self.codes.canceled;
        self.release(slot);
        self.report(slot, self.codes.exec_canceled, self.codes.venue_unavailable);
    }

    // --- bulk cancels ---------------------------------------------------------------------------

    /// Cancel on disconnect: every open order of the session goes; its reports go nowhere.
    pub(crate) fn session_lost(&mut self, session_id: u64, now_ns: i64) {
        let Some(session) = self.sessions.remove(&session_id) else {
            return;
        };
        self.scratch.clear();
        for &slot in session.live.values() {
            self.scratch
                .push((self.slots[slot as usize].live_since, slot));
        }
        self.scratch.sort_unstable();
        let reason = self.codes.canceled_on_disconnect;
        for index in 0..self.scratch.len() {
            let slot = self.scratch[index].1;
            self.slots[slot as usize].session = None;
            self.cancel_for(slot, reason, now_ns);
        }
    }

    /// Cancel every open order (kill switch HALTED, shutdown).
    pub(crate) fn cancel_all(&mut self, reason: i64, now_ns: i64) {
        let codes = &self.codes;
        let (new, partially_filled) = (codes.new, codes.partially_filled);
        self.collect(|order| order.status == new || order.status == partially_filled);
        for index in 0..self.scratch.len() {
            self.cancel_for(self.scratch[index].1, reason, now_ns);
        }
    }

    /// An open order with no change pending is canceled for `reason`.
    fn cancel_for(&mut self, slot: u32, reason: i64, now_ns: i64) {
        let open = self.codes.open(self.slots[slot as usize].status);
        let order = &mut self.slots[slot as usize];
        if !open || order.change.is_some() {
            return;
        }
        order.change = Some(Change {
            client_order_id: order.client_order_id,
            received_ns: now_ns,
            quantity: 0,
            price: 0,
            reason,
        });
        let order_id = order.order_id;
        self.outcomes.push(Outcome::CancelRoute { order_id });
    }

    /// True when the switch went to HALTED, which cancels every open order.
    pub(crate) fn set_kill_switch(&mut self, state: i64, now_ns: i64) -> bool {
        let previous = std::mem::replace(&mut self.kill_switch, state);
        if state != self.codes.halted || previous == state {
            return false;
        }
        self.cancel_all(self.codes.canceled_by_kill_switch, now_ns);
        true
    }

    // --- helpers --------------------------------------------------------------------------------

    /// The orders `wanted` picks, oldest first, into the scratch vector.
    fn collect(&mut self, wanted: impl Fn(&Order) -> bool) {
        self.scratch.clear();
        for &slot in self.by_id.values() {
            let order = &self.slots[slot as usize];
            if wanted(order) {
                self.scratch.push((order.order_id, slot));
            }
        }
        self.scratch.sort_unstable();
    }

    fn route_replace(&mut self, slot: u32) {
        let order = &self.slots[slot as usize];
        let change = order.change.expect("a replace to route");
        self.outcomes.push(Outcome::ReplaceRoute {
            order_id: order.order_id,
            quantity: change.quantity,
            price: change.price,
        });
    }

    fn reject_change(&mut self, slot: u32, reason: i64) {
        let Some(change) = self.slots[slot as usize].change.take() else {
            return;
        };
        if let Some(session) = self.slots[slot as usize].session {
            let mut report = self.execution_report(slot, self.codes.exec_cancel_rejected, reason);
            report.client_order_id = change.client_order_id;
            self.outcomes.push(Outcome::Report { session, report });
        }
    }

    /// The order can trade no more: forget it and free its risk exposure.
    fn release(&mut self, slot: u32) {
        self.retire(slot);
        let order = &self.slots[slot as usize];
        self.outcomes.push(Outcome::Update {
            order_id: order.order_id,
            account: order.account,
            quantity: 0,
            price: 0,
            done: true,
        });
    }

    /// Forgets the order; its slot keeps the record until a later request reuses it.
    fn retire(&mut self, slot: u32) {
        let order = &self.slots[slot as usize];
        if self.by_id.remove(&order.order_id).is_none() {
            return;
        }
        if let Some(session) = order.session.and_then(|id| self.sessions.get_mut(&id)) {
            session.live.remove(&order.client_order_id);
        }
        self.free.push(slot);
    }

    /// A cancel or replace took effect: the order answers to the request's client order id now.
    fn rename(&mut self, slot: u32, client_order_id: u64) {
        let live_since = self.next_live_since();
        let order = &mut self.slots[slot as usize];
        if let Some(session) = order.session.and_then(|id| self.sessions.get_mut(&id)) {
            if session.live.remove(&order.client_order_id) == Some(slot) {
                session.live.insert(client_order_id, slot);
                order.live_since = live_since;
            }
        }
        order.client_order_id = client_order_id;
    }

    /// Tells the order's session (if it still has one) about it.
    fn report(&mut self, slot: u32, exec_type: i64, reason: i64) {
        if let Some(session) = self.slots[slot as usize].session {
            let report = self.execution_report(slot, exec_type, reason);
            self.outcomes.push(Outcome::Report { session, report });
        }
    }

    fn execution_report(&self, slot: u32, exec_type: i64, reason: i64) -> Report {
        let order = &self.slots[slot as usize];
        let codes = &self.codes;
        let leaves = if codes.open(order.status) || order.status == codes.pending_new {
            order.quantity - order.filled
        } else {
            0
        };
        Report {
            client_order_id: order.client_order_id,
            order_id: order.order_id,
            exec_type,
            status: order.status,
            reason,
            symbol: Symbol::Slot(slot),
            side: order.side,
            last_quantity: 0,
            last_price: 0,
            cumulative_quantity: order.filled,
            leaves_quantity: leaves,
            price: order.price,
        }
    }
}

// --- the Python class -----------------------------------------------------------------------------

/// The kinds of outcome tuples: (kind, target, message).
const REPORT: u8 = 0; // (REPORT, session id, ExecutionReport)
const RECORD: u8 = 1; // (RECORD, received ns, ok)
const CHECK: u8 = 2; // (CHECK, account, RiskCheck)
const UPDATE: u8 = 3; // (UPDATE, account, RiskUpdate)
const ROUTE: u8 = 4; // (ROUTE, session id, RouteOrder)
const VENUE: u8 = 5; // (VENUE, 0, CancelRoute or ReplaceRoute)

/// The protocol's message classes the book builds.
struct Messages {
    execution_report: NamedTupleClass,
    risk_check: NamedTupleClass,
    risk_update: NamedTupleClass,
    route_order: NamedTupleClass,
    cancel_route: NamedTupleClass,
    replace_route: NamedTupleClass,
}

impl Messages {
    fn class(&self, message: Message) -> &NamedTupleClass {
        match message {
            Message::ExecutionReport => &self.execution_report,
            Message::RiskCheck => &self.risk_check,
            Message::RiskUpdate => &self.risk_update,
            Message::RouteOrder => &self.route_order,
            Message::CancelRoute => &self.cancel_route,
            Message::ReplaceRoute => &self.replace_route,
        }
    }

    fn from_protocol(py: Python<'_>, protocol: &Bound<'_, PyModule>) -> PyResult<Self> {
        let class = |name: &str| -> PyResult<NamedTupleClass> {
            let class = protocol.getattr(name)?.cast_into::<PyType>()?.unbind();
            NamedTupleClass::new(py, class, name)
        };
        Ok(Messages {
            execution_report: class("ExecutionReport")?,
            risk_check: class("RiskCheck")?,
            risk_update: class("RiskUpdate")?,
            route_order: class("RouteOrder")?,
            cancel_route: class("CancelRoute")?,
            replace_route: class("ReplaceRoute")?,
        })
    }
}

/// A wire message's fields, read by position; errors name the message and the field.
struct Fields<'a, 'py> {
    message: &'a Bound<'py, PyTuple>,
    class: &'static str,
    names: &'static [&'static str],
}

impl<'a, 'py> Fields<'a, 'py> {
    fn of(
        message: &'a Bound<'py, PyAny>,
        class: &'static str,
        names: &'static [&'static str],
    ) -> PyResult<Self> {
        let tuple = message
            .cast::<PyTuple>()
            .ok()
            .filter(|tuple| tuple.len() >= names.len())
            .ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "expected a {class} of {} fields, not {}",
                    names.len(),
                    message
                        .repr()
                        .map(|text| text.to_string())
                        .unwrap_or_default()
                ))
            })?;
        Ok(Fields {
            message: tuple,
            class,
            names,
        })
    }

    fn get<T: for<'b> FromPyObject<'b, 'py>>(&self, index: usize) -> PyResult<T> {
        let item = self.message.get_borrowed_item(index)?;
        item.extract::<T>().map_err(|_| {
            PyValueError::new_err(format!(
                "{}.{}={}: expected an integer in range",
                self.class,
                self.names[index],
                item.repr().map(|text| text.to_string()).unwrap_or_default()
            ))
        })
    }
}

const NEW_ORDER: &[&str] = &[
    "client_order_id",
    "account",
    "symbol",
    "side",
    "order_type",
    "time_in_force",
    "quantity",
    "price",
];
const CANCEL_ORDER: &[&str] = &["client_order_id", "orig_client_order_id"];
const REPLACE_ORDER: &[&str] = &[
    "client_order_id",
    "orig_client_order_id",
    "quantity",
    "price",
];
const RISK_RESULT: &[&str] = &["order_id", "reason"];
const VENUE_REPORT: &[&str] = &[
    "order_id",
    "exec_type",
    "reason",
    "last_quantity",
    "last_price",
    "leaves_quantity",
];

/// The wire types of what the book takes and sends in runs, found once in the installed codec.
struct WireTypes {
    new_order: u8,
    risk_check: u8,
    risk_result: u8,
    risk_update: u8,
    execution_report: u8,
    route_order: u8,
    cancel_route: u8,
    replace_route: u8,
}

impl WireTypes {
    fn of(&self, message: Message) -> u8 {
        match message {
            Message::ExecutionReport => self.execution_report,
            Message::RiskCheck => self.risk_check,
            Message::RiskUpdate => self.risk_update,
            Message::RouteOrder => self.route_order,
            Message::CancelRoute => self.cancel_route,
            Message::ReplaceRoute => self.replace_route,
        }
    }

    fn from_codec(codec: &crate::Codec) -> PyResult<Self> {
        let type_of = |name: &str| codec.layout_named(name).map(|layout| layout.type_id);
        Ok(WireTypes {
            new_order: type_of("NewOrder")?,
            risk_check: type_of("RiskCheck")?,
            risk_result: type_of("RiskResult")?,
            risk_update: type_of("RiskUpdate")?,
            execution_report: type_of("ExecutionReport")?,
            route_order: type_of("RouteOrder")?,
            cancel_route: type_of("CancelRoute")?,
            replace_route: type_of("ReplaceRoute")?,
        })
    }
}

/// What `risk_result_run` returns: the venue's frames, each session's reports' frames, the other
/// outcomes.
type AnsweredRun<'py> = (
    Bound<'py, PyByteArray>,
    Bound<'py, PyList>,
    Bound<'py, PyList>,
);

/// The order service's orders and rules (see the module's documentation); `OrderManager` in
/// order.py sends what each call returns.
#[pyclass(module = "tradeplane_services._wire")]
pub struct OrderBook {
    book: Book,
    messages: Messages,
    types: WireTypes,
    /// Each slot's order's symbol, as its NewOrder carried it.
    symbols: Vec<Option<Py<PyBytes>>>,
    blank: Py<PyBytes>,
}

impl OrderBook {
    fn outcomes<'py>(
        &self,
        py: Python<'py>,
        request_symbol: Option<&Bound<'py, PyBytes>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for outcome in &self.book.outcomes {
            list.append(self.outcome(py, outcome, request_symbol)?)?;
        }
        Ok(list)
    }

    fn symbol<'py>(
        &self,
        py: Python<'py>,
        symbol: Symbol,
        request_symbol: Option<&Bound<'py, PyBytes>>,
    ) -> Bound<'py, PyAny> {
        let blank = || self.blank.bind(py).clone().into_any();
        match symbol {
            Symbol::Slot(slot) => self.symbols[slot as usize]
                .as_ref()
                .map_or_else(blank, |symbol| symbol.bind(py).clone().into_any()),
            Symbol::Request => {
                request_symbol.map_or_else(blank, |symbol| symbol.clone().into_any())
            }
            Symbol::Blank => blank(),
        }
    }

    /// `Book::new_order` on a cleared outcome list, keeping the symbol of an order it takes.
    fn book_new_order(
        &mut self,
        session: u64,
        request: NewRequest,
        symbol: &Bound<'_, PyBytes>,
        received_ns: i64,
    ) {
        self.book.outcomes.clear();
        if let Some(slot) = self.book.new_order(session, request, received_ns) {
            let slot = slot as usize;
            if slot == self.symbols.len() {
                self.symbols.push(None);
            }
            self.symbols[slot] = Some(symbol.clone().unbind());
        }
    }

    /// The 8 bytes of an outcome's symbol (never the request's: runs do not carry one).
    fn symbol_bytes<'a>(&'a self, py: Python<'a>, symbol: Symbol) -> &'a [u8] {
        const BLANK: &[u8] = &[0u8; 8];
        match symbol {
            Symbol::Slot(slot) => self.symbols[slot as usize]
                .as_ref()
                .map_or(BLANK, |symbol| symbol.as_bytes(py)),
            Symbol::Request | Symbol::Blank => BLANK,
        }
    }

    fn outcome<'py>(
        &self,
        py: Python<'py>,
        outcome: &Outcome,
        request_symbol: Option<&Bound<'py, PyBytes>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (kind, target) = match *outcome {
            Outcome::Report { session, .. } => (REPORT, session),
            Outcome::Record { received_ns, ok } => {
                let ok = pyo3::types::PyBool::new(py, ok).to_owned().into_any();
                return PyTuple::new(
                    py,
                    [
                        RECORD.into_bound_py_any(py)?,
                        received_ns.into_bound_py_any(py)?,
                        ok,
                    ],
                );
            }
            Outcome::Check { account, .. } => (CHECK, account),
            Outcome::Update { account, .. } => (UPDATE, account),
            Outcome::Route { session, .. } => (ROUTE, session),
            Outcome::CancelRoute { .. } | Outcome::ReplaceRoute { .. } => (VENUE, 0u64),
        };
        let mut fields = TupleFields {
            book: self,
            py,
            request_symbol,
            items: Default::default(),
            len: 0,
        };
        let sent = outcome
            .send_to(&mut fields)
            .expect("every outcome but a record sends a message");
        let items = fields
            .items
            .into_iter()
            .take(fields.len)
            .map(|item| item.expect("given"));
        let message = self.messages.class(sent).build(py, items)?;
        PyTuple::new(
            py,
            [
                kind.into_bound_py_any(py)?,
                target.into_bound_py_any(py)?,
                message.into_bound(py),
            ],
        )
    }

    /// Appends the frame of what `outcome` sends to `out` (sequence 0).
    fn write_frame(
        &self,
        py: Python<'_>,
        frames: &mut FrameWriter,
        outcome: &Outcome,
        out: &mut Vec<u8>,
    ) -> PyResult<()> {
        let mut fields = FrameFields {
            book: self,
            py,
            values: [Value::Int(0); 12],
            len: 0,
        };
        let sent = outcome
            .send_to(&mut fields)
            .expect("a record is not a frame");
        frames.append(self.types.of(sent), &fields.values[..fields.len], out)
    }

    /// Runs one transition on a cleared outcome list and returns its outcomes.
    fn run<'py>(
        &mut self,
        py: Python<'py>,
        transition: impl FnOnce(&mut Book),
    ) -> PyResult<Bound<'py, PyList>> {
        self.book.outcomes.clear();
        transition(&mut self.book);
        self.outcomes(py, None)
    }
}

#[pymethods]
impl OrderBook {
    /// `protocol`: the protocol module, whose enums give the codes and whose NamedTuples the messages;
    /// `last_order_id`: the next order's id is one more.
    #[new]
    fn new(
        py: Python<'_>,
        protocol: &Bound<'_, PyModule>,
        risk_timeout_ns: i64,
        last_order_id: u64,
    ) -> PyResult<Self> {
        Ok(OrderBook {
            book: Book::new(
                Codes::from_protocol(protocol)?,
                risk_timeout_ns,
                last_order_id,
            ),
            messages: Messages::from_protocol(py, protocol)?,
            types: WireTypes::from_codec(crate::codec(py)?)?,
            symbols: Vec::with_capacity(ORDERS_CAPACITY),
            blank: PyBytes::new(py, &[0u8; 8]).unbind(),
        })
    }

    fn new_order<'py>(
        &mut self,
        py: Python<'py>,
        session: u64,
        message: &Bound<'py, PyAny>,
        received_ns: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let fields = Fields::of(message, "NewOrder", NEW_ORDER)?;
        let item = fields.message.get_item(2)?;
        let symbol = item.cast_into::<PyBytes>().map_err(|error| {
            PyTypeError::new_err(format!(
                "NewOrder.symbol={}: expected bytes",
                error
                    .into_inner()
                    .repr()
                    .map(|text| text.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let request = NewRequest {
            client_order_id: fields.get(0)?,
            account: fields.get(1)?,
            side: fields.get(3)?,
            order_type: fields.get(4)?,
            time_in_force: fields.get(5)?,
            quantity: fields.get(6)?,
            price: fields.get(7)?,
        };
        self.book_new_order(session, request, &symbol, received_ns);
        self.outcomes(py, Some(&symbol))
    }

    /// A run of NewOrder frames from one session (a FrameRun's `data`), each handled as `new_order`
    /// handles one, with the checks kept apart: each is written as a RiskCheck frame (sequence 0, for
    /// the sending connection to number) into the buffer of its route, `routes[account % len(routes)]`.
    /// A negative route is a check that cannot be sent: its order is refused with `unrouted`, as
    /// `risk_unsent` would. Returns (a bytearray per route, the other outcomes), or None, with nothing
    /// done, when a frame breaks a field rule: taken one by one, each error gets its own answer.
    fn new_order_run<'py>(
        &mut self,
        py: Python<'py>,
        session: u64,
        data: &[u8],
        received_ns: i64,
        routes: Vec<i64>,
        unrouted: i64,
    ) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
        let mut frames = FrameWriter::new(py)?;
        let types = &self.types;
        if routes.is_empty() {
            return Err(PyValueError::new_err("routes: empty"));
        }
        if !frames.all_valid(types.new_order, data)? {
            return Ok(None);
        }
        let layout = frames.layout(types.new_order);
        let route_count = routes.iter().copied().max().unwrap_or(-1).max(-1) + 1;
        let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); route_count as usize];
        let others = PyList::empty(py);
        for frame in data.chunks_exact(layout.size) {
            let order = OrderFrame::read(layout, frame);
            let symbol = PyBytes::new(py, order.symbol);
            self.book_new_order(session, NewRequest::from(order), &symbol, received_ns);
            let mut unsent = None;
            for outcome in &self.book.outcomes {
                let Outcome::Check {
                    order_id, account, ..
                } = *outcome
                else {
                    others.append(self.outcome(py, outcome, Some(&symbol))?)?;
                    continue;
                };
                let route = routes[(account % routes.len() as u64) as usize];
                if route < 0 {
                    unsent = Some(order_id);
                } else {
                    self.write_frame(py, &mut frames, outcome, &mut buffers[route as usize])?;
                }
            }
            if let Some(order_id) = unsent {
                self.book.outcomes.clear();
                self.book.risk_unsent(order_id, unrouted);
                for outcome in &self.book.outcomes {
                    others.append(self.outcome(py, outcome, Some(&symbol))?)?;
                }
            }
        }
        let checks = PyList::empty(py);
        for buffer in buffers {
            checks.append(PyByteArray::new(py, &buffer))?;
        }
        Ok(Some((checks, others)))
    }

    /// A run of RiskResult frames (a FrameRun's `data`), each handled as `risk_result` handles one,
    /// with what goes to the venue and to clients kept apart as frames (sequence 0, for the sending
    /// connection to number): (the venue's frames, [(session id, its reports' frames)], the other
    /// outcomes); None, with nothing done, when a frame breaks a field rule. The caller knows the venue
    /// connected: a route that cannot be sent ends its order (`venue_unsent`), which a run cannot undo.
    fn risk_result_run<'py>(
        &mut self,
        py: Python<'py>,
        data: &[u8],
    ) -> PyResult<Option<AnsweredRun<'py>>> {
        let mut frames = FrameWriter::new(py)?;
        let types = &self.types;
        if !frames.all_valid(types.risk_result, data)? {
            return Ok(None);
        }
        let layout = frames.layout(types.risk_result);
        let mut venue = Vec::new();
        let mut reports: Vec<(u64, Vec<u8>)> = Vec::new();
        let others = PyList::empty(py);
        for frame in data.chunks_exact(layout.size) {
            let (order_id, reason) = (layout.int(0, frame) as u64, layout.int(1, frame) as i64);
            self.book.outcomes.clear();
            self.book.risk_result(order_id, reason);
            for outcome in &self.book.outcomes {
                match *outcome {
                    Outcome::Report { session, .. } => {
                        let at = match reports.iter().position(|(known, _)| *known == session) {
                            Some(at) => at,
                            None => {
                                reports.push((session, Vec::new()));
                                reports.len() - 1
                            }
                        };
                        self.write_frame(py, &mut frames, outcome, &mut reports[at].1)?;
                    }
                    Outcome::Route { .. }
                    | Outcome::CancelRoute { .. }
                    | Outcome::ReplaceRoute { .. } => {
                        self.write_frame(py, &mut frames, outcome, &mut venue)?;
                    }
                    _ => others.append(self.outcome(py, outcome, None)?)?,
                }
            }
        }
        let by_session = PyList::empty(py);
        for (session, buffer) in reports {
            by_session.append((session, PyByteArray::new(py, &buffer)))?;
        }
        Ok(Some((PyByteArray::new(py, &venue), by_session, others)))
    }

    fn cancel<'py>(
        &mut self,
        py: Python<'py>,
        session: u64,
        message: &Bound<'py, PyAny>,
        received_ns: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let fields = Fields::of(message, "CancelOrder", CANCEL_ORDER)?;
        let (client_order_id, original) = (fields.get(0)?, fields.get(1)?);
        self.run(py, |book| {
            book.cancel(session, client_order_id, original, received_ns)
        })
    }

    fn replace<'py>(
        &mut self,
        py: Python<'py>,
        session: u64,
        message: &Bound<'py, PyAny>,
        received_ns: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let fields = Fields::of(message, "ReplaceOrder", REPLACE_ORDER)?;
        let (client_order_id, original) = (fields.get(0)?, fields.get(1)?);
        let (quantity, price) = (fields.get(2)?, fields.get(3)?);
        self.run(py, |book| {
            book.replace(
                session,
                client_order_id,
                original,
                quantity,
                price,
                received_ns,
            )
        })
    }

    fn risk_result<'py>(
        &mut self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let fields = Fields::of(message, "RiskResult", RISK_RESULT)?;
        let (order_id, reason) = (fields.get(0)?, fields.get(1)?);
        self.run(py, |book| book.risk_result(order_id, reason))
    }

    fn risk_unsent<'py>(
        &mut self,
        py: Python<'py>,
        order_id: u64,
        reason: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        self.run(py, |book| book.risk_unsent(order_id, reason))
    }

    fn expire_risk_checks<'py>(
        &mut self,
        py: Python<'py>,
        now_ns: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        self.run(py, |book| book.expire_risk_checks(now_ns))
    }

    /// `served(account)`: whether the lost replica decided for the account (None: for every account).
    #[pyo3(signature = (served = None))]
    fn risk_lost<'py>(
        &mut self,
        py: Python<'py>,
        served: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.book.outcomes.clear();
        self.book.risk_lost(|account| match served {
            Some(served) => served.call1((account,))?.is_truthy(),
            None => Ok(true),
        })?;
        self.outcomes(py, None)
    }

    fn venue_report<'py>(
        &mut self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let fields = Fields::of(message, "VenueReport", VENUE_REPORT)?;
        let (order_id, exec_type, reason) = (fields.get(0)?, fields.get(1)?, fields.get(2)?);
        let (last_quantity, last_price, leaves) = (fields.get(3)?, fields.get(4)?, fields.get(5)?);
        self.run(py, |book| {
            book.venue_report(
                order_id,
                exec_type,
                reason,
                last_quantity,
                last_price,
                leaves,
            )
        })
    }

    fn venue_unsent<'py>(
        &mut self,
        py: Python<'py>,
        order_id: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        self.run(py, |book| book.venue_unsent(order_id))
    }

    fn venue_lost<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.run(py, Book::venue_lost)
    }

    fn session_lost<'py>(
        &mut self,
        py: Python<'py>,
        session: u64,
        now_ns: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        self.run(py, |book| book.session_lost(session, now_ns))
    }

    fn cancel_all<'py>(
        &mut self,
        py: Python<'py>,
        reason: i64,
        now_ns: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        self.run(py, |book| book.cancel_all(reason, now_ns))
    }

    /// The outcomes of the cancels when the switch goes to HALTED; None when nothing changes.
    fn set_kill_switch<'py>(
        &mut self,
        py: Python<'py>,
        state: i64,
        now_ns: i64,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        self.book.outcomes.clear();
        if !self.book.set_kill_switch(state, now_ns) {
            return Ok(None);
        }
        self.outcomes(py, None).map(Some)
    }

    #[getter]
    fn kill_switch(&self) -> i64 {
        self.book.kill_switch
    }

    #[getter]
    fn accepting(&self) -> bool {
        self.book.accepting
    }

    #[setter]
    fn set_accepting(&mut self, accepting: bool) {
        self.book.accepting = accepting;
    }

    #[getter]
    fn risk_timeout_ns(&self) -> i64 {
        self.book.risk_timeout_ns
    }

    #[setter]
    fn set_risk_timeout_ns(&mut self, risk_timeout_ns: i64) {
        self.book.risk_timeout_ns = risk_timeout_ns;
    }

    #[getter]
    fn checks_in_flight(&self) -> usize {
        self.book.checks_in_flight
    }

    #[getter]
    fn max_checks_in_flight(&self) -> usize {
        self.book.max_checks_in_flight
    }

    #[setter]
    fn set_max_checks_in_flight(&mut self, max_checks_in_flight: usize) {
        self.book.max_checks_in_flight = max_checks_in_flight;
    }

    /// Order id -> status of every order not yet terminal.
    fn orders<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let orders = PyDict::new(py);
        for (&order_id, &slot) in &self.book.by_id {
            orders.set_item(order_id, self.book.slots[slot as usize].status)?;
        }
        Ok(orders)
    }

    /// Client order id -> order id of a session's orders still alive.
    fn live<'py>(&self, py: Python<'py>, session: u64) -> PyResult<Bound<'py, PyDict>> {
        let live = PyDict::new(py);
        if let Some(session) = self.book.sessions.get(&session) {
            for (&client_order_id, &slot) in &session.live {
                live.set_item(client_order_id, self.book.slots[slot as usize].order_id)?;
            }
        }
        Ok(live)
    }

    fn __len__(&self) -> usize {
        self.book.by_id.len()
    }

    fn __contains__(&self, order_id: u64) -> bool {
        self.book.by_id.contains_key(&order_id)
    }
}

pub(crate) fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<OrderBook>()?;
    module.add("ORDER_REPORT", REPORT)?;
    module.add("ORDER_RECORD", RECORD)?;
    module.add("ORDER_CHECK", CHECK)?;
    module.add("ORDER_UPDATE", UPDATE)?;
    module.add("ORDER_ROUTE", ROUTE)?;
    module.add("ORDER_VENUE", VENUE)?;
    Ok(())
}

/// protocol.py's codes, for the tests here and the allocation counts of core/src/steady_state.rs
/// (test_svc_order_book.py checks the Python side reads the same).
#[cfg(test)]
pub(crate) fn protocol_codes() -> Codes {
    Codes {
        pending_new: 1,
        new: 2,
        partially_filled: 3,
        filled: 4,
        canceled: 5,
        rejected: 6,
        exec_new: 1,
        exec_rejected: 2,
        exec_trade: 3,
        exec_canceled: 4,
        exec_replaced: 5,
        exec_cancel_rejected: 6,
        duplicate_client_order_id: 10,
        unknown_order: 11,
        order_not_open: 12,
        change_pending: 13,
        risk_unavailable: 14,
        venue_unavailable: 15,
        shutting_down: 16,
        canceled_on_disconnect: 17,
        canceled_by_kill_switch: 18,
        active: 1,
        halted: 3,
    }
}

#[cfg(test)]
impl Book {
    /// Round `round`'s order of session 1: new, risk OK (routed), filled at once, its deadline swept.
    /// The number of outcomes, which the caller checks.
    pub(crate) fn steady_cycle(&mut self, round: u64) -> usize {
        let mut outcomes = 0;
        let request = NewRequest {
            client_order_id: round,
            account: 1 + round % 1000,
            side: 1 + (round % 2) as i64,
            order_type: 1,
            time_in_force: 1,
            quantity: 100,
            price: 1_900_000,
        };
        self.outcomes.clear();
        self.new_order(1, request, round as i64);
        outcomes += self.outcomes.len();
        self.outcomes.clear();
        self.risk_result(self.last_order_id, 0);
        outcomes += self.outcomes.len();
        self.outcomes.clear();
        let exec_trade = self.codes.exec_trade;
        self.venue_report(self.last_order_id, exec_trade, 0, 100, 1_900_000, 0);
        outcomes += self.outcomes.len();
        self.outcomes.clear();
        self.expire_risk_checks(round as i64);
        outcomes + self.outcomes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const ALICE: u64 = 1;
    const BOB: u64 = 2;

    fn book() -> Book {
        Book::new(protocol_codes(), 100 * MS, 0)
    }

    fn request(client_order_id: u64, quantity: i64) -> NewRequest {
        NewRequest {
            client_order_id,
            account: 7,
            side: 1,
            order_type: 1,
            time_in_force: 1,
            quantity,
            price: 1_900_000,
        }
    }

    /// The outcomes of one transition.
    fn step(book: &mut Book, transition: impl FnOnce(&mut Book)) -> Vec<Outcome> {
        book.outcomes.clear();
        transition(book);
        book.outcomes.clone()
    }

    fn reports(outcomes: &[Outcome]) -> Vec<Report> {
        outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Report { report, .. } => Some(*report),
                _ => None,
            })
            .collect()
    }

    /// A new order of ALICE's, accepted by risk and routed; its order id.
    fn routed(book: &mut Book, client_order_id: u64, quantity: i64) -> u64 {
        step(book, |book| {
            book.new_order(ALICE, request(client_order_id, quantity), 0);
        });
        let order_id = book.last_order_id;
        let outcomes = step(book, |book| book.risk_result(order_id, 0));
        assert!(matches!(outcomes[0], Outcome::Route { .. }), "{outcomes:?}");
        order_id
    }

    #[test]
    fn a_new_order_goes_to_risk_then_is_routed_and_acknowledged() {
        let mut book = book();
        let outcomes = step(&mut book, |book| {
            assert_eq!(book.new_order(ALICE, request(1, 100), 5), Some(0));
        });
        assert_eq!(
            outcomes,
            [Outcome::Check {
                order_id: 1,
                account: 7,
                symbol: Symbol::Slot(0),
                side: 1,
                order_type: 1,
                quantity: 100,
                price: 1_900_000,
                is_replace: false,
            }]
        );
        let outcomes = step(&mut book, |book| book.risk_result(1, 0));
        assert!(matches!(
            outcomes[0],
            Outcome::Route {
                session: ALICE,
                order_id: 1,
                quantity: 100,
                ..
            }
        ));
        let ack = reports(&outcomes)[0];
        assert_eq!(
            (ack.exec_type, ack.status, ack.leaves_quantity),
            (1, 2, 100)
        );
        assert_eq!(
            outcomes[2],
            Outcome::Record {
                received_ns: 5,
                ok: true
            }
        );
    }

    #[test]
    fn past_the_checks_in_flight_a_new_order_is_refused_at_once_until_risk_answers_or_times_out() {
        let mut book = book();
        book.max_checks_in_flight = 2;
        for client_order_id in 1..=2 {
            step(&mut book, |book| {
                book.new_order(ALICE, request(client_order_id, 100), 0);
            });
        }
        let outcomes = step(&mut book, |book| {
            assert_eq!(book.new_order(ALICE, request(3, 100), 7), None);
        });
        let refusal = reports(&outcomes)[0];
        assert_eq!(
            (refusal.client_order_id, refusal.reason),
            (3, book.codes.risk_unavailable)
        );
        let served = Outcome::Record {
            received_ns: 7,
            ok: false,
        };
        assert_eq!(outcomes[1], served, "a refusal of the service's own");
        step(&mut book, |book| book.risk_result(1, 0));
        assert!(book.new_order(ALICE, request(4, 100), 0).is_some());
        step(&mut book, |book| book.expire_risk_checks(100 * MS));
        assert_eq!(book.checks_in_flight, 0, "the two unanswered timed out");
        assert!(book.new_order(ALICE, request(5, 100), 0).is_some());
    }

    #[test]
    fn fills_move_the_status_and_the_last_one_retires_the_order_and_frees_its_slot() {
        let mut book = book();
        let order_id = routed(&mut book, 1, 100);
        let outcomes = step(&mut book, |book| {
            book.venue_report(order_id, 3, 0, 40, 1_900_000, 60)
        });
        assert!(matches!(
            outcomes[0],
            Outcome::Update {
                quantity: 40,
                done: false,
                ..
            }
        ));
        assert_eq!(reports(&outcomes)[0].status, 3);
        let outcomes = step(&mut book, |book| {
            book.venue_report(order_id, 3, 0, 60, 1_900_000, 0)
        });
        assert!(matches!(
            outcomes[0],
            Outcome::Update {
                quantity: 60,
                done: true,
                ..
            }
        ));
        let report = reports(&outcomes)[0];
        assert_eq!(
            (
                report.status,
                report.cumulative_quantity,
                report.leaves_quantity
            ),
            (4, 100, 0)
        );
        assert!(book.by_id.is_empty() && book.sessions[&ALICE].live.is_empty());
        assert_eq!(book.free, [0]);
        step(&mut book, |book| {
            assert_eq!(
                book.new_order(ALICE, request(2, 10), 0),
                Some(0),
                "the slot is reused"
            );
        });
    }

    #[test]
    fn client_order_ids_are_unique_per_session_for_the_sessions_life() {
        let mut book = book();
        let order_id = routed(&mut book, 1, 100);
        step(&mut book, |book| {
            book.venue_report(order_id, 3, 0, 100, 1_900_000, 0)
        });
        for outcomes in [
            step(&mut book, |book| {
                book.new_order(ALICE, request(1, 100), 0);
            }),
            step(&mut book, |book| book.cancel(ALICE, 1, 1, 0)),
        ] {
            let report = reports(&outcomes)[0];
            assert_eq!((report.reason, report.order_id), (10, 0), "{outcomes:?}");
        }
        let outcomes = step(&mut book, |book| {
            book.new_order(BOB, request(1, 100), 0);
        });
        assert!(
            matches!(outcomes[0], Outcome::Check { .. }),
            "another session may use it"
        );
    }

    #[test]
    fn changes_of_unknown_closed_or_pending_orders_are_refused_with_the_reason() {
        let mut book = book();
        let outcomes = step(&mut book, |book| book.cancel(ALICE, 2, 99, 0));
        let report = reports(&outcomes)[0];
        assert_eq!((report.exec_type, report.reason, report.status), (6, 11, 6));
        assert_eq!(report.symbol, Symbol::Blank);
        let order_id = routed(&mut book, 3, 100);
        step(&mut book, |book| {
            book.venue_report(order_id, 3, 0, 100, 1_900_000, 0)
        });
        let outcomes = step(&mut book, |book| book.replace(ALICE, 4, 3, 50, 1, 0));
        assert_eq!(reports(&outcomes)[0].reason, 12);
        step(&mut book, |book| {
            book.new_order(ALICE, request(5, 100), 0);
        });
        let outcomes = step(&mut book, |book| book.cancel(ALICE, 6, 5, 0));
        assert_eq!(reports(&outcomes)[0].reason, 13, "risk has not decided yet");
    }

    #[test]
    fn a_replace_is_checked_for_what_may_still_trade_then_renames_the_order() {
        let mut book = book();
        let order_id = routed(&mut book, 1, 100);
        step(&mut book, |book| {
            book.venue_report(order_id, 3, 0, 30, 1_900_000, 70)
        });
        let outcomes = step(&mut book, |book| {
            book.replace(ALICE, 2, 1, 150, 1_910_000, 9)
        });
        assert!(matches!(
            outcomes[0],
            Outcome::Check {
                quantity: 120,
                is_replace: true,
                ..
            }
        ));
        let outcomes = step(&mut book, |book| book.risk_result(order_id, 0));
        assert_eq!(
            outcomes,
            [Outcome::ReplaceRoute {
                order_id,
                quantity: 150,
                price: 1_910_000
            }]
        );
        let outcomes = step(&mut book, |book| {
            book.venue_report(order_id, 5, 0, 0, 0, 120)
        });
        let report = reports(&outcomes)[0];
        assert_eq!((report.client_order_id, report.leaves_quantity), (2, 120));
        assert_eq!(
            outcomes[1],
            Outcome::Record {
                received_ns: 9,
                ok: true
            }
        );
        assert_eq!(book.sessions[&ALICE].live.keys().collect::<Vec<_>>(), [&2]);
    }

    #[test]
    fn a_replace_down_to_what_traded_goes_straight_to_the_venue() {
        let mut book = book();
        let order_id = routed(&mut book, 1, 100);
        step(&mut book, |book| {
            book.venue_report(order_id, 3, 0, 30, 1_900_000, 70)
        });
        let outcomes = step(&mut book, |book| {
            book.replace(ALICE, 2, 1, 30, 1_900_000, 0)
        });
        assert_eq!(
            outcomes,
            [Outcome::ReplaceRoute {
                order_id,
                quantity: 30,
                price: 1_900_000
            }]
        );
        let outcomes = step(&mut book, |book| book.venue_report(order_id, 5, 0, 0, 0, 0));
        assert!(matches!(
            outcomes[0],
            Outcome::Update {
                done: true,
                quantity: 0,
                ..
            }
        ));
        assert_eq!(reports(&outcomes)[0].status, 4);
        assert!(book.by_id.is_empty());
    }

    #[test]
    fn unsent_checks_refuse_new_orders_and_reject_replaces() {
        let mut book = book();
        step(&mut book, |book| {
            book.new_order(ALICE, request(1, 100), 3);
        });
        let outcomes = step(&mut book, |book| book.risk_unsent(1, 14));
        let report = reports(&outcomes)[0];
        assert_eq!(
            (report.order_id, report.reason, report.exec_type),
            (0, 14, 2)
        );
        assert_eq!(
            outcomes[1],
            Outcome::Record {
                received_ns: 3,
                ok: false
            }
        );
        assert!(book.by_id.is_empty());
        let order_id = routed(&mut book, 2, 100);
        step(&mut book, |book| book.replace(ALICE, 3, 2, 500, 1, 4));
        let outcomes = step(&mut book, |book| book.risk_unsent(order_id, 14));
        let report = reports(&outcomes)[0];
        assert_eq!(
            (report.client_order_id, report.exec_type, report.status),
            (3, 6, 2)
        );
        assert_eq!(
            outcomes[1],
            Outcome::Record {
                received_ns: 4,
                ok: false
            }
        );
        let outcomes = step(&mut book, |book| book.cancel(ALICE, 4, 2, 0));
        assert_eq!(
            outcomes,
            [Outcome::CancelRoute { order_id }],
            "the order is as it was"
        );
    }

    #[test]
    fn an_unsent_route_rejects_the_order_and_an_unsent_cancel_cancels_it() {
        let mut book = book();
        let first = routed(&mut book, 1, 100);
        let outcomes = step(&mut book, |book| book.venue_unsent(first));
        assert!(matches!(outcomes[0], Outcome::Update { done: true, .. }));
        let report = reports(&outcomes)[0];
        assert_eq!((report.exec_type, report.status, report.reason), (2, 6, 15));
        let second = routed(&mut book, 2, 100);
        step(&mut book, |book| book.cancel(ALICE, 3, 2, 0));
        let outcomes = step(&mut book, |book| book.venue_unsent(second));
        let report = reports(&outcomes)[0];
        assert_eq!((report.exec_type, report.status, report.reason), (4, 5, 15));
        assert!(book.by_id.is_empty());
    }

    #[test]
    fn unanswered_checks_fail_closed_and_risk_lost_rejects_only_the_accounts_it_served() {
        let mut book = book();
        step(&mut book, |book| {
            book.new_order(ALICE, request(1, 100), 0);
            book.new_order(ALICE, request(2, 100), 50 * MS);
        });
        let outcomes = step(&mut book, |book| book.expire_risk_checks(120 * MS));
        let rejected: Vec<_> = reports(&outcomes)
            .iter()
            .map(|r| (r.client_order_id, r.reason))
            .collect();
        assert_eq!(rejected, [(1, 14)]);
        assert_eq!(
            outcomes.last(),
            Some(&Outcome::Update {
                order_id: 1,
                account: 7,
                quantity: 0,
                price: 0,
                done: true
            })
        );
        let mut other = request(3, 100);
        other.account = 8;
        step(&mut book, |book| {
            book.new_order(ALICE, other, 60 * MS);
        });
        let outcomes = step(&mut book, |book| {
            book.risk_lost(|account| Ok::<_, ()>(account == 8)).unwrap();
        });
        assert_eq!(reports(&outcomes)[0].client_order_id, 3);
        assert_eq!(book.by_id.keys().collect::<Vec<_>>(), [&2]);
    }

    #[test]
    fn a_lost_session_cancels_its_open_orders_and_hears_nothing_more() {
        let mut book = book();
        let first = routed(&mut book, 1, 100);
        step(&mut book, |book| {
            book.new_order(ALICE, request(2, 100), 0);
        });
        let second = book.last_order_id;
        let outcomes = step(&mut book, |book| book.session_lost(ALICE, 77));
        assert_eq!(outcomes, [Outcome::CancelRoute { order_id: first }]);
        let outcomes = step(&mut book, |book| book.risk_result(second, 0));
        assert!(
            matches!(outcomes[..], [Outcome::Update { done: true, .. }]),
            "never routed"
        );
        let outcomes = step(&mut book, |book| book.venue_report(first, 4, 0, 0, 0, 0));
        assert!(reports(&outcomes).is_empty());
        assert_eq!(
            outcomes.last(),
            Some(&Outcome::Record {
                received_ns: 77,
                ok: true
            })
        );
        assert!(book.by_id.is_empty() && book.sessions.is_empty());
    }

    #[test]
    fn halting_cancels_every_open_order_once_with_the_kill_switch_reason() {
        let mut book = book();
        let first = routed(&mut book, 1, 100);
        let second = routed(&mut book, 2, 100);
        let outcomes = step(&mut book, |book| assert!(book.set_kill_switch(3, 0)));
        assert_eq!(
            outcomes,
            [
                Outcome::CancelRoute { order_id: first },
                Outcome::CancelRoute { order_id: second }
            ]
        );
        assert!(!book.set_kill_switch(3, 0));
        let outcomes = step(&mut book, |book| book.venue_report(second, 4, 0, 0, 0, 0));
        let report = reports(&outcomes)[0];
        assert_eq!((report.status, report.reason), (5, 18));
    }

    #[test]
    fn losing_the_venue_cancels_routed_orders_only() {
        let mut book = book();
        routed(&mut book, 1, 100);
        step(&mut book, |book| {
            book.new_order(ALICE, request(2, 100), 0);
        });
        let outcomes = step(&mut book, Book::venue_lost);
        let canceled: Vec<_> = reports(&outcomes)
            .iter()
            .map(|r| (r.client_order_id, r.reason))
            .collect();
        assert_eq!(canceled, [(1, 15)]);
        assert_eq!(book.by_id.len(), 1, "the pending order waits for risk");
    }

    #[test]
    fn shutting_down_refuses_new_orders_but_spends_their_ids() {
        let mut book = book();
        book.accepting = false;
        let outcomes = step(&mut book, |book| {
            assert_eq!(book.new_order(ALICE, request(1, 100), 0), None);
        });
        let report = reports(&outcomes)[0];
        assert_eq!((report.reason, report.symbol), (16, Symbol::Request));
        book.accepting = true;
        let outcomes = step(&mut book, |book| {
            book.new_order(ALICE, request(1, 100), 0);
        });
        assert_eq!(reports(&outcomes)[0].reason, 10);
    }
}
