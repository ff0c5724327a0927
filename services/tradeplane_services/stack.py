"""The whole stack as local processes: `tradeplane-svc stack`, and the same for tests and benchmarks.

Each component runs as its own `python -m tradeplane_services <component>` process on one host address,
wired through TRADEPLANE_* variables exactly as the operator wires pods, beside a nats-server with
JetStream (the event log) on the same address. Session keys are generated into `keys_dir` (default: the
workdir's `keys`) unless it holds them already; clients use the same directory. Market data goes to a
multicast group derived from the host address (so stacks on different loopback addresses stay apart).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tradeplane_services.catalog import BUNDLED, start_order
from tradeplane_services.config import Address, ConfigError, RingAddress, parse_settings
from tradeplane_services.eventlog import STREAM
from tradeplane_services.natsserver import NatsServers
from tradeplane_services.sessions import Credentials, Keyring, generate_keyring

START_ORDER = start_order()
# Beside the wire ports: 7001 serves its metrics on 9101, and so on.
METRICS_PORT_SHIFT = 2100
REPLICA_PORT_STEP = 100  # replica n of a component listens n * 100 above the first one's ports


def parse_replica_name(name: str) -> tuple[str, int]:
    """`risk-1` is replica 1 of risk; a component's first replica is named after it."""
    component, _, number = name.rpartition("-")
    if number.isdigit() and component in BUNDLED:
        return component, int(number)
    return name, 0


def multicast_group_for(host: str) -> Address:
    octets = [int(part) for part in host.split(".")] if host.count(".") == 3 else [0, 0, 0, 1]
    return Address(f"239.255.{octets[2]}.{octets[3]}", 17003)


def load_stack_config(path: Path | None) -> dict[str, dict[str, Any]]:
    """Per-component settings from one file with a section per component; each section is validated."""
    if path is None:
        return {component: {} for component in BUNDLED}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a section per component")
    unknown = sorted(set(data) - set(BUNDLED))
    if unknown:
        raise ConfigError(f"{path}: unknown sections {unknown}; expected some of {list(BUNDLED)}")
    sections = {component: data.get(component) or {} for component in BUNDLED}
    for component, section in sections.items():
        parse_settings(component, section, f"{path}: {component}")
    return sections


