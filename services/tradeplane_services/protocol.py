"""The tradeplane wire protocol: fixed little-endian layouts behind a versioned header.

Every frame starts with the same 12-byte header::

    offset 0  u16 length    whole frame, header included
    offset 2  u8  type      message type (the `type_id` of a layout below)
    offset 3  u8  version   PROTOCOL_VERSION
    offset 4  u64 sequence  per-connection sequence (market data: per-channel packet sequence)

followed by the body of that type, packed without padding. Prices are signed 64-bit integers in units of
1/10000 (PRICE_SCALE); quantities are unsigned 32-bit integers; symbols are 8 ASCII bytes padded with NUL.
A market-data batch carries `count` ticks of TICK_DTYPE after its fixed body.

Each layout is declared once as a NamedTuple plus its struct codes; the numpy dtype for zero-copy batch
decoding, the field offsets named in errors and the compiled codec's layout table all derive from that
declaration. Encoding, decoding and stream splitting run in Rust (core/, the `_wire` extension module);
field rules are `_wire.Rule`s, the same objects the decoder applies and Python code calls.
Decoding never raises anything but ProtocolError, which carries a Reason and the offending byte offset.
"""

from __future__ import annotations

import re
import string
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

from tradeplane_services import _wire

# 2: sessions open with Challenge / Logon / LogonAck (services/README.md, "Sessions").
PROTOCOL_VERSION = 2
PRICE_SCALE = 10_000
HEADER = struct.Struct("<HBBQ")
HEADER_SIZE = HEADER.size
MAX_FRAME_SIZE = 0xFFFF


class Reason(IntEnum):
    """Why something was refused; carried by rejects, execution reports and risk results."""

    OK = 0
    # Protocol
    MALFORMED_FRAME = 1
    TRUNCATED = 2
    OVERSIZED = 3
    UNKNOWN_TYPE = 4
    WRONG_VERSION = 5
    INVALID_FIELD = 6
    UNEXPECTED_MESSAGE = 7
    # Order lifecycle
    DUPLICATE_CLIENT_ORDER_ID = 10
    UNKNOWN_ORDER = 11
    ORDER_NOT_OPEN = 12
    CHANGE_PENDING = 13
    RISK_UNAVAILABLE = 14
    VENUE_UNAVAILABLE = 15
    SHUTTING_DOWN = 16
    CANCELED_ON_DISCONNECT = 17
    CANCELED_BY_KILL_SWITCH = 18
    # Pre-trade risk
    KILL_SWITCH_HALTED = 20
    KILL_SWITCH_REDUCING = 21
    THROTTLED = 22
    UNKNOWN_SYMBOL = 23
    RESTRICTED_SYMBOL = 24
    MAX_QUANTITY = 25
    NO_REFERENCE_PRICE = 26
    PRICE_COLLAR = 27
    MAX_NOTIONAL = 28
    DUPLICATE_ORDER = 29
    POSITION_LIMIT = 30
    CREDIT_LIMIT = 31
    PARTITION_TAKEOVER = 32
    FIRM_CREDIT_LIMIT = 33
    # Venue
    NO_LIQUIDITY = 40
    # Sessions
    LOGON_REQUIRED = 50
    AUTHENTICATION_FAILED = 51
    NOT_AUTHORIZED = 52
    LOGON_TIMEOUT = 53
    READ_TIMEOUT = 54
    TOO_MANY_CONNECTIONS = 55
    INTERNAL_ERROR = 56


class Side(IntEnum):
    BUY = 1
    SELL = 2


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2


class TimeInForce(IntEnum):
    DAY = 1
    IOC = 2


class ExecType(IntEnum):
    NEW = 1
    REJECTED = 2
    TRADE = 3
    CANCELED = 4
    REPLACED = 5
    CANCEL_REJECTED = 6


class OrderStatus(IntEnum):
    PENDING_NEW = 1
    NEW = 2
    PARTIALLY_FILLED = 3
    FILLED = 4
    CANCELED = 5
    REJECTED = 6


class KillSwitchState(IntEnum):
    ACTIVE = 1
    REDUCING = 2
    HALTED = 3


class BatchFlags(IntEnum):
    SNAPSHOT = 1
    HEARTBEAT = 2


