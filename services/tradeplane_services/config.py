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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tradeplane_services.protocol import KillSwitchState, symbol_bytes

COMPONENTS = ("order", "risk", "market-data", "execution", "position")
DEFAULT_PORTS = {"order": 7001, "risk": 7002, "market-data": 7003, "execution": 7004, "position": 7005}
DEFAULT_METRICS_PORT = 9100
DEFAULT_CONFIG_PATH = "/etc/tradeplane/config.yaml"
DEFAULT_KEYS_DIR = "/etc/tradeplane-keys"
DEFAULT_SYMBOLS = {
    "AAPL": 190.0,
    "MSFT": 420.0,
    "NVDA": 120.0,
    "AMZN": 185.0,
    "GOOG": 170.0,
    "META": 500.0,
    "JPM": 200.0,
    "TSLA": 250.0,
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


class Settings(BaseModel):
    """Settings every component understands."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    symbols: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SYMBOLS),
        description="Tradeable symbols and their reference prices (the simulated feed starts there).",
    )
    latencyInjectionMicros: int = Field(
        0, ge=0, le=1_000_000, description="Artificial latency added to every request (fault drills)."
    )
    drainTimeoutSeconds: float = Field(10.0, gt=0, description="SIGTERM: longest wait for in-flight work.")
    logLevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    logonTimeoutMillis: int = Field(
        2000, ge=1, le=60_000, description="A connection that has not logged on by then is closed."
    )
    readTimeoutMillis: int = Field(
        2000, ge=1, le=60_000, description="A frame begun but not completed by then closes its connection."
    )
    maxConnectionsPerPeer: int = Field(
        64, ge=1, le=10_000, description="Open connections from one peer address; more are refused."
    )

    @field_validator("symbols")
    @classmethod
    def _symbols_are_wire_symbols(cls, symbols: dict[str, float]) -> dict[str, float]:
        if not symbols:
            raise ValueError("at least one symbol is needed")
        for name, price in symbols.items():
            symbol_bytes(name)
            if price <= 0:
                raise ValueError(f"reference price of {name} must be positive, got {price}")
        return symbols


class OrderSettings(Settings):
    riskTimeoutMillis: int = Field(
        500, ge=1, description="An order whose risk check is unanswered this long is rejected."
    )


class RiskSettings(Settings):
    maxOrderQuantity: int = Field(100_000, ge=1)
    maxOrderNotional: float = Field(10_000_000.0, gt=0, description="Quantity x price, in currency.")
    priceCollarPercent: float = Field(
        5.0, gt=0, le=100, description="Limit prices further than this from the last trade are refused."
    )
    maxPosition: int = Field(
        1_000_000, ge=1, description="Per account and symbol: |position + open orders on that side|."
    )
    creditLimit: float = Field(
        1_000_000_000.0, gt=0, description="Per account: open-order notional plus executed notional."
    )
    firmCreditLimit: float | None = Field(
        None,
        gt=0,
        description="Firm-wide open-order plus executed notional; with an event log each of the 16 account"
        " partitions may use an equal share. Unset: no firm-wide limit.",
    )
    maxMessagesPerSecond: float = Field(1_000_000.0, gt=0, description="Per account token bucket.")
    duplicateWindowMillis: int = Field(
        500, ge=0, description="Identical orders (account, symbol, side, qty, price) inside it are refused."
    )
    restrictedSymbols: list[str] = Field(default_factory=list)
    killSwitch: KillSwitchState = KillSwitchState.ACTIVE
    batchThreshold: int = Field(
        8, ge=2, description="Runs of at least this many queued checks are evaluated as one numpy batch."
    )
    snapshotEveryEvents: int = Field(
        1000,
        ge=1,
        description="With an event log: a partition's exposure goes to the log's KV store this often (at a"
        " quiet moment), so a takeover replays from there.",
    )
    partitionLeaseMillis: int = Field(
        2000,
        ge=100,
        le=60_000,
        description="With an event log: a partition whose owner has not renewed its lease this long is taken"
        " over by another replica.",
    )

    @field_validator("killSwitch", mode="before")
    @classmethod
    def _kill_switch_by_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return KillSwitchState[value.upper()]
            except KeyError:
                raise ValueError(f"{value!r}: expected ACTIVE, REDUCING or HALTED") from None
        return value


class ExecutionSettings(Settings):
    venue: Literal["simulated"] = Field("simulated", description="Venue adapter behind the interface.")


class PositionSettings(Settings):
    snapshotEveryEvents: int = Field(
        1000, ge=1, description="A snapshot of the positions goes to the event log's KV store this often."
    )


class MarketDataSettings(Settings):
    ticksPerSecond: int = Field(1_000, ge=0, description="Simulated feed rate (0: heartbeats only).")
    maxPacketBytes: int = Field(
        1472, ge=72, le=65507, description="UDP payload limit; 1472 fits a 1500-byte Ethernet MTU."
    )
    replayFile: str | None = Field(None, description="Publish ticks from this TICK_DTYPE file instead.")
    retainPackets: int = Field(65536, ge=1, description="Packets kept for replay requests.")
    batchMillis: int = Field(
        5, ge=1, description="Ticks wait at most this long for a packet to fill before it is sent."
    )
    heartbeatMillis: int = Field(100, ge=1)
    channel: int = Field(1, ge=0, le=255)
    multicastTtl: int = Field(1, ge=0, le=255)


SETTINGS_OF: dict[str, type[Settings]] = {
    "order": OrderSettings,
    "risk": RiskSettings,
    "market-data": MarketDataSettings,
    "execution": ExecutionSettings,
    "position": PositionSettings,
}


def parse_settings(component: str, data: Any, source: str) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return SETTINGS_OF[component].model_validate(data)
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


def parse_address(text: str, variable: str) -> Address:
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{variable}={text!r}: expected host:port")
    return Address(host, int(port))


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
    peers: dict[str, Address] = field(default_factory=dict)
    market_data_group: Address | None = None
    event_log: list[str] = field(default_factory=list)  # nats:// URLs of the event log's servers
    event_log_replicas: int = 1  # the stream's and snapshot bucket's replicas, when a service creates them
    replica: str | None = None  # a stable name of this replica (the pod name): risk's lease owner id
    advertise: Address | None = None  # where peers reach this replica, when not bind:port

    def advertised_address(self) -> Address:
        if self.advertise is not None:
            return self.advertise
        return Address(self.bind if self.bind != "0.0.0.0" else socket.gethostname(), self.port)

    def peer(self, name: str) -> Address | None:
        return self.peers.get(name)


PEER_VARIABLES = {
    "risk": "TRADEPLANE_RISK_ADDR",
    "execution": "TRADEPLANE_EXECUTION_ADDR",
    "market-data": "TRADEPLANE_MARKET_DATA_ADDR",
}


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


def read_environment(component: str, config: str | None, env: dict[str, str] | None = None) -> Environment:
    env = dict(os.environ) if env is None else env
    config_text = config or env.get("TRADEPLANE_CONFIG") or DEFAULT_CONFIG_PATH
    peers = {
        name: parse_address(env[variable], variable)
        for name, variable in PEER_VARIABLES.items()
        if env.get(variable)
    }
    group_text = env.get("TRADEPLANE_MARKET_DATA_GROUP")
    group = parse_address(group_text, "TRADEPLANE_MARKET_DATA_GROUP") if group_text else None
    advertise = env.get("TRADEPLANE_ADVERTISE_ADDR")
    return Environment(
        component=component,
        revision=env.get("TRADEPLANE_REVISION") or "dev",
        config_path=Path(config_text),
        bind=env.get("TRADEPLANE_BIND") or "0.0.0.0",
        port=_port("TRADEPLANE_PORT", DEFAULT_PORTS.get(component, 7000), env),
        metrics_port=_port("TRADEPLANE_METRICS_PORT", DEFAULT_METRICS_PORT, env),
        keys_dir=Path(env.get("TRADEPLANE_KEYS_DIR") or DEFAULT_KEYS_DIR),
        peers=peers,
        market_data_group=group,
        event_log=parse_event_log(env.get("TRADEPLANE_EVENT_LOG") or ""),
        event_log_replicas=_bounded("TRADEPLANE_EVENT_LOG_REPLICAS", 1, 1, 5, env),
        replica=env.get("TRADEPLANE_REPLICA") or None,
        advertise=parse_address(advertise, "TRADEPLANE_ADVERTISE_ADDR") if advertise else None,
    )
