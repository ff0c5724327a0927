//! The simulated venue's price-time priority limit order book, behind `tradeplane_services.matching`.
//!
//! Per symbol, each side keeps price levels in a B-tree (best price at one end) and each level a FIFO
//! queue of resting orders. Resting orders live in a slab whose freed slots are reused, and an emptied
//! level's queue goes back to a pool, so a book in steady state allocates only the Python events it
//! returns. A queue entry names its order's slot and serial: a canceled order stays queued until it
//! reaches the front (or its level empties), and a slot reused meanwhile has another serial.
//! Owners (the connections that routed the orders) are told apart by identity, and an open order holds
//! a reference to its owner, so no other object can take the owner's identity while it rests.

use std::collections::{BTreeMap, HashMap, VecDeque};

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyType};

use crate::named_tuple::NamedTupleClass;
use crate::wire::OrderFrame;
use crate::FrameWriter;

/// The protocol's codes the book uses, given by the Python side (protocol.py owns them).
struct Codes {
    buy: i64,
    market: i64,
    ioc: i64,
    new: i64,
    rejected: i64,
    trade: i64,
    canceled: i64,
    replaced: i64,
    cancel_rejected: i64,
    no_liquidity: i64,
    duplicate_client_order_id: i64,
    order_not_open: i64,
}

impl Codes {
    fn from_dict(codes: &Bound<'_, PyDict>) -> PyResult<Self> {
        let code = |name: &str| -> PyResult<i64> {
            codes
                .get_item(name)?
                .ok_or_else(|| PyKeyError::new_err(format!("codes has no {name}")))?
                .extract()
        };
        Ok(Codes {
            buy: code("BUY")?,
            market: code("MARKET")?,
            ioc: code("IOC")?,
            new: code("NEW")?,
            rejected: code("REJECTED")?,
            trade: code("TRADE")?,
            canceled: code("CANCELED")?,
            replaced: code("REPLACED")?,
            cancel_rejected: code("CANCEL_REJECTED")?,
            no_liquidity: code("NO_LIQUIDITY")?,
            duplicate_client_order_id: code("DUPLICATE_CLIENT_ORDER_ID")?,
            order_not_open: code("ORDER_NOT_OPEN")?,
        })
    }
}

struct Order {
    owner: Py<PyAny>,
    order_id: u64,
    account: u64,
    symbol: Py<PyBytes>,
    book: usize,
    side: i64,
    /// Leaves: what can still trade.
    quantity: i64,
    filled: i64,
    price: i64,
    active: bool,
    serial: u64,
    /// When its (owner, order id) was first opened: disconnect cancels go in this order.
    opened: u64,
}

impl Order {
    fn key(&self) -> (usize, u64) {
        (self.owner.as_ptr() as usize, self.order_id)
    }
}

/// Builds the Python `VenueEvent`s (a NamedTuple) the book returns.
struct Events {
    class: NamedTupleClass,
    codes: Codes,
    no_symbol: Py<PyBytes>,
}

const EVENT_FIELDS: usize = 10;

impl Events {
    fn new(py: Python<'_>, class: Py<PyType>, codes: Codes) -> PyResult<Self> {
        Ok(Events {
            class: NamedTupleClass::new(py, class, "event_class")?,
            codes,
            no_symbol: PyBytes::new(py, &[0u8; 8]).unbind(),
        })
    }