class ProtocolError(Exception):
    """A frame that cannot be accepted: why (Reason), where (byte offset in the frame) and what."""

    def __init__(self, reason: Reason, offset: int, detail: str) -> None:
        super().__init__(f"{reason.name} at byte {offset}: {detail}")
        self.reason = reason
        self.offset = offset
        self.detail = detail


_NUMPY_CODES = {"B": "u1", "H": "<u2", "I": "<u4", "Q": "<u8", "b": "i1", "h": "<i2", "i": "<i4", "q": "<i8"}
Check = tuple[_wire.Rule, str]  # the rule (called: True when valid) and what was expected


@dataclass(frozen=True)
class Layout:
    """One message type: its NamedTuple, frame struct (header + body), numpy dtype and field offsets."""

    type_id: int
    cls: type
    frame: struct.Struct
    dtype: np.dtype[Any]
    offsets: dict[str, int]
    checks: dict[str, Check]
    record_size: int  # size of each trailing record (market-data ticks); 0 for fixed-size frames
    body_format: str  # struct codes of the body, as the compiled codec reads them
    ordered: tuple[tuple[int, int], ...]  # (a, b) field indexes: a <= b

    @property
    def size(self) -> int:
        return self.frame.size


LAYOUTS: dict[int, Layout] = {}
_LAYOUT_OF: dict[type, Layout] = {}


def _codes(fmt: str) -> list[str]:
    return re.findall(r"\d*[a-zA-Z]", fmt)


def _dtype_of(names: list[str], codes: list[str]) -> np.dtype[Any]:
    fields = []
    for name, code in zip(names, codes, strict=True):
        fields.append((name, f"S{code[:-1]}" if code.endswith("s") else _NUMPY_CODES[code]))
    return np.dtype(fields)


def layout(
    type_id: int,
    fmt: str,
    checks: dict[str, Check] | None = None,
    record_size: int = 0,
    ordered: tuple[tuple[str, str], ...] = (),
) -> Any:
    """Register a NamedTuple as the body of message `type_id`, packed with struct codes `fmt`.

    `ordered` names pairs of fields (first, last) where last must not be smaller than first.
    """

    def register(cls: type) -> type:
        body_codes = _codes(fmt)
        # Fields past the packed ones (a batch's ticks) are filled in by decode_body.
        body_names = cls._fields[: len(body_codes)]  # type: ignore[attr-defined]
        names = ["length", "type", "version", "sequence", *body_names]
        codes = [*_codes(HEADER.format[1:]), *body_codes]
        frame = struct.Struct("<" + "".join(codes))
        offsets, position = {}, 0
        for name, code in zip(names, codes, strict=True):
            offsets[name] = position
            position += struct.calcsize("<" + code)
        pairs = tuple((body_names.index(a), body_names.index(b)) for a, b in ordered)
        spec = Layout(
            type_id,
            cls,
            frame,
            _dtype_of(names, codes),
            offsets,
            checks or {},
            record_size,
            fmt,
            pairs,
        )
        if type_id in LAYOUTS:
            raise ValueError(f"message type {type_id} registered twice")
        LAYOUTS[type_id] = spec
        _LAYOUT_OF[cls] = spec
        return cls

    return register


def one_of(enum: type[IntEnum]) -> Check:
    names = ", ".join(f"{int(m)} ({m.name.lower()})" for m in enum)
    return _wire.Rule.one_of([int(member) for member in enum]), f"expected one of {names}"


POSITIVE: Check = (_wire.Rule.above(0), "must be positive")
NON_NEGATIVE: Check = (_wire.Rule.above(-1), "must not be negative")
ZERO_OR_ONE: Check = (_wire.Rule.one_of([0, 1]), "expected 0 or 1")
_SYMBOL_START = (string.ascii_uppercase + string.digits).encode()
SYMBOL: Check = (
    _wire.Rule.padded_text(_SYMBOL_START, _SYMBOL_START + b"./-", 8),
    "expected 1-8 ASCII characters [A-Z0-9./-], left-aligned and NUL-padded",
)
ORDER_CHECKS = {
    "symbol": SYMBOL,
    "side": one_of(Side),
    "order_type": one_of(OrderType),
    "quantity": POSITIVE,
    "price": NON_NEGATIVE,
}


