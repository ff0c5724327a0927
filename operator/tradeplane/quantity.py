"""Kubernetes resource quantities, one parser and one suffix table: `100m`, `0.5`, `1e3`, `129M`, `128Mi`.

The API accepts only integer forms (`QUANTITY_PATTERN`: 8Gi, 512Mi, 2G); what the cluster reports
(allocatable, pod requests) may be any form, so both go through `parse_quantity`, which is exact.
"""

from __future__ import annotations

import re
from fractions import Fraction

QUANTITY_PATTERN = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"
_QUANTITY = re.compile(r"^([+-]?[0-9]*\.?[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_BINARY_SUFFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")
_SUFFIX_VALUES: dict[str, Fraction] = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    **{suffix: Fraction(1000**power) for power, suffix in enumerate(_DECIMAL_SUFFIXES)},
    **{suffix: Fraction(1024**power) for power, suffix in enumerate(_BINARY_SUFFIXES) if suffix},
}


def parse_quantity(text: str) -> Fraction:
    """Any Kubernetes quantity, exactly."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number, suffix = Fraction(match.group(1)), match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _SUFFIX_VALUES[suffix]


def integer_quantity(text: str) -> int:
    """Bytes (or units) in a quantity of the integer forms this API accepts."""
    if not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(f"{text!r} is not a quantity such as 8Gi or 512Mi")
    return int(parse_quantity(text))


def canonical_quantity(text: str) -> str:
    """The form the API server stores an integer quantity in: 8192Mi -> 8Gi, 1000M -> 1G, 1536Mi stays.

    Rendering canonical quantities keeps a rendered manifest field-for-field equal to the stored object,
    so the operator can tell an unchanged child from a drifted one without asking the server.
    """
    value = integer_quantity(text)
    if value == 0:
        return "0"
    binary = text.endswith("i")
    base, suffixes = (1024, _BINARY_SUFFIXES) if binary else (1000, _DECIMAL_SUFFIXES)
    exponent = 0
    while value % base == 0 and exponent < len(suffixes) - 1:
        value //= base
        exponent += 1
    return f"{value}{suffixes[exponent]}"
