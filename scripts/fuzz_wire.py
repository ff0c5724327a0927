"""Runs the wire decoder's libFuzzer target (core/fuzz/fuzz_targets/decode.rs) for a bounded time.

scripts/bootstrap builds the target; scripts/test runs it from the seed corpus in core/fuzz/corpus/ (valid
frames of every layout), with the layouts of `protocol.py` written where the target reads them. New inputs
go to a scratch directory, never into the checked-in corpus; a failing input is kept and named.
Usage: python scripts/fuzz_wire.py [--seconds N] [BINARY]   (default: wire-decode-fuzz on PATH, in .venv/bin)
       python scripts/fuzz_wire.py --seed-corpus   (writes core/fuzz/corpus/decode/ anew from protocol.py)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tradeplane_services import protocol

ROOT = Path(__file__).resolve().parent.parent
TARGET = "wire-decode-fuzz"
CORPUS = ROOT / "core" / "fuzz" / "corpus" / "decode"  # where `cargo fuzz run decode` looks too


def write_seed_corpus() -> None:
    """One valid frame per fixed layout (the smallest that decodes) and batches of 0 and 3 ticks."""
    # Only this mode needs hypothesis and the tests' strategies.
    sys.path.insert(0, str(ROOT / "tests"))
    from hypothesis import find

    from wire_strategies import message_strategy

    def accepted(message: object) -> bool:
        try:
            protocol.decode(protocol.encode(message))
        except (protocol.ProtocolError, ValueError, TypeError):
            return False
        return True

    shutil.rmtree(CORPUS, ignore_errors=True)
    CORPUS.mkdir(parents=True)
    for spec in protocol.LAYOUTS.values():
        if spec.record_size:
            continue
        message = find(message_strategy(spec), accepted)
        (CORPUS / spec.cls.__name__).write_bytes(protocol.encode(message, spec.type_id))
    ticks = np.zeros(3, dtype=protocol.TICK_DTYPE)
    ticks["symbol"] = b"AAPL"
    ticks["bid_price"], ticks["ask_price"], ticks["bid_quantity"] = 1_000_000, 1_000_100, 100
    for count in (0, 3):
        frame = protocol.encode_batch(ticks[:count], 7 + count, 0, 1, 1_700_000_000_000_000_000)
        (CORPUS / f"MarketDataBatch-{count}").write_bytes(frame)
    print(f"wrote {len(list(CORPUS.iterdir()))} frames to {CORPUS}")


def fuzz(binary: Path, seconds: int) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="tradeplane-fuzz-wire-"))
    layouts = scratch / "layouts.tsv"
    layouts.write_text(protocol.describe_codec())
    (scratch / "found").mkdir()
    command = [
        str(binary), f"-max_total_time={seconds}", "-timeout=5", "-print_final_stats=1",
        f"-artifact_prefix={scratch}/", str(scratch / "found"), str(CORPUS),
    ]  # fmt: skip
    print(f"fuzzing the wire decoder for {seconds} s: TRADEPLANE_WIRE_LAYOUTS={layouts} {' '.join(command)}")
    log = scratch / "fuzz.log"
    with log.open("w") as output:
        status = subprocess.run(
            command, env={**os.environ, "TRADEPLANE_WIRE_LAYOUTS": str(layouts)}, stdout=output, stderr=output
        ).returncode
    lines = log.read_text(errors="replace").splitlines()
    if status != 0:
        print("\n".join(lines[-60:]), file=sys.stderr)
        print(
            f"the wire fuzz target failed (exit {status}); its input and log are in {scratch}",
            file=sys.stderr,
        )
        return 1
    print("\n".join(line for line in lines if line.startswith(("Done", "stat::number_of_executed_units"))))
    shutil.rmtree(scratch)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", nargs="?", help="the decode target scripts/bootstrap built")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--seed-corpus", action="store_true", help="write the seed corpus anew")
    arguments = parser.parse_args()
    if arguments.seed_corpus:
        write_seed_corpus()
        return 0
    binary = arguments.binary or shutil.which(TARGET)
    if binary is None:
        parser.error(f"{TARGET} is not on PATH: scripts/bootstrap builds it into .venv/bin")
    return fuzz(Path(binary), arguments.seconds)


if __name__ == "__main__":
    sys.exit(main())