    fn build(
        &self,
        py: Python<'_>,
        fields: [Bound<'_, PyAny>; EVENT_FIELDS],
    ) -> PyResult<Py<PyAny>> {
        self.class.build(py, fields)
    }

    fn of(
        &self,
        py: Python<'_>,
        order: &Order,
        exec_type: i64,
        reason: i64,
        last_quantity: i64,
        last_price: i64,
    ) -> PyResult<Py<PyAny>> {
        let leaves = if order.active { order.quantity } else { 0 };
        self.build(
            py,
            [
                order.owner.bind(py).clone(),
                order.order_id.into_pyobject(py)?.into_any(),
                order.account.into_pyobject(py)?.into_any(),
                order.symbol.bind(py).clone().into_any(),
                order.side.into_pyobject(py)?.into_any(),
                exec_type.into_pyobject(py)?.into_any(),
                reason.into_pyobject(py)?.into_any(),
                last_quantity.into_pyobject(py)?.into_any(),
                last_price.into_pyobject(py)?.into_any(),
                leaves.into_pyobject(py)?.into_any(),
            ],
        )
    }

    fn not_open(
        &self,
        py: Python<'_>,
        owner: &Bound<'_, PyAny>,
        order_id: u64,
    ) -> PyResult<Py<PyAny>> {
        let zero = || 0i64.into_pyobject(py).map(Bound::into_any);
        self.build(
            py,
            [
                owner.clone(),
                order_id.into_pyobject(py)?.into_any(),
                zero()?,
                self.no_symbol.bind(py).clone().into_any(),
                zero()?,
                self.codes.cancel_rejected.into_pyobject(py)?.into_any(),
                self.codes.order_not_open.into_pyobject(py)?.into_any(),
                zero()?,
                zero()?,
                zero()?,
            ],
        )
    }
}

type Queue = VecDeque<(usize, u64)>;

#[derive(Default)]
struct Level {
    queue: Queue,
    active: u32,
}

#[derive(Default)]
struct Book {
    bids: BTreeMap<i64, Level>,
    asks: BTreeMap<i64, Level>,
}

/// The resting orders and the pools their storage comes back to.
#[derive(Default)]
struct Orders {
    slots: Vec<Option<Order>>,
    free: Vec<usize>,
    open: HashMap<(usize, u64), usize>,
    spare_queues: Vec<Queue>,
    serial: u64,
}

impl Orders {
    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn store(&mut self, order: Order) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(order);
                slot
            }
            None => {
                self.slots.push(Some(order));
                self.slots.len() - 1
            }
        }
    }

    fn release(&mut self, slot: usize) -> Order {
        self.free.push(slot);
        self.slots[slot]
            .take()
            .expect("a released slot holds an order")
    }

    fn level<'a>(&mut self, side: &'a mut BTreeMap<i64, Level>, price: i64) -> &'a mut Level {
        let spare = &mut self.spare_queues;
        side.entry(price).or_insert_with(|| Level {
            queue: spare.pop().unwrap_or_default(),
            active: 0,
        })
    }

    fn drop_level(&mut self, side: &mut BTreeMap<i64, Level>, price: i64) {
        if let Some(mut level) = side.remove(&price) {
            level.queue.clear();
            self.spare_queues.push(level.queue);
        }
    }
}

#[pyclass(subclass, module = "tradeplane_services._wire")]
pub struct MatchingBook {
    events: Events,
    books: Vec<Book>,
    book_of: HashMap<Vec<u8>, usize>,
    orders: Orders,
}

impl MatchingBook {
    fn book_index(&mut self, symbol: &[u8]) -> usize {
        if let Some(&index) = self.book_of.get(symbol) {
            return index;
        }
        self.books.push(Book::default());
        self.book_of.insert(symbol.to_vec(), self.books.len() - 1);
        self.books.len() - 1
    }

    /// Queues a resting order at the back of its price level.
    fn rest(&mut self, order: Order) {
        let (book, side, price, serial, key) = (
            order.book,
            order.side,
            order.price,
            order.serial,
            order.key(),
        );
        let slot = self.orders.store(order);
        let buy = self.events.codes.buy;
        let book = &mut self.books[book];
        let levels = if side == buy {
            &mut book.bids
        } else {
            &mut book.asks
        };
        let level = self.orders.level(levels, price);
        level.queue.push_back((slot, serial));
        level.active += 1;
        self.orders.open.insert(key, slot);
    }

    /// Takes an open order off its level (the level goes once no active order is left on it).
    fn withdraw(&mut self, slot: usize) {
        let order = self.orders.slots[slot]
            .as_mut()
            .expect("an open order has a slot");
        order.active = false;
        let (book, side, price) = (order.book, order.side, order.price);
        let buy = self.events.codes.buy;
        let book = &mut self.books[book];
        let levels = if side == buy {
            &mut book.bids
        } else {
            &mut book.asks
        };
        let level = levels
            .get_mut(&price)
            .expect("an open order's level exists");
        level.active -= 1;
        if level.active == 0 {
            self.orders.drop_level(levels, price);
        }
    }

    /// Trades `order` against the best opposite levels while prices cross, oldest order first, at the
    /// resting order's price.
    fn trade(
        &mut self,
        py: Python<'_>,
        order: &mut Order,
        market: bool,
        events: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let Self {
            events: factory,
            books,
            orders,
            ..
        } = self;
        let codes = &factory.codes;
        let buying = order.side == codes.buy;
        let book = &mut books[order.book];
        let opposite = if buying {
            &mut book.asks
        } else {
            &mut book.bids
        };
        while order.quantity != 0 {
            let best = if buying {
                opposite.first_entry()
            } else {
                opposite.last_entry()
            };
            let Some(mut best) = best else {
                return Ok(());
            };
            let level_price = *best.key();
            if !market
                && (if buying {
                    level_price > order.price
                } else {
                    level_price < order.price
                })
            {
                return Ok(());
            }
            let level = best.get_mut();
            while order.quantity != 0 {
                let Some(&(slot, serial)) = level.queue.front() else {
                    break;
                };
                let resting = match orders.slots[slot].as_mut() {
                    Some(resting) if resting.serial == serial && resting.active => resting,
                    _ => {
                        level.queue.pop_front();
                        continue;
                    }
                };
                let traded = order.quantity.min(resting.quantity);
                order.quantity -= traded;
                order.filled += traded;
                resting.quantity -= traded;
                resting.filled += traded;
                if resting.quantity == 0 {
                    level.queue.pop_front();
                    resting.active = false;
                    level.active -= 1;
                    let key = resting.key();
                    orders.open.remove(&key);
                    let done = orders.release(slot);
                    events.append(factory.of(py, &done, codes.trade, 0, traded, level_price)?)?;
                } else {
                    events.append(factory.of(
                        py,
                        resting,
                        codes.trade,
                        0,
                        traded,
                        level_price,
                    )?)?;
                }
                events.append(factory.of(py, order, codes.trade, 0, traded, level_price)?)?;
            }
            if level.active == 0 {
                let mut emptied = best.remove();
                emptied.queue.clear();
                orders.spare_queues.push(emptied.queue);
            }
        }
        Ok(())
    }