_IDENTITY_START = string.ascii_lowercase.encode()
IDENTITY: Check = (
    _wire.Rule.padded_text(_IDENTITY_START, _IDENTITY_START + string.digits.encode() + b"-", 16),
    "expected 1-16 characters [a-z0-9-] starting with a-z, NUL-padded",
)


# --- session --------------------------------------------------------------------------------------


@layout(1, "")
class Heartbeat(NamedTuple):
    """Either direction: keeps an idle connection observable."""


@layout(2, "QBHH48s")
class SessionReject(NamedTuple):
    """Service -> peer: a frame was refused; `offset` is the offending byte within that frame."""

    ref_sequence: int
    ref_type: int
    reason: int
    offset: int
    text: bytes


@layout(3, "16s16s", {"service": IDENTITY})
class Challenge(NamedTuple):
    """Service -> peer, first frame of every session: the nonce the peer's Logon must sign."""

    nonce: bytes
    service: bytes


@layout(4, "16s16s32s", {"identity": IDENTITY})
class Logon(NamedTuple):
    """Peer -> service, first frame of every session: HMAC-SHA256 over both nonces and both identities."""

    identity: bytes
    nonce: bytes
    proof: bytes


@layout(5, "16s32s", {"service": IDENTITY})
class LogonAck(NamedTuple):
    """Service -> peer: logged on; `proof` shows the service holds the peer's key too (mutual)."""

    service: bytes
    proof: bytes


# --- order entry (client <-> order) ---------------------------------------------------------------


@layout(10, "QI8sBBBIq", {**ORDER_CHECKS, "time_in_force": one_of(TimeInForce)})
class NewOrder(NamedTuple):
    client_order_id: int
    account: int
    symbol: bytes
    side: int
    order_type: int
    time_in_force: int
    quantity: int
    price: int


@layout(11, "QQ")
class CancelOrder(NamedTuple):
    client_order_id: int
    orig_client_order_id: int


@layout(12, "QQIq", {"quantity": POSITIVE, "price": NON_NEGATIVE})
class ReplaceOrder(NamedTuple):
    client_order_id: int
    orig_client_order_id: int
    quantity: int
    price: int


@layout(13, "QQBBH8sBIqIIq")
class ExecutionReport(NamedTuple):
    client_order_id: int
    order_id: int
    exec_type: int
    order_status: int
    reason: int
    symbol: bytes
    side: int
    last_quantity: int
    last_price: int
    cumulative_quantity: int
    leaves_quantity: int
    price: int


@layout(14, "B", {"state": one_of(KillSwitchState)})
class SetKillSwitch(NamedTuple):
    """Operator -> risk: move the kill switch."""

    state: int


@layout(15, "B")
class KillSwitchStatus(NamedTuple):
    """Risk -> every connected peer, on connect and on each change."""

    state: int


# --- order <-> risk -------------------------------------------------------------------------------


@layout(20, "QI8sBBIqB", {**ORDER_CHECKS, "is_replace": ZERO_OR_ONE})
class RiskCheck(NamedTuple):
    order_id: int
    account: int
    symbol: bytes
    side: int
    order_type: int
    quantity: int
    price: int
    is_replace: int


@layout(21, "QH")
class RiskResult(NamedTuple):
    order_id: int
    reason: int


@layout(22, "QIqB")
class RiskUpdate(NamedTuple):
    """Order -> risk: a fill (filled_quantity at fill_price); done=1 once the order can trade no more."""

    order_id: int
    filled_quantity: int
    fill_price: int
    done: int


# --- order <-> execution --------------------------------------------------------------------------


@layout(30, "QI8sBBBIq", {**ORDER_CHECKS, "time_in_force": one_of(TimeInForce)})
class RouteOrder(NamedTuple):
    order_id: int
    account: int
    symbol: bytes
    side: int
    order_type: int
    time_in_force: int
    quantity: int
    price: int


@layout(31, "Q")
class CancelRoute(NamedTuple):
    order_id: int


@layout(32, "QIq", {"quantity": POSITIVE, "price": NON_NEGATIVE})
class ReplaceRoute(NamedTuple):
    order_id: int
    quantity: int
    price: int


@layout(33, "QBHIqI")
class VenueReport(NamedTuple):
    """Execution -> order: what the venue did to an order (exec_type NEW/TRADE/CANCELED/...)."""

    order_id: int
    exec_type: int
    reason: int
    last_quantity: int
    last_price: int
    leaves_quantity: int


