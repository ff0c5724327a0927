"""Settings of each bundled component: what a YAML file (the operator's ConfigMap, `spec.config`) may hold.

One pydantic model per component, camelCase keys as in `spec.config`; every component understands the
keys of `Settings`. Unknown keys and bad values are refused with the key named (config.py reports them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tradeplane_services.protocol import KillSwitchState, symbol_bytes

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
    maxChecksInFlight: int | None = Field(
        None,
        ge=1,
        description="New orders waiting for risk at once; past it a new order is refused RISK_UNAVAILABLE "
        "at once instead of queueing behind the others. None: no bound. The right bound is the replica's "
        "checks per second times the wait a desk accepts (below riskTimeoutMillis), so it is set per "
        "deployment.",
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
    restrictedSymbols: list[str] = Field(
        default_factory=list, description="Symbols no order may trade: refused as RESTRICTED_SYMBOL."
    )
    killSwitch: KillSwitchState = KillSwitchState.ACTIVE
    batchThreshold: int = Field(
        2, ge=2, description="Runs of at least this many queued checks are checked in one call (check_batch)."
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
    pnlMethod: Literal["average-cost", "fifo"] = Field(
        "average-cost",
        description="How a closing fill realizes PnL: against the position's average cost, or against its "
        "oldest open lots first (FIFO, as tax-lot accounting does). Each method keeps its own snapshots.",
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


class AnalyticsSettings(Settings):
    storePath: str | None = Field(
        None, description="chDB's directory (embedded ClickHouse); unset: `analytics` in the state directory."
    )
    clickhouseUrl: str | None = Field(
        None, description="A ClickHouse server instead of chDB, e.g. http://user:password@host:8123."
    )
    clickhouseCluster: str | None = Field(
        None, description="With clickhouseUrl: create ReplicatedMergeTree tables and Distributed ones on it."
    )
    clickhouseDatabase: str = Field("tradeplane", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    batchRows: int = Field(50_000, ge=1, le=1_000_000, description="A batch is stored at this many rows.")
    batchMillis: int = Field(200, ge=1, le=60_000, description="...or when it is this old.")
    consumerName: str = Field(
        "analytics", pattern=r"^[A-Za-z0-9_-]+$", description="The durable consumer on the event log."
    )
    feedChannel: int = Field(1, ge=0, le=255, description="The market-data channel stored.")

    @field_validator("clickhouseUrl")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r}: expected an http:// or https:// URL of a ClickHouse server")
        return url