    /// `submit`'s work, its events appended to `events` (the acknowledgement only with `acknowledge`).
    fn submit_into<'py>(
        &mut self,
        py: Python<'py>,
        owner: &Bound<'py, PyAny>,
        route: OrderFrame<'_>,
        symbol: &Bound<'py, PyBytes>,
        acknowledge: bool,
        events: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let duplicate = self
            .orders
            .open
            .contains_key(&(owner.as_ptr() as usize, route.id));
        let book = self.book_index(symbol.as_bytes());
        let mut order = Order {
            owner: owner.clone().unbind(),
            order_id: route.id,
            account: route.account,
            symbol: symbol.clone().unbind(),
            book,
            side: route.side,
            quantity: if duplicate { 0 } else { route.quantity },
            filled: 0,
            price: route.price,
            active: true,
            serial: self.orders.next_serial(),
            opened: 0,
        };
        let codes = &self.events.codes;
        if duplicate {
            let rejected = (codes.rejected, codes.duplicate_client_order_id);
            events.append(self.events.of(py, &order, rejected.0, rejected.1, 0, 0)?)?;
            return Ok(());
        }
        if acknowledge {
            events.append(self.events.of(py, &order, codes.new, 0, 0, 0)?)?;
        }
        let market = route.order_type == codes.market;
        let immediate = market || route.time_in_force == codes.ioc;
        self.trade(py, &mut order, market, events)?;
        if order.quantity != 0 {
            if immediate {
                order.active = false;
                let codes = &self.events.codes;
                let canceled = (codes.canceled, codes.no_liquidity);
                events.append(self.events.of(py, &order, canceled.0, canceled.1, 0, 0)?)?;
            } else {
                order.opened = order.serial;
                self.rest(order);
            }
        }
        Ok(())
    }

    /// Takes an open order out of the book for good.
    fn close(&mut self, slot: usize) -> Order {
        self.withdraw(slot);
        let order = self.orders.release(slot);
        self.orders.open.remove(&order.key());
        order
    }

    fn cancel_slot(
        &mut self,
        py: Python<'_>,
        slot: usize,
        reason: i64,
        events: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        let order = self.close(slot);
        let canceled = self.events.codes.canceled;
        events.append(self.events.of(py, &order, canceled, reason, 0, 0)?)
    }

    fn not_open<'py>(
        &self,
        py: Python<'py>,
        owner: &Bound<'py, PyAny>,
        order_id: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, [self.events.not_open(py, owner, order_id)?])
    }

    fn levels(
        &self,
        levels: &BTreeMap<i64, Level>,
        best_first_descending: bool,
    ) -> Vec<(i64, i64)> {
        let depth = levels.iter().map(|(&price, level)| {
            let active: i64 = level
                .queue
                .iter()
                .filter_map(|&(slot, serial)| {
                    self.orders.slots[slot]
                        .as_ref()
                        .filter(|order| order.serial == serial && order.active)
                        .map(|order| order.quantity)
                })
                .sum();
            (price, active)
        });
        if best_first_descending {
            depth.rev().collect()
        } else {
            depth.collect()
        }
    }
}

