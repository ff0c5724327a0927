"""Compiles the Rust core (core/) into CARGO_TARGET_DIR with the build progress the Go binaries show.

scripts/bootstrap runs it before `pip install -e .`, with the same cargo command and environment
setuptools-rust uses, so that install finds every crate compiled and only links the extension.
Usage: PYTHONPATH=operator .venv/bin/python scripts/build_core.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tradeplane.cluster.progress import BuildProgress

MANIFEST = Path(__file__).resolve().parent.parent / "core" / "Cargo.toml"
GROUP = "core"
# What setuptools-rust runs for a PyO3 extension-module in release mode (pyproject.toml).
BUILD = [
    "cargo", "rustc", "--lib", "--message-format=json-render-diagnostics", "--manifest-path", str(MANIFEST),
    "--release", "--features", "pyo3/extension-module", "--crate-type", "cdylib",
]  # fmt: skip


def _environment() -> dict[str, str]:
    # The interpreter pyo3's build script configures for, as setuptools-rust sets it.
    return {**os.environ, "PYO3_PYTHON": sys.executable, "PYO3_BUILD_EXTENSION_MODULE": "1"}


def _crate_count(environment: dict[str, str]) -> tuple[str, int]:
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--manifest-path", str(MANIFEST)],
            check=True, capture_output=True, text=True, env=environment,
        ).stdout
    )  # fmt: skip
    root = next(p for p in metadata["packages"] if p["id"] == metadata["resolve"]["root"])
    return root["version"], len(metadata["resolve"]["nodes"])


def _failed(what: str, command: list[str], output: str) -> int:
    print(f"{what} failed: {' '.join(command)}\n{output}", file=sys.stderr)
    return 1


def _compile(environment: dict[str, str], progress: BuildProgress) -> int:
    # Cargo's own messages (diagnostics included) go to a file, shown only if the build fails.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(BUILD, env=environment, stdout=subprocess.PIPE, stderr=log, text=True)
        compiled: set[str] = set()
        for line in process.stdout or ():
            message = json.loads(line)
            if message.get("reason") == "compiler-artifact" and message["package_id"] not in compiled:
                compiled.add(message["package_id"])
                progress.compiled(GROUP, message["target"]["name"])
        if process.wait() != 0:
            log.seek(0)
            return _failed("building the Rust core", BUILD, log.read())
    return 0


def main() -> int:
    environment = _environment()
    fetch = ["cargo", "fetch", "--manifest-path", str(MANIFEST)]
    with BuildProgress.for_terminal(sys.stderr) as progress:
        version, crates = _crate_count(environment)
        progress.start([(GROUP, version, ["tradeplane_services._wire"])], source="crates.io")
        progress.fetching(GROUP)
        fetched = subprocess.run(fetch, env=environment, capture_output=True, text=True)
        if fetched.returncode != 0:
            return _failed("fetching the Rust core's crates", fetch, fetched.stderr)
        progress.fetched(GROUP, crates)
        started = time.monotonic()
        progress.compiling(GROUP)
        if _compile(environment, progress) != 0:
            return 1
        progress.built(GROUP, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
