"""Wire codec throughput: the compiled codec (tradeplane_services.protocol, Rust) against the Python codec
it replaced, both in this process, in one run (ratios of medians).

The Python codec is protocol.py as of the commit before the Rust core (found in git history, or
--baseline REV), copied into a temporary directory and imported on its own; nothing of it stays in the
package. Each workload runs --runs times per codec, alternating, for about --seconds each; the figures are
medians of messages (or ticks) per second.

    python bench/wire_codec.py
    python bench/wire_codec.py --runs 7 --seconds 0.5 --baseline 00ad0c3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tradeplane_services import protocol as compiled

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = "services/tradeplane_services/protocol.py"


def baseline_revision() -> str:
    """The commit just before the Rust core was added."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "core/Cargo.toml"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return f"{added[-1]}^"


def load_python_codec(revision: str, directory: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{revision}:{PROTOCOL}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = directory / "python_protocol.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("python_protocol", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module of their annotations
    spec.loader.exec_module(module)
    return module


Workload = Callable[[ModuleType], tuple[Callable[[], Any], int]]  # codec -> (one call, items per call)


def _risk_check(codec: ModuleType) -> Any:
    return codec.RiskCheck(123456, 42, codec.symbol_bytes("AAPL"), 1, 1, 100, 1_900_000, 0)


def _report(codec: ModuleType) -> Any:
    symbol = codec.symbol_bytes("MSFT")
    return codec.ExecutionReport(7, 123456, 3, 3, 0, symbol, 1, 50, 4_200_000, 50, 50, 4_200_000)


def _new_order(codec: ModuleType) -> Any:
    return codec.NewOrder(7, 42, codec.symbol_bytes("AAPL"), 1, 1, 1, 100, 1_900_000)


def encode_workload(build: Callable[[ModuleType], Any]) -> Workload:
    def prepare(codec: ModuleType) -> tuple[Callable[[], Any], int]:
        message, encode = build(codec), codec.encode
        return (lambda: encode(message, 99)), 1

    return prepare


def decode_workload(build: Callable[[ModuleType], Any]) -> Workload:
    def prepare(codec: ModuleType) -> tuple[Callable[[], Any], int]:
        frame, decode = codec.encode(build(codec), 99), codec.decode
        return (lambda: decode(frame)), 1

    return prepare


def stream_workload(codec: ModuleType) -> tuple[Callable[[], Any], int]:
    """A session's receive path: 64 KiB chunks of mixed order-flow frames, split and decoded."""
    builders = (_new_order, _risk_check, _report) * 400
    frames = [codec.encode(build(codec), sequence) for sequence, build in enumerate(builders)]
    stream = b"".join(frames)
    chunks = [stream[start : start + 65536] for start in range(0, len(stream), 65536)]

    def feed() -> None:
        decoder = codec.StreamDecoder()
        for chunk in chunks:
            decoder.feed(chunk)

    return feed, len(frames)


def _ticks(codec: ModuleType, count: int) -> Any:
    ticks = np.zeros(count, dtype=codec.TICK_DTYPE)
    ticks["symbol"] = b"AAPL"
    ticks["last_price"] = np.arange(count) + 1_900_000
    return ticks


def batch_encode_workload(count: int) -> Workload:
    def prepare(codec: ModuleType) -> tuple[Callable[[], Any], int]:
        ticks, encode_batch = _ticks(codec, count), codec.encode_batch
        return (lambda: encode_batch(ticks, 5, 0, 1, 123)), count

    return prepare


def batch_decode_workload(count: int) -> Workload:
    def prepare(codec: ModuleType) -> tuple[Callable[[], Any], int]:
        frame, decode = codec.encode_batch(_ticks(codec, count), 5, 0, 1, 123), codec.decode
        return (lambda: decode(frame)), count

    return prepare


WORKLOADS: dict[str, Workload] = {
    "encode RiskCheck": encode_workload(_risk_check),
    "decode RiskCheck": decode_workload(_risk_check),
    "encode NewOrder": encode_workload(_new_order),
    "decode NewOrder": decode_workload(_new_order),
    "encode ExecutionReport": encode_workload(_report),
    "decode ExecutionReport": decode_workload(_report),
    "stream 1200 order-flow frames": stream_workload,
    "encode_batch 30 ticks (ticks/s)": batch_encode_workload(30),
    "decode batch 30 ticks (ticks/s)": batch_decode_workload(30),
    "decode batch 1364 ticks (ticks/s)": batch_decode_workload(1364),
}


def rate(call: Callable[[], Any], items: int, seconds: float) -> float:
    """Items per second over about `seconds` of back-to-back calls."""
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(64):
            call()
        calls += 64
        now = time.perf_counter()
        if now >= deadline:
            return calls * items / (now - started)


def human(value: float) -> str:
    return f"{value / 1e6:.2f}M/s" if value >= 1e6 else f"{value / 1e3:.0f}k/s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--baseline", help="the revision of the Python codec (default: before core/)")
    args = parser.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    revision = args.baseline or baseline_revision()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="wire-codec-bench-") as scratch:
        python = load_python_codec(revision, Path(scratch))
        print(f"Python codec: {PROTOCOL} at {revision}; compiled codec: this checkout")
        print(f"{'workload':36} {'Python':>10} {'Rust':>10} {'ratio':>7}   (medians of {args.runs} runs)")
        for name, workload in WORKLOADS.items():
            calls = {"python": workload(python), "rust": workload(compiled)}
            rates: dict[str, list[float]] = {"python": [], "rust": []}
            for _ in range(args.runs):
                for codec, (call, items) in calls.items():
                    rates[codec].append(rate(call, items, args.seconds))
            slow, fast = statistics.median(rates["python"]), statistics.median(rates["rust"])
            print(f"{name:36} {human(slow):>10} {human(fast):>10} {fast / slow:6.2f}x", flush=True)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