#[pymethods]
impl MatchingBook {
    /// `event_class` builds each event from its ten fields; `codes` names the protocol's codes the book
    /// uses (BUY, MARKET, IOC, the exec types and the reasons).
    #[new]
    fn new(py: Python<'_>, event_class: Py<PyType>, codes: &Bound<'_, PyDict>) -> PyResult<Self> {
        Ok(MatchingBook {
            events: Events::new(py, event_class, Codes::from_dict(codes)?)?,
            books: Vec::new(),
            book_of: HashMap::new(),
            orders: Orders::default(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn submit<'py>(
        &mut self,
        py: Python<'py>,
        owner: &Bound<'py, PyAny>,
        order_id: u64,
        account: u64,
        symbol: &Bound<'py, PyBytes>,
        side: i64,
        order_type: i64,
        time_in_force: i64,
        quantity: i64,
        price: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        let route = OrderFrame {
            id: order_id,
            account,
            symbol: symbol.as_bytes(),
            side,
            order_type,
            time_in_force,
            quantity,
            price,
        };
        self.submit_into(py, owner, route, symbol, true, &events)?;
        Ok(events)
    }

    /// A run of RouteOrder frames (a FrameRun's `data`), each submitted as `submit` submits one, and the
    /// events they caused but the acknowledgements (NEW): whoever routed them acknowledged them already.
    /// None, with nothing done, when a frame breaks a field rule.
    fn submit_run<'py>(
        &mut self,
        py: Python<'py>,
        owner: &Bound<'py, PyAny>,
        data: &[u8],
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let frames = FrameWriter::new(py)?;
        let route_order = frames.codec().layout_named("RouteOrder")?;
        if !frames.all_valid(route_order.type_id, data)? {
            return Ok(None);
        }
        let events = PyList::empty(py);
        for frame in data.chunks_exact(route_order.size) {
            let route = OrderFrame::read(route_order, frame);
            let symbol = PyBytes::new(py, route.symbol);
            self.submit_into(py, owner, route, &symbol, false, &events)?;
        }
        Ok(Some(events))
    }

    #[pyo3(signature = (owner, order_id, reason = 0))]
    fn cancel<'py>(
        &mut self,
        py: Python<'py>,
        owner: &Bound<'py, PyAny>,
        order_id: u64,
        reason: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let Some(&slot) = self.orders.open.get(&(owner.as_ptr() as usize, order_id)) else {
            return self.not_open(py, owner, order_id);
        };
        let events = PyList::empty(py);
        self.cancel_slot(py, slot, reason, &events)?;
        Ok(events)
    }

    /// A new total quantity and price for a resting order: it keeps its time priority only when the
    /// price is unchanged and the quantity does not grow; a total at or below what already filled
    /// finishes it.
    fn replace<'py>(
        &mut self,
        py: Python<'py>,
        owner: &Bound<'py, PyAny>,
        order_id: u64,
        quantity: i64,
        price: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let key = (owner.as_ptr() as usize, order_id);
        let Some(&slot) = self.orders.open.get(&key) else {
            return self.not_open(py, owner, order_id);
        };
        let replaced = self.events.codes.replaced;
        let events = PyList::empty(py);
        let order = self.orders.slots[slot]
            .as_mut()
            .expect("an open order has a slot");
        let leaves = quantity - order.filled;
        if leaves <= 0 {
            let order = self.close(slot);
            events.append(self.events.of(py, &order, replaced, 0, 0, 0)?)?;
            return Ok(events);
        }
        if price == order.price && leaves <= order.quantity {
            order.quantity = leaves;
            events.append(self.events.of(py, order, replaced, 0, 0, 0)?)?;
            return Ok(events);
        }
        self.withdraw(slot);
        let previous = self.orders.release(slot);
        let mut replacement = Order {
            quantity: leaves,
            price,
            active: true,
            serial: self.orders.next_serial(),
            ..previous
        };
        events.append(self.events.of(py, &replacement, replaced, 0, 0, 0)?)?;
        self.trade(py, &mut replacement, false, &events)?;
        if replacement.quantity != 0 {
            self.rest(replacement);
        } else {
            self.orders.open.remove(&key);
        }
        Ok(events)
    }

    /// Cancels every resting order of one owner (its connection went away), oldest first.
    fn cancel_owner<'py>(
        &mut self,
        py: Python<'py>,
        owner: &Bound<'py, PyAny>,
        reason: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let identity = owner.as_ptr() as usize;
        let mut owned: Vec<(u64, usize)> = self
            .orders
            .open
            .iter()
            .filter(|((order_owner, _), _)| *order_owner == identity)
            .map(|(_, &slot)| {
                let order = self.orders.slots[slot]
                    .as_ref()
                    .expect("an open order has a slot");
                (order.opened, slot)
            })
            .collect();
        owned.sort_unstable();
        let events = PyList::empty(py);
        for (_, slot) in owned {
            self.cancel_slot(py, slot, reason, &events)?;
        }
        Ok(events)
    }

    /// (bids, asks) as (price, active quantity), best first: for tests and the status page.
    fn depth(&self, symbol: &[u8]) -> (Vec<(i64, i64)>, Vec<(i64, i64)>) {
        match self.book_of.get(symbol) {
            Some(&book) => (
                self.levels(&self.books[book].bids, true),
                self.levels(&self.books[book].asks, false),
            ),
            None => (Vec::new(), Vec::new()),
        }
    }
}
