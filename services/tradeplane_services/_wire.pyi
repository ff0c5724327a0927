"""Types of the compiled wire codec (core/, built by setuptools-rust); protocol.py is its Python API."""

from collections.abc import Callable
from typing import Any

from tradeplane_services.protocol import Item

HEADER_SIZE: int
MAX_FRAME_SIZE: int

class Rule:
    members: frozenset[int] | None
    @staticmethod
    def one_of(members: list[int]) -> Rule: ...
    @staticmethod
    def above(bound: int) -> Rule: ...
    @staticmethod
    def padded_text(first: bytes, rest: bytes, longest: int) -> Rule: ...
    def __call__(self, value: Any) -> bool: ...

class Codec:
    def __init__(
        self,
        version: int,
        layouts: list[
            tuple[int, type, list[str], str, int, list[tuple[int, Rule, str]], list[tuple[int, int]]]
        ],
        protocol_error: type[Exception],
        reason: Callable[[int], Any],
        frame_error: Callable[..., Any],
        frame_run: Callable[..., Any],
        decode_ticks: Callable[..., Any],
    ) -> None: ...
    def encode(self, message: tuple[Any, ...], sequence: int = 0) -> bytes: ...
    def encode_batch(
        self, layout_id: int, ticks: Any, count: int, sequence: int, flags: int, channel: int, now_ns: int
    ) -> bytes: ...
    def decode(self, frame: bytes | bytearray | memoryview) -> tuple[Any, int]: ...
    def decode_body(
        self, buffer: bytes | bytearray | memoryview, offset: int, length: int, type_id: int
    ) -> Any: ...

class StreamDecoder:
    batch_types: dict[int, int]
    failed: bool
    def __init__(self, batch_types: dict[int, int] | None = None) -> None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[Item]: ...

def install(codec: Codec) -> None: ...