@dataclass
class Stack:
    """The bundled service processes and the event log on `host`; start(), wait_ready(), kill()/restart() one,
    stop(). `events` is the event log's nats-server(s): kill and restart them through it."""

    host: str
    workdir: Path
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    revision: str = "dev"
    multicast: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    keys_dir: Path | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    event_log_servers: int = 1
    co_located: tuple[str, ...] = ()
    """Components whose callers reach them over shared-memory rings (`ring_dir`) instead of TCP."""

    def __post_init__(self) -> None:
        self.events = NatsServers(self.host, self.workdir / "eventlog", self.event_log_servers)
        if self.keys_dir is None:
            self.keys_dir = self.workdir / "keys"
        self.keyring: Keyring = generate_keyring(self.keys_dir)

    def credentials(self, identity: str) -> Credentials:
        return Credentials(identity, self.keyring)

    def address(self, name: str) -> Address:
        """Where a component (or replica, `risk-1`) listens for sessions."""
        component, replica = parse_replica_name(name)
        return Address(self.host, BUNDLED[component].port + REPLICA_PORT_STEP * replica)

    def ring_dir(self, name: str) -> Path:
        """Where a co-located component serves its rings (on a pod: the shared volume's mount)."""
        return self.workdir / "rings" / name

    def peer_address(self, name: str) -> str:
        """What callers of `name` are given: shm:/directory when co-located, host:port otherwise."""
        if name in self.co_located:
            return str(RingAddress(self.ring_dir(name)))
        return str(self.address(name))

    def metrics_port(self, name: str) -> int:
        return self.address(name).port + METRICS_PORT_SHIFT

    def metrics_url(self, name: str, path: str = "/metrics") -> str:
        return f"http://{self.host}:{self.metrics_port(name)}{path}"

    def environment(self, name: str) -> dict[str, str]:
        component, _ = parse_replica_name(name)
        config = self.workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump(self.settings.get(component) or {}))
        env = {
            **os.environ,
            "TRADEPLANE_CONFIG": str(config),
            "TRADEPLANE_REVISION": self.revision,
            "TRADEPLANE_REPLICA": name,
            "TRADEPLANE_BIND": self.host,
            "TRADEPLANE_PORT": str(self.address(name).port),
            "TRADEPLANE_METRICS_PORT": str(self.metrics_port(name)),
            "TRADEPLANE_KEYS_DIR": str(self.keys_dir),
            "TRADEPLANE_STATE_DIR": str(self.workdir / name),
            **{peer.peer_variable: self.peer_address(peer.name) for peer in BUNDLED.values()},
            "TRADEPLANE_EVENT_LOG": self.events.url,
            "TRADEPLANE_EVENT_LOG_REPLICAS": str(self.event_log_servers),
            **self.extra_env,
        }
        if name in self.co_located:
            env["TRADEPLANE_RING_DIR"] = str(self.ring_dir(name))
        if self.multicast:
            env["TRADEPLANE_MARKET_DATA_GROUP"] = str(multicast_group_for(self.host))
        else:
            env.pop("TRADEPLANE_MARKET_DATA_GROUP", None)
        return env

    def start(self, components: tuple[str, ...] = START_ORDER) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.events.processes:
            self.events.start()
            self.events.wait_ready()
        for component in components:
            self.start_one(component)

    def start_one(self, name: str) -> None:
        """Start a component, or another replica of one (`risk-1`: ports 100 above the first's)."""
        log_file = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "tradeplane_services", parse_replica_name(name)[0]],
            env=self.environment(name),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()

    def ready(self, component: str) -> bool:
        try:
            with urllib.request.urlopen(self.metrics_url(component, "/readyz"), timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0, components: tuple[str, ...] = START_ORDER) -> None:
        deadline = time.monotonic() + timeout
        for component in components:
            while not self.ready(component):
                process = self.processes.get(component)
                if process is not None and process.poll() is not None:
                    raise RuntimeError(
                        f"{component} exited with {process.returncode}:\n{self.log_tail(component)}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{component} not ready after {timeout}s:\n{self.log_tail(component)}")
                time.sleep(0.05)

    def status(self, component: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.metrics_url(component, "/status"), timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def log_tail(self, component: str, lines: int = 30) -> str:
        path = self.workdir / f"{component}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kill(self, component: str, signum: int = signal.SIGKILL, timeout: float = 30.0) -> int:
        process = self.processes.pop(component)
        process.send_signal(signum)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def stop(self) -> dict[str, int]:
        """SIGTERM every process, order first (so it drains while its peers still answer)."""
        codes = {}
        for component in reversed(START_ORDER):
            for name in [n for n in self.processes if parse_replica_name(n)[0] == component]:
                codes[name] = self.kill(name, signal.SIGTERM)
        self.events.stop()
        return codes


def run_stack(host: str, config: Path | None, workdir: Path, revision: str) -> int:
    """`tradeplane-svc stack`: start, print where things are, stop everything on Ctrl-C."""
    try:
        settings = load_stack_config(config)
    except ConfigError as error:
        print(f"tradeplane-svc stack: {error}", file=sys.stderr)
        return 2
    stack = Stack(host, workdir, settings, revision)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    stack.start()
    try:
        stack.wait_ready()
    except (RuntimeError, TimeoutError) as error:
        print(f"tradeplane-svc stack: {error}", file=sys.stderr)
        stack.stop()
        return 1
    print(f"stack up on {host} (logs and state in {workdir}):")
    print(f"  {'event log':<12} {stack.events.url}   stream {STREAM}")
    for component in START_ORDER:
        print(f"  {component:<12} wire {stack.address(component)}   http {stack.metrics_url(component, '/')}")
    print(f"session keys: export TRADEPLANE_KEYS_DIR={stack.keys_dir}")
    print(f"send orders:  tradeplane-svc client --order {stack.address('order')}")
    print(
        f"watch fills:  tradeplane-svc client demo --order {stack.address('order')}"
        f" --position {stack.address('position')}"
    )
    while not stopping:
        for component, process in stack.processes.items():
            if process.poll() is not None:
                print(f"{component} exited with {process.returncode}; stopping the stack", file=sys.stderr)
                print(stack.log_tail(component), file=sys.stderr)
                stack.stop()
                return 1
        time.sleep(0.2)
    codes = stack.stop()
    print("stack stopped: " + ", ".join(f"{c} exit {code}" for c, code in codes.items()))
    return 0 if not any(codes.values()) else 1
