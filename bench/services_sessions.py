"""What authenticated sessions cost: at logon, and per message after it.

At logon: N sessions opened one after another against the order service (connect, Challenge, Logon,
LogonAck), beside N bare connects that only read the Challenge; and the HMAC-SHA256 proof alone.

Per message: after the logon a session's handlers are those its identity was granted, so nothing is added
per message. To show it rather than say it, `--baseline DIR` runs the same open-loop order-entry load
against the stack of another checkout (e.g. a tree without sessions: its `services/` directory), both as
processes of their own, alternating runs, and prints both: latency, and the CPU time the five service
processes used per order (which a busy machine disturbs far less than latency).

    python bench/services_sessions.py
    python bench/services_sessions.py --baseline /path/to/other/checkout/services --rate 10000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from tradeplane_services.client import WireClient
from tradeplane_services.protocol import Challenge, StreamDecoder
from tradeplane_services.sessions import identity_bytes, logon_proof
from tradeplane_services.stack import Stack

HOST = "127.77.250.2"
BASELINE_HOST = "127.77.250.3"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50:7.1f}us p99 {p99:7.1f}us"


def bare_connect(stack: Stack) -> float:
    started = time.perf_counter()
    with socket.create_connection((stack.host, stack.address("order").port), timeout=5) as sock:
        decoder = StreamDecoder()
        while not decoder.feed(sock.recv(4096)):
            pass
    return (time.perf_counter() - started) * 1e6


def logged_on(stack: Stack) -> float:
    started = time.perf_counter()
    WireClient(stack.address("order"), creds=stack.credentials("client")).close()
    return (time.perf_counter() - started) * 1e6


def load(python_path: str, host: str, workdir: Path, rate: float, seconds: float) -> dict[str, float]:
    """One loadgen run, as its own process, against the stack of the checkout at `python_path`."""
    env = {**os.environ, "PYTHONPATH": python_path, "TRADEPLANE_KEYS_DIR": str(workdir / "keys")}
    command = [sys.executable, "-m", "tradeplane_services", "loadgen", "--target", f"{host}:7001"]
    command += ["--rate", str(rate), "--seconds", str(seconds), "--passive", "--json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"loadgen against {python_path}: {result.stdout[-500:]} {result.stderr[-2000:]}")
    latency: dict[str, float] = json.loads(result.stdout)["latency_us"]
    return latency


def stack_cpu_seconds(stack: subprocess.Popen[bytes]) -> float:
    """CPU time (user + system) used so far by the service processes of a `tradeplane-svc stack`."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == stack.pid:  # ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def start_stack(python_path: str, host: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": python_path}
    command = [
        sys.executable,
        "-m",
        "tradeplane_services",
        "stack",
        "--host",
        host,
        "--workdir",
        str(workdir),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(b"stack up"):
            return process
    raise RuntimeError(f"the stack of {python_path} did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logons", type=int, default=300)
    parser.add_argument("--baseline", help="services/ directory of a checkout to compare order entry with")
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv), flush=True)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")

    key = os.urandom(32)
    challenge = Challenge(os.urandom(16), identity_bytes("order"))
    identity, nonce = identity_bytes("client"), os.urandom(16)
    runs = 100_000
    proof_us = timeit.timeit(lambda: logon_proof(key, challenge, identity, nonce), number=runs) / runs * 1e6
    print(
        f"HMAC-SHA256 logon proof: {proof_us:.2f}us (the service computes one per key it tries, the peer one)"
    )

    with tempfile.TemporaryDirectory(prefix="tradeplane-bench-") as scratch:
        stack = Stack(HOST, Path(scratch) / "sessions", {"market-data": {"ticksPerSecond": 1000}})
        stack.start()
        try:
            stack.wait_ready()
            bare = [bare_connect(stack) for _ in range(arguments.logons)]
            logons = [logged_on(stack) for _ in range(arguments.logons)]
            print(f"connect + Challenge, {arguments.logons} times:        {percentiles(bare)}")
            print(f"connect + full logon, {arguments.logons} times:       {percentiles(logons)}")
        finally:
            stack.stop()

        if arguments.baseline:
            ours = str(Path(__file__).resolve().parents[1] / "services")
            stacks = {
                "sessions": (ours, HOST, Path(scratch) / "ours"),
                "baseline": (arguments.baseline, BASELINE_HOST, Path(scratch) / "baseline"),
            }
            processes = {label: start_stack(*where) for label, where in stacks.items()}
            try:
                time.sleep(1.0)
                results: dict[str, list[dict[str, float]]] = {label: [] for label in stacks}
                orders = arguments.rate * arguments.seconds
                for _ in range(arguments.runs):
                    for label, where in stacks.items():
                        # CPU per order, unlike latency, hardly moves with what else the machine runs.
                        before = stack_cpu_seconds(processes[label])
                        latency = load(*where, arguments.rate, arguments.seconds)
                        latency["cpu"] = (stack_cpu_seconds(processes[label]) - before) / orders * 1e6
                        results[label].append(latency)
                        print(
                            f"  {label:<8} {arguments.rate:.0f}/s passive orders: "
                            f"p50 {latency['p50']:7.1f}us p99 {latency['p99']:7.1f}us "
                            f"p99.9 {latency['p99.9']:7.1f}us; stack CPU {latency['cpu']:6.1f}us/order",
                            flush=True,
                        )
                for label, latencies in results.items():
                    medians = {p: statistics.median(r[p] for r in latencies) for p in ("p50", "p99", "cpu")}
                    print(
                        f"median of runs, {label:<8}: p50 {medians['p50']:.1f}us p99 {medians['p99']:.1f}us "
                        f"CPU {medians['cpu']:.1f}us/order (all five services, market data included)"
                    )
            finally:
                for process in processes.values():
                    process.send_signal(signal.SIGINT)
                    process.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