# --- fills (event log) and position queries -----------------------------------------------------


@layout(40, "QQI8sBIqQQ", {"symbol": SYMBOL, "side": one_of(Side), "quantity": POSITIVE, "price": POSITIVE})
class Fill(NamedTuple):
    """One side of a trade, as execution appends it to the event log; (source, fill_sequence) identifies
    it for exactly-once application."""

    source: int
    fill_sequence: int
    account: int
    symbol: bytes
    side: int
    quantity: int
    price: int
    order_id: int
    timestamp_ns: int


@layout(
    45,
    "QI8sBIqB",
    {
        "symbol": SYMBOL,
        "side": one_of(Side),
        "quantity": POSITIVE,
        "price": NON_NEGATIVE,
        "is_replace": ZERO_OR_ONE,
    },
)
class Reservation(NamedTuple):
    """Risk -> event log: an order risk accepted and the exposure it reserves (a replace: instead of the
    order's earlier reservation), logged before order hears of it, so the partition's next owner
    rebuilds it."""

    order_id: int
    account: int
    symbol: bytes
    side: int
    quantity: int
    price: int  # the price its credit was reserved at: the limit price, or the reference for a market order
    is_replace: int


@layout(46, "QI")
class Release(NamedTuple):
    """Risk -> event log: the order can trade no more; what it still reserved is free again."""

    order_id: int
    account: int


@layout(48, "QIB")
class Refusal(NamedTuple):
    """Risk -> event log: a check the partition's owner refused, and why: a risk decision, as a Reservation
    is, logged beside the answer (a refused order never trades, so order need not wait for it)."""

    order_id: int
    account: int
    reason: int


@layout(49, "B32s")
class KillSwitchChange(NamedTuple):
    """Risk -> event log: the kill switch of the replica `by` moved to `state` (firm-wide, so on
    partition 0's subject)."""

    state: int
    by: bytes


@layout(47, "BQ32s")
class PartitionClaim(NamedTuple):
    """Risk -> event log: a replica took the partition over under lease revision `lease_revision`; appended
    only if no other risk event of the partition came after the one it saw, so a writer that lost the
    partition fails its next append."""

    partition: int
    lease_revision: int
    owner: bytes


@layout(42, "I")
class PositionQuery(NamedTuple):
    """Anyone -> position: positions of one account (0: all accounts)."""

    account: int


@layout(43, "I8sqQQqqqq")
class PositionReport(NamedTuple):
    account: int
    symbol: bytes
    quantity: int
    bought_quantity: int
    sold_quantity: int
    open_cost: int
    realized_pnl: int
    mark_price: int
    unrealized_pnl: int


@layout(44, "I")
class PositionQueryEnd(NamedTuple):
    reports: int


# --- market data ----------------------------------------------------------------------------------

TICK_DTYPE = np.dtype(
    [
        ("symbol", "S8"),
        ("bid_price", "<i8"),
        ("ask_price", "<i8"),
        ("last_price", "<i8"),
        ("bid_quantity", "<u4"),
        ("ask_quantity", "<u4"),
        ("timestamp_ns", "<u8"),
    ]
)


@layout(50, "HBBQ", record_size=TICK_DTYPE.itemsize)
class MarketDataBatch(NamedTuple):
    """Publisher -> subscribers: `tick_count` ticks follow. A heartbeat has none and the next sequence."""

    tick_count: int
    flags: int
    channel: int
    send_time_ns: int
    ticks: Any = None  # decoded: a zero-copy TICK_DTYPE array over the frame


@layout(51, "QQ", ordered=(("first_sequence", "last_sequence"),))
class ReplayRequest(NamedTuple):
    """Subscriber -> publisher: resend packets first_sequence..last_sequence (or a snapshot)."""

    first_sequence: int
    last_sequence: int


@layout(52, "H")
class Subscribe(NamedTuple):
    """Subscriber -> publisher: send the feed by unicast to this UDP port on the subscriber's address."""

    udp_port: int


BATCH_LAYOUT = _LAYOUT_OF[MarketDataBatch]
BATCH_PREFIX = BATCH_LAYOUT.size


def layout_of(cls: type) -> Layout:
    return _LAYOUT_OF[cls]


