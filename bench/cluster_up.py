"""Warm `tradeplane cluster up` until every node is Ready, and (with --cold) the binaries' cold build.

Runs a second cluster beside any running one (own state dir, ports shifted), so it is safe on a dev box.
    python bench/cluster_up.py --runs 5          # warm start, median of 5
    python bench/cluster_up.py --cold            # also every binary's build with empty Go and binary caches
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _run(env: dict[str, str], *args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "tradeplane.cli", "cluster", *args],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also time a build into an empty cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
        env = {**os.environ, "TRADEPLANE_STATE": f"{scratch}/state", "TRADEPLANE_PORT_OFFSET": "1000"}
        env.pop("KUBECONFIG", None)
        if args.cold:
            cold_env = {
                **env,
                "TRADEPLANE_CACHE": f"{scratch}/cache",
                "GOMODCACHE": f"{scratch}/gomod",
                "GOCACHE": f"{scratch}/gobuild",
            }
            started = time.monotonic()
            build = subprocess.run(
                [sys.executable, "-m", "tradeplane.cluster.toolchain"],
                env=cold_env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            seconds = time.monotonic() - started
            subprocess.run(["chmod", "-R", "u+w", f"{scratch}/gomod"], check=False)
            for line in build.stderr.splitlines():
                if "built in" in line or "modules fetched" in line:
                    print(f"  {line.strip()}")
            print(f"cold build of every binary (empty Go module, build and binary caches): {seconds:.0f} s")
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "tradeplane.cluster.toolchain"], env=cold_env, check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            again = time.monotonic() - started
            print(f"set-up again with everything cached (what every later run pays): {again:.1f} s")
        _run(env, "up")  # builds nothing when cached; the first start also writes the PKI
        _run(env, "down")
        timings = []
        for _ in range(args.runs):
            timings.append(_run(env, "up"))
            _run(env, "down")
    print(
        f"warm cluster up to all nodes Ready: median {statistics.median(timings):.1f} s "
        f"over {len(timings)} runs (min {min(timings):.1f}, max {max(timings):.1f}); goal < 20 s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
