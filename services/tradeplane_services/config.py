"""Service settings: a YAML file (the operator's ConfigMap, `spec.config`) validated per component, plus env.

The file holds one component's settings at top level, camelCase as in `spec.config`. A missing file means
defaults; an unknown key or a bad value is an error naming the key. Addresses and ports come from the
environment (the operator renders them into the pod), see the package docstring.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tradeplane_services.catalog import BUNDLED, UnknownComponent, component
from tradeplane_services.settings import Settings

DEFAULT_METRICS_PORT = 9100
DEFAULT_CONFIG_PATH = "/etc/tradeplane/config.yaml"
DEFAULT_KEYS_DIR = "/etc/tradeplane-keys"
DEFAULT_STATE_DIR = "/var/lib/tradeplane"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


def parse_settings(name: str, data: Any, source: str) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return component(name).settings.model_validate(data)
    except UnknownComponent as error:
        raise ConfigError(f"{source}: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '<root>'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_settings(component: str, path: Path | None) -> Settings:
    """The component's settings from `path` (absent file: defaults), env overrides applied."""
    data: Any = {}
    if path is not None and path.exists():
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        data = {}
    injected = os.environ.get("TRADEPLANE_INJECT_LATENCY_US")
    if injected and isinstance(data, dict):
        data = {**data, "latencyInjectionMicros": injected}
    return parse_settings(component, data, str(path) if path else "defaults")


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RingAddress:
    """A co-located peer reached over the shared-memory rings in `directory` (ringtransport.py)."""

    directory: Path

    def __str__(self) -> str:
        return f"{RING_SCHEME}{self.directory}"


RING_SCHEME = "shm:"
RING_BYTES = 1 << 20  # each ring's data; its file adds a 4 KiB header, rounded up to whole (huge) pages
RING_HEADER_BYTES = 4096
RING_FILES = 2  # a session's pair: one ring each way


def parse_address(text: str, variable: str) -> Address:
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{variable}={text!r}: expected host:port")
    return Address(host, int(port))


def parse_peer_address(text: str, variable: str, rings: bool = True) -> Address | RingAddress:
    """host:port, or shm:/directory for a peer that serves rings there (absolute: both sides mount it)."""
    if not text.startswith(RING_SCHEME):
        return parse_address(text, variable)
    directory = text.removeprefix(RING_SCHEME)
    if not rings:
        raise ConfigError(f"{variable}={text!r}: expected host:port (this peer is reached over TCP only)")
    if not directory.startswith("/") or directory.rstrip("/") == "":
        raise ConfigError(f"{variable}={text!r}: expected shm:/absolute/directory")
    return RingAddress(Path(directory))


@dataclass(frozen=True)
class Environment:
    """Where a component listens and whom it talks to, from TRADEPLANE_* variables."""

    component: str
    revision: str
    config_path: Path | None
    bind: str
    port: int
    metrics_port: int
    keys_dir: Path = Path(DEFAULT_KEYS_DIR)
    state_dir: Path = Path(DEFAULT_STATE_DIR)  # files a component keeps (the pod's state volume)
    peers: dict[str, Address | RingAddress] = field(default_factory=dict)
    market_data_group: Address | None = None
    event_log: list[str] = field(default_factory=list)  # nats:// URLs of the event log's servers
    event_log_replicas: int = 1  # the stream's and snapshot bucket's replicas, when a service creates them
    replica: str | None = None  # a stable name of this replica (the pod name): risk's lease owner id
    advertise: Address | None = None  # where peers reach this replica, when not bind:port
    ring_dir: Path | None = None  # where it also serves a co-located caller over shared-memory rings

    def advertised_address(self) -> Address:
        if self.advertise is not None:
            return self.advertise
        return Address(self.bind if self.bind != "0.0.0.0" else socket.gethostname(), self.port)

    def peer(self, name: str) -> Address | RingAddress | None:
        return self.peers.get(name)


def parse_event_log(text: str) -> list[str]:
    """TRADEPLANE_EVENT_LOG: comma-separated nats:// (or tls://) URLs of the event log's servers."""
    servers = [part.strip() for part in text.split(",") if part.strip()]
    for server in servers:
        if not server.startswith(("nats://", "tls://")):
            raise ConfigError(f"TRADEPLANE_EVENT_LOG={text!r}: {server!r} is not a nats:// or tls:// URL")
    return servers


def _port(variable: str, default: int, env: dict[str, str]) -> int:
    text = env.get(variable)
    if text is None or text == "":
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{variable}={text!r}: expected a port number 1-65535")
    return int(text)


def _bounded(variable: str, default: int, low: int, high: int, env: dict[str, str]) -> int:
    text = env.get(variable)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(f"{variable}={text!r}: expected a number {low}-{high}")
    return int(text)


def read_environment(name: str, config: str | None, env: dict[str, str] | None = None) -> Environment:
    try:
        entry = component(name)
    except UnknownComponent as error:
        raise ConfigError(str(error)) from None
    env = dict(os.environ) if env is None else env
    config_text = config or env.get("TRADEPLANE_CONFIG") or DEFAULT_CONFIG_PATH
    peers = {
        peer.name: parse_peer_address(env[peer.peer_variable], peer.peer_variable, peer.ring_reachable)
        for peer in BUNDLED.values()
        if env.get(peer.peer_variable)
    }
    group_text = env.get("TRADEPLANE_MARKET_DATA_GROUP")
    group = parse_address(group_text, "TRADEPLANE_MARKET_DATA_GROUP") if group_text else None
    advertise = env.get("TRADEPLANE_ADVERTISE_ADDR")
    return Environment(
        component=name,
        revision=env.get("TRADEPLANE_REVISION") or "dev",
        config_path=Path(config_text),
        bind=env.get("TRADEPLANE_BIND") or "0.0.0.0",
        port=_port("TRADEPLANE_PORT", entry.port, env),
        metrics_port=_port("TRADEPLANE_METRICS_PORT", DEFAULT_METRICS_PORT, env),
        keys_dir=Path(env.get("TRADEPLANE_KEYS_DIR") or DEFAULT_KEYS_DIR),
        state_dir=Path(env.get("TRADEPLANE_STATE_DIR") or DEFAULT_STATE_DIR),
        peers=peers,
        market_data_group=group,
        event_log=parse_event_log(env.get("TRADEPLANE_EVENT_LOG") or ""),
        event_log_replicas=_bounded("TRADEPLANE_EVENT_LOG_REPLICAS", 1, 1, 5, env),
        replica=env.get("TRADEPLANE_REPLICA") or None,
        advertise=parse_address(advertise, "TRADEPLANE_ADVERTISE_ADDR") if advertise else None,
        ring_dir=_ring_dir(env.get("TRADEPLANE_RING_DIR")),
    )


def _ring_dir(text: str | None) -> Path | None:
    if not text:
        return None
    if not text.startswith("/"):
        raise ConfigError(f"TRADEPLANE_RING_DIR={text!r}: expected an absolute directory")
    return Path(text)