def decode_ticks(frame: bytes | bytearray | memoryview, count: int, offset: int = 0) -> np.ndarray[Any, Any]:
    """The ticks of a decoded batch frame, as a zero-copy structured array over `frame`."""
    return np.frombuffer(frame, dtype=TICK_DTYPE, count=count, offset=offset + BATCH_PREFIX)


class FrameError(NamedTuple):
    """A refused frame inside a stream; `fatal` when the stream cannot be resynchronised after it."""

    error: ProtocolError
    type_id: int
    sequence: int
    fatal: bool


class FrameRun(NamedTuple):
    """`frames` consecutive well-formed frames of one batchable type, raw, for zero-copy numpy decoding."""

    type_id: int
    data: bytes
    frames: int


Item = tuple[Any, int] | FrameError | FrameRun

_CODEC = _wire.Codec(
    PROTOCOL_VERSION,
    [
        (
            spec.type_id,
            spec.cls,
            list(spec.cls._fields[: len(_codes(spec.body_format))]),  # type: ignore[attr-defined]
            spec.body_format,
            spec.record_size,
            [
                (spec.cls._fields.index(name), rule, expected)  # type: ignore[attr-defined]
                for name, (rule, expected) in spec.checks.items()
            ],
            list(spec.ordered),
        )
        for spec in LAYOUTS.values()
    ],
    ProtocolError,
    Reason,
    FrameError,
    FrameRun,
    decode_ticks,
)
_wire.install(_CODEC)

# (message, sequence=0) -> bytes: the frame of a message.
encode: Callable[..., bytes] = _CODEC.encode
# frame -> (message, sequence) of one complete frame, e.g. a datagram; anything else is a ProtocolError.
decode: Callable[[bytes | bytearray | memoryview], tuple[Any, int]] = _CODEC.decode
# (buffer, offset, length, type_id) -> the message of a frame whose header was checked and whose
# `length` bytes are all present.
decode_body: Callable[[bytes | bytearray | memoryview, int, int, int], Any] = _CODEC.decode_body
# () -> the layouts as text, for the decoder without Python (the fuzz target in core/fuzz).
describe_codec: Callable[[], str] = _CODEC.describe

# Splits a byte stream into frames: (message, sequence), FrameError, or FrameRun.
#
# `batch_types` maps a fixed-size type to the shortest run worth handing over raw as a FrameRun; a
# receiver under load then decodes a whole run with one numpy call instead of frame by frame.
# After a fatal error (a length that cannot be trusted) the decoder refuses further input (`failed`).
# `batch_types` may be replaced between feeds (a session gets its batching once it is authorized);
# `buffered` is the bytes of an incomplete frame held for the next feed.
StreamDecoder = _wire.StreamDecoder


def encode_batch(ticks: np.ndarray[Any, Any], sequence: int, flags: int, channel: int, now_ns: int) -> bytes:
    """A market-data frame: batch header then the ticks' raw little-endian records."""
    records = np.ascontiguousarray(ticks.astype(TICK_DTYPE, copy=False))
    return _CODEC.encode_batch(BATCH_LAYOUT.type_id, records, len(records), sequence, flags, channel, now_ns)


def reject_for(error: ProtocolError, ref_type: int, ref_sequence: int) -> SessionReject:
    text = str(error).encode("ascii", "replace")[:48]
    return SessionReject(ref_sequence, ref_type & 0xFF, int(error.reason), error.offset & 0xFFFF, text)


I64 = (-(2**63), 2**63 - 1)
U64 = (0, 2**64 - 1)


def saturate(value: int, bounds: tuple[int, int]) -> int:
    """`value` clamped into a wire integer's range (a total that outgrew 64 bits reports the limit)."""
    return min(max(value, bounds[0]), bounds[1])


def symbol_bytes(symbol: str) -> bytes:
    """The 8-byte wire form of a symbol; ValueError naming the symbol when it cannot be one."""
    raw = symbol.encode("ascii", "replace").ljust(8, b"\x00")
    if len(raw) != 8 or not SYMBOL[0](raw):
        raise ValueError(f"symbol {symbol!r}: expected 1-8 characters [A-Z0-9./-] starting with A-Z or 0-9")
    return raw


def symbol_text(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode("ascii", "replace")


def price_units(price: float) -> int:
    return round(price * PRICE_SCALE)


def price_value(units: int) -> float:
    return units / PRICE_SCALE
