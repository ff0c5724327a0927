"""Allocations per operation of the Rust core's hot paths in steady state, as core/src/steady_state.rs
counts them (a counting global allocator in the core's test binary, 1,000,000 operations after a
10,000-operation warm-up): wire encode + decode of orders into reused buffers, the shared-memory ring's
push + pop, histogram record, and, as the baseline that shows the counter counts, the decode of a refused
frame (which builds its error text). The test binary is compiled by scripts/bootstrap.

The matching book is not counted here: each of its operations builds Python objects (the event list and
VenueEvents), which a test binary without an interpreter cannot run.
Usage: python bench/core_allocations.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
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
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if run.returncode != 0:
        print(run.stdout + run.stderr, file=sys.stderr)
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
