"""Allocations per operation of the Rust core's hot paths in steady state, as core/src/steady_state.rs
counts them (a counting global allocator in the core's test binary, 1,000,000 operations after a
10,000-operation warm-up): wire encode + decode of orders into reused buffers, the shared-memory ring's
push + pop, histogram record, a risk check and its release, an order's lifecycle in the order book (new,
risk OK, fill; its session's set of used client order ids grows by doubling), and, as the baseline that
shows the counter counts, the decode of a refused frame (which builds its error text). The test binary is
compiled by scripts/bootstrap.

The matching book builds Python objects (the event list and VenueEvents) in every operation, which a test
binary without an interpreter cannot run: it is counted through its Python API instead, in a child process
with bench/malloc_count.c preloaded (compiled by scripts/bootstrap), which counts malloc, calloc and
realloc calls. Python's small objects (the events) come from its arenas and make no calls; the book's Rust
storage does. The same loop calling nothing is the baseline. Two loads: a book whose price levels stay few
(steady state), and one that opens 1,000 new price levels and empties them again, over and over.
Usage: python bench/core_allocations.py
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MALLOC_COUNT = ROOT / ".venv" / "lib" / "malloc_count.so"
ROUNDS = 100_000


def _steady_rounds(
    submit: Callable[..., object], cancel: Callable[..., object], start: int, rounds: int
) -> int:
    """Per round at one of 20 prices: two resting buys, a sell trading the first, a cancel of the second."""
    owner, symbol = object(), b"AAPL\0\0\0\0"
    for index in range(start, start + rounds):
        price = 1_000_000 + (index % 20) * 100
        submit(owner, 3 * index, 1, symbol, 1, 1, 1, 10, price)
        submit(owner, 3 * index + 1, 1, symbol, 1, 1, 1, 10, price - 50)
        submit(owner, 3 * index + 2, 1, symbol, 2, 1, 1, 10, price)
        cancel(owner, 3 * index + 1)
    return 4 * rounds


def _level_swings(
    submit: Callable[..., object], cancel: Callable[..., object], start: int, rounds: int
) -> int:
    """Per round of 1,000: a buy at each of 1,000 new prices, then the 1,000 canceled (the levels go)."""
    owner, symbol = object(), b"AAPL\0\0\0\0"
    for base in range(start, start + rounds, 1000):
        for index in range(base, base + 1000):
            submit(owner, index, 1, symbol, 1, 1, 1, 10, 1_000_000 + (index - base) * 100)
        for index in range(base, base + 1000):
            cancel(owner, index)
    return 2 * rounds


LOADS = {"steady": _steady_rounds, "level-swings": _level_swings}


def _counted_child(load: str, which: str) -> None:
    """In the child: warm up, then ROUNDS rounds; prints the operations and the calls counted."""
    from tradeplane_services.matching import MatchingEngine

    book = MatchingEngine()
    calls = ctypes.CDLL(None).tp_malloc_calls
    calls.restype = ctypes.c_ulong
    submit, cancel = (book.submit, book.cancel) if which == "book" else (_nothing, _nothing)
    LOADS[load](submit, cancel, 0, 20_000)
    before = calls()
    operations = LOADS[load](submit, cancel, 20_000, ROUNDS)
    print(operations, calls() - before)


def _nothing(*arguments: object) -> list[object]:
    return []


def matching_book() -> None:
    print(
        f"command: LD_PRELOAD={MALLOC_COUNT} {sys.executable} {__file__} --counted-child LOAD book|baseline"
    )
    for load in LOADS:
        counts = {}
        for which in ("baseline", "book"):
            child = [sys.executable, __file__, "--counted-child", load, which]
            output = subprocess.run(
                child,
                env={**os.environ, "LD_PRELOAD": str(MALLOC_COUNT)},
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            operations, counts[which] = int(output[0]), int(output[1])
        added = counts["book"] - counts["baseline"]
        print(
            f"steady state: matching book, {load}: {added} malloc/calloc/realloc calls in {operations} "
            f"operations ({added / operations:g} per operation; {counts['book']} with the book, "
            f"{counts['baseline']} baseline)"
        )


def main() -> int:
    if sys.argv[1:2] == ["--counted-child"]:
        _counted_child(sys.argv[2], sys.argv[3])
        return 0
    cache = Path(
        os.environ.get("TRADEPLANE_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "tradeplane"
    )
    environment = {**os.environ, "CARGO_TARGET_DIR": str(cache.expanduser() / "cargo" / "core-tests")}
    command = [
        "cargo", "test", "--release", "--quiet", "--manifest-path", str(ROOT / "core" / "Cargo.toml"),
        "steady_state", "--", "--nocapture", "--test-threads=1",
    ]  # fmt: skip
    print(f"command: CARGO_TARGET_DIR={environment['CARGO_TARGET_DIR']} {' '.join(command)}")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    run = subprocess.run(command, env=environment, capture_output=True, text=True)
    figures = [line.lstrip(".") for line in run.stdout.splitlines() if "steady state:" in line]
    print("\n".join(figures))
    matching_book()
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if run.returncode != 0:
        print(run.stdout + run.stderr, file=sys.stderr)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
