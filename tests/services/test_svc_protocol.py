"""The wire protocol: round trips, precise rejects, and decoders fuzzed with arbitrary bytes."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeplane_services.protocol import (
    HEADER,
    HEADER_SIZE,
    IDENTITY,
    LAYOUTS,
    PROTOCOL_VERSION,
    SYMBOL,
    TICK_DTYPE,
    FrameError,
    FrameRun,
    Layout,
    MarketDataBatch,
    NewOrder,
    ProtocolError,
    Reason,
    RiskCheck,
    StreamDecoder,
    decode,
    encode,
    encode_batch,
    layout_of,
    symbol_bytes,
)
from wire_strategies import message_strategy

FIXED_LAYOUTS = [spec for spec in LAYOUTS.values() if not spec.record_size]


@pytest.mark.parametrize("spec", FIXED_LAYOUTS, ids=lambda spec: spec.cls.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), sequence=st.integers(0, 2**64 - 1))
def test_every_fixed_message_round_trips_or_names_the_invalid_field(
    spec: Layout, data: st.DataObject, sequence: int
) -> None:
    message = data.draw(message_strategy(spec))
    frame = encode(message, sequence)
    assert len(frame) == spec.size
    try:
        decoded, decoded_sequence = decode(frame)
    except ProtocolError as error:
        assert error.reason is Reason.INVALID_FIELD
        field = next(name for name, offset in spec.offsets.items() if offset == error.offset)
        if field in spec.checks:
            accept, _ = spec.checks[field]
            assert not accept(getattr(message, field))
        else:  # the later field of an ordered pair
            first, last = next((a, b) for a, b in spec.ordered if message._fields[b] == field)
            assert message[last] < message[first]
        assert field in error.detail
        return
    assert decoded == message
    assert decoded_sequence == sequence


def test_a_new_order_with_a_bad_side_is_refused_at_the_side_byte() -> None:
    frame = encode(NewOrder(1, 7, symbol_bytes("AAPL"), 9, 1, 1, 100, 1_900_000))
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert caught.value.reason is Reason.INVALID_FIELD
    assert caught.value.offset == layout_of(NewOrder).offsets["side"] == HEADER_SIZE + 20
    assert "NewOrder.side=9" in str(caught.value)


NEW_ORDER_SIZE = layout_of(NewOrder).size


@pytest.mark.parametrize(
    ("mutate", "reason", "offset"),
    [
        (lambda f: f[:2] + bytes([200]) + f[3:], Reason.UNKNOWN_TYPE, 2),
        (lambda f: f[:3] + bytes([PROTOCOL_VERSION + 1]) + f[4:], Reason.WRONG_VERSION, 3),
        (lambda f: struct.pack("<H", len(f) - 1) + f[2:-1], Reason.TRUNCATED, NEW_ORDER_SIZE - 1),
        (lambda f: struct.pack("<H", len(f) + 4) + f[2:] + b"\0" * 4, Reason.OVERSIZED, NEW_ORDER_SIZE),
        (lambda f: struct.pack("<H", 5) + f[2:], Reason.MALFORMED_FRAME, 0),
        (lambda f: f[:7], Reason.TRUNCATED, 7),
    ],
    ids=["unknown-type", "wrong-version", "truncated", "oversized", "malformed-length", "short-header"],
)
def test_broken_frames_get_the_reason_and_the_byte(mutate: Any, reason: Reason, offset: int) -> None:
    frame = mutate(encode(NewOrder(1, 1, symbol_bytes("AAPL"), 1, 1, 1, 10, 1)))
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert caught.value.reason is reason
    assert caught.value.offset == offset


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_raises_nothing_but_protocol_errors(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError as error:
        assert isinstance(error.reason, Reason)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=80), max_size=12))
def test_stream_decoder_survives_arbitrary_bytes(chunks: list[bytes]) -> None:
    decoder = StreamDecoder({layout_of(RiskCheck).type_id: 2})
    fatal_seen = False
    for chunk in chunks:
        items = decoder.feed(chunk)
        if fatal_seen:
            assert items == []
        for item in items:
            assert isinstance(item, (tuple, FrameError, FrameRun))
            if isinstance(item, FrameError) and item.fatal:
                fatal_seen = True


VALID_FRAMES = st.lists(
    st.one_of(
        message_strategy(layout_of(NewOrder)),
        message_strategy(layout_of(RiskCheck)).map(lambda m: m._replace(side=1, order_type=1, is_replace=0)),
    ),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(messages=VALID_FRAMES, cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_stream_decoding_does_not_depend_on_how_bytes_arrive(messages: list[Any], cuts: list[int]) -> None:
    stream = b"".join(encode(message, index) for index, message in enumerate(messages))
    reference = StreamDecoder().feed(stream)
    decoder = StreamDecoder({layout_of(RiskCheck).type_id: 3})
    items: list[Any] = []
    previous = 0
    for cut in sorted({min(cut, len(stream)) for cut in cuts} | {len(stream)}):
        items.extend(decoder.feed(stream[previous:cut]))
        previous = cut
    flattened: list[Any] = []
    for item in items:
        if isinstance(item, FrameRun):
            flattened.extend(StreamDecoder().feed(item.data))
        else:
            flattened.append(item)
    assert _comparable(flattened) == _comparable(reference)
    assert decoder.buffered == 0


def _comparable(items: list[Any]) -> list[Any]:
    return [(type(i).__name__, str(i.error)) if isinstance(i, FrameError) else i for i in items]


def test_runs_of_risk_checks_arrive_as_one_raw_block() -> None:
    checks = [RiskCheck(i, 1, symbol_bytes("AAPL"), 1, 1, 10, 100, 0) for i in range(5)]
    stream = encode(NewOrder(1, 1, symbol_bytes("AAPL"), 1, 1, 1, 10, 1)) + b"".join(map(encode, checks))
    items = StreamDecoder({layout_of(RiskCheck).type_id: 4}).feed(stream)
    assert isinstance(items[0], tuple) and isinstance(items[0][0], NewOrder)
    run = items[1]
    assert isinstance(run, FrameRun) and run.frames == 5
    records = np.frombuffer(run.data, dtype=layout_of(RiskCheck).dtype)
    assert records["order_id"].tolist() == [0, 1, 2, 3, 4]


def test_a_fatal_length_stops_the_stream() -> None:
    decoder = StreamDecoder()
    items = decoder.feed(
        HEADER.pack(3, 10, PROTOCOL_VERSION, 1) + encode(NewOrder(1, 1, b"A" * 8, 1, 1, 1, 1, 1))
    )
    assert len(items) == 1 and isinstance(items[0], FrameError) and items[0].fatal
    assert decoder.feed(encode(NewOrder(1, 1, b"A" * 8, 1, 1, 1, 1, 1))) == []


@settings(max_examples=50, deadline=None)
@given(count=st.integers(0, 40), sequence=st.integers(0, 2**64 - 1), seed=st.integers(0, 2**32 - 1))
def test_market_data_batches_round_trip_as_numpy(count: int, sequence: int, seed: int) -> None:
    random = np.random.default_rng(seed)
    ticks = np.zeros(count, dtype=TICK_DTYPE)
    ticks["symbol"] = b"MSFT"
    ticks["last_price"] = random.integers(1, 10**9, count)
    ticks["bid_quantity"] = random.integers(0, 2**32, count)
    frame = encode_batch(ticks, sequence, 0, 3, 12345)
    batch, decoded_sequence = decode(frame)
    assert isinstance(batch, MarketDataBatch)
    assert (batch.tick_count, batch.channel, decoded_sequence) == (count, 3, sequence)
    assert np.array_equal(batch.ticks, ticks)


def test_a_batch_whose_count_disagrees_with_its_length_is_refused() -> None:
    frame = bytearray(encode_batch(np.zeros(3, dtype=TICK_DTYPE), 1, 0, 1, 0))
    struct.pack_into("<H", frame, HEADER_SIZE, 4)
    with pytest.raises(ProtocolError) as caught:
        decode(bytes(frame))
    assert caught.value.reason is Reason.TRUNCATED


def test_symbols_are_checked_when_built() -> None:
    assert symbol_bytes("BRK.B") == b"BRK.B\0\0\0"
    for bad in ("", "aapl", "TOOLONGSYM"):
        with pytest.raises(ValueError, match="symbol"):
            symbol_bytes(bad)


def _text_strategy(alphabet: bytes, width: int) -> st.SearchStrategy[bytes]:
    """Mostly near-valid text (characters of the alphabet, some NUL, some other bytes), sometimes noise."""
    characters = st.sampled_from([bytes([c]) for c in alphabet] + [b"\0", b"a", b"Z", b" ", b"\xff"])
    near = st.lists(characters, min_size=width, max_size=width).map(b"".join)
    return st.one_of(near, st.binary(min_size=width, max_size=width))


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_text_rules_accept_exactly_what_the_specified_patterns_match(data: st.DataObject) -> None:
    # The patterns services/README.md gives for symbols and identities, as regular expressions.
    cases = [
        (SYMBOL, re.compile(rb"[A-Z0-9][A-Z0-9./-]{0,7}\x00*"), b"ABZ09./-", 8),
        (IDENTITY, re.compile(rb"[a-z][a-z0-9-]{0,15}\x00*"), b"abz09-", 16),
    ]
    for (rule, _), pattern, alphabet, width in cases:
        value = data.draw(_text_strategy(alphabet, width))
        assert rule(value) == (pattern.fullmatch(value) is not None), value


@pytest.mark.parametrize(
    ("message", "error", "text"),
    [
        (NewOrder(-1, 1, b"AAPL", 1, 1, 1, 1, 1), ValueError, "NewOrder.client_order_id=-1: out of range"),
        (NewOrder(1, 2**32, b"AAPL", 1, 1, 1, 1, 1), ValueError, "NewOrder.account=4294967296: out of range"),
        (NewOrder(1, 1, b"AAPL", 1, 1, 1, 1, 2**63), ValueError, "NewOrder.price=9223372036854775808"),
        (NewOrder(1, 1, "AAPL", 1, 1, 1, 1, 1), TypeError, "NewOrder.symbol='AAPL': expected bytes"),
        (NewOrder(1, 1, b"AAPL", 1.5, 1, 1, 1, 1), ValueError, "NewOrder.side=1.5: expected an integer"),
    ],
)
def test_encoding_names_the_field_that_cannot_be_packed(message: Any, error: type, text: str) -> None:
    with pytest.raises(error, match=re.escape(text)):
        encode(message)


def test_fuzz_seed_corpus_holds_a_valid_frame_of_every_layout() -> None:
    # The wire fuzz target starts from these; python scripts/fuzz_wire.py --seed-corpus writes them.
    corpus = Path(__file__).resolve().parents[2] / "core" / "fuzz" / "corpus" / "decode"
    decoded_types = {type(decode(path.read_bytes())[0]) for path in sorted(corpus.iterdir())}
    assert decoded_types == {spec.cls for spec in LAYOUTS.values()}
