"""Hypothesis strategies for wire messages: every field of a layout drawn over its whole range."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tradeplane_services.protocol import Layout

# Tradeable symbols of the default settings beside valid symbols no service knows.
SYMBOLS = st.sampled_from([b"AAPL\0\0\0\0", b"MSFT\0\0\0\0", b"BRK.B\0\0\0", b"X\0\0\0\0\0\0\0", b"ABCDEFGH"])
IDENTITIES = st.sampled_from([b"order", b"risk", b"admin", b"client", b"execution"]).map(
    lambda name: name.ljust(16, b"\0")
)
_INTEGERS = {
    "B": st.integers(0, 2**8 - 1),
    "H": st.integers(0, 2**16 - 1),
    "I": st.integers(0, 2**32 - 1),
    "Q": st.integers(0, 2**64 - 1),
    "q": st.integers(-(2**63), 2**63 - 1),
}


def _field_strategy(spec: Layout, name: str) -> st.SearchStrategy[Any]:
    kind = spec.dtype[name]
    if kind.kind == "S":
        if name == "symbol":
            return SYMBOLS
        if name in ("identity", "service"):
            return st.one_of(IDENTITIES, st.binary(min_size=kind.itemsize, max_size=kind.itemsize))
        return st.binary(min_size=kind.itemsize, max_size=kind.itemsize)
    code = {"u1": "B", "u2": "H", "u4": "I", "u8": "Q", "i8": "q"}[kind.str[1:]]
    rule = spec.checks.get(name, (None, ""))[0]
    members = getattr(rule, "members", None)
    if members is not None:  # an enum field: its members as often as anything else
        return st.one_of(st.sampled_from(sorted(members)), _INTEGERS[code])
    return _INTEGERS[code]


def message_strategy(spec: Layout) -> st.SearchStrategy[Any]:
    names = [name for name in spec.offsets if name not in ("length", "type", "version", "sequence")]
    return st.tuples(*(_field_strategy(spec, name) for name in names)).map(lambda v: spec.cls(*v))
