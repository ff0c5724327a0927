"""The TradingService API, defined once: the CRD under `crds/` is generated from these models.

Field names are the wire names (camelCase) so that a model dumps straight into a manifest.
Rules a structural schema cannot say are declared once as `Rule`s: the CRD carries them as CEL
`x-kubernetes-validations`, so the API server refuses bad manifests at `kubectl apply` with a message
naming the field, and the models check the same rules in Python (for `tradeplane render` and the
operator), with the same message at the same field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError

from tradeplane.labels import POOL_LABEL
from tradeplane.names import CALENDARS, TIMEZONES
from tradeplane.quantity import QUANTITY_PATTERN, integer_quantity
from tradeplane_services.catalog import (
    BUNDLED,
    CUSTOM,
    ORDER_FLOW_COMPONENTS,
    STATE_SHADOW_COMPONENTS,
    ring_callees,
)

GROUP = "tradeplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TradingService"
PLURAL = "tradingservices"
SINGULAR = "tradingservice"
SHORT_NAMES = ["ts"]

# At most four parts of at most five digits: 399996h stays inside Go's duration (about 2562047h), so CEL's
# duration() never fails on a value the pattern let through.
DURATION_PATTERN = r"^([0-9]{1,5}(ms|s|m|h)){1,4}$"
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Children are named <name>-canary and <name>-<revision>; the Service name is a 63-character DNS label.
MAX_NAME_LENGTH = 40
MAX_ROLLOUT_STEPS = 10
# The scrape provider reads the pods when asked, so a canary can be judged several times a second; a
# Prometheus server's figures move once per scrape interval, and judging faster counts one bad scrape as
# several failed intervals.
MIN_SCRAPE_INTERVAL = "250ms"
MIN_PROMETHEUS_INTERVAL = "1s"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_guard(*fields: str) -> str:
    """CEL: every named duration matches the pattern (else the pattern alone reports it, once)."""
    return " && ".join(f"self.{field}.matches('{DURATION_PATTERN}')" for field in fields)


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


_TIMEZONE_SET = frozenset(TIMEZONES)
_CALENDAR_SET = frozenset(CALENDARS)


def field_path(location: tuple[int | str, ...], prefix: str = "") -> str:
    """A pydantic error location written as the API server writes field paths: spec.a[0].b."""
    path = prefix
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `30s`, `1m30s` or `250ms`."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 1m30s or 250ms")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in re.findall(r"([0-9]+)(ms|s|m|h)", text))


@dataclass(frozen=True)
class Rule:
    """A rule the API server runs as CEL and the models run in Python, with one message.

    `field` names the field the message is about (a dotted path relative to the object the rule sits
    on); the API server reports it as the error's path, pydantic as the error's location.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field: str | None = None

    def validation(self) -> dict[str, str]:
        validation = {"rule": self.cel, "message": self.message}
        if self.field:
            validation["fieldPath"] = f".{self.field}"
        return validation


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=True)
    rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.rules:
            handler.resolve_ref_schema(schema)["x-kubernetes-validations"] = [
                rule.validation() for rule in cls.rules
            ]
        return schema

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        broken = [rule for rule in self.rules if not rule.holds(self)]
        if broken:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("rule", rule.message),
                        loc=tuple(rule.field.split(".")) if rule.field else (),
                        input=self,
                    )
                    for rule in broken
                ],
            )
        return self


COMPONENTS = (*BUNDLED, CUSTOM)
"""The API's component names: the catalog's bundled services, and custom for any image."""
# The wire-protocol port of each bundled component (part of the API: `spec.port` defaults to it).
BUNDLED_PORTS: dict[str, int] = {name: entry.port for name, entry in BUNDLED.items()}
DEFAULT_METRICS_PORT = 9100


def _positive_integer_quantity(expression: str, *conditions: str) -> str:
    """CEL: the quantity is a positive integer and meets the conditions (`{q}` stands for it)."""
    quantity = f"quantity({expression})"
    checks = [f"{quantity}.isInteger()", f"{quantity}.asInteger() > 0"]
    checks += [condition.format(q=quantity) for condition in conditions]
    # A malformed quantity is the pattern's to report; the guard keeps CEL from adding a second error.
    return f"!isQuantity({expression}) || ({' && '.join(checks)})"


class HugePages(Model):
    pageSize: Literal["2Mi", "1Gi"] = Field(description="Huge page size; the pod asks hugepages-<pageSize>.")
    amount: str = Field(
        pattern=QUANTITY_PATTERN, max_length=16, description="Total huge page memory, e.g. 2Gi."
    )

    rules = (
        Rule(
            _positive_integer_quantity(
                "self.amount", "{q}.asInteger() % quantity(self.pageSize).asInteger() == 0"
            ),
            "hugepages amount must be a positive multiple of pageSize",
            lambda pages: (
                integer_quantity(pages.amount) > 0
                and integer_quantity(pages.amount) % integer_quantity(pages.pageSize) == 0
            ),
            "amount",
        ),
    )


class Resources(Model):
    cpus: int = Field(
        ge=1, le=512, description="Exclusive cores: an integer, so the static CPU manager pins them."
    )
    memory: str = Field(
        pattern=QUANTITY_PATTERN, max_length=16, description="Memory, requests == limits, e.g. 8Gi."
    )
    hugepages: HugePages | None = None

    rules = (
        Rule(
            _positive_integer_quantity("self.memory"),
            "memory must be a positive quantity",
            lambda resources: integer_quantity(resources.memory) > 0,
            "memory",
        ),
    )


class Isolation(Model):
    """What the runtime should stop doing on the pinned cores (CRI-O annotations, as OpenShift does)."""

    cpuLoadBalancing: bool = Field(
        default=True, description="false: disable kernel load balancing on the cores."
    )
    irqLoadBalancing: bool = Field(default=True, description="false: keep device interrupts off the cores.")
    cpuQuota: bool = Field(default=True, description="false: disable CFS quota throttling for the pod.")


class Placement(Model):
    pool: str = Field(
        default="trading",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description=f"Node pool: nodes labelled {POOL_LABEL}=<pool>; the pool's taint is tolerated.",
    )
    numa: Literal["single-numa-node", "restricted", "best-effort", "none"] = Field(
        default="single-numa-node", description="Topology hint, checked against the nodes' feature labels."
    )
    spread: Literal["host", "none"] = Field(default="host", description="host: replicas never share a node.")
    runtimeClassName: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Runtime class carrying the isolation asks.",
    )
    isolation: Isolation = Field(default_factory=Isolation)


class Peer(Model):
    """Where traffic may come from: an address block, or pods by labels (namespaces by labels; {} is all)."""

    cidr: str | None = Field(
        default=None,
        max_length=43,
        pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$",
        description="An IPv4 or IPv6 block, e.g. 10.20.0.0/16.",
    )
    namespaceLabels: dict[str, str] | None = Field(
        default=None, description="Namespaces with these labels ({}: every namespace)."
    )
    podLabels: dict[str, str] | None = Field(
        default=None, description="Pods with these labels (in the namespaces chosen, else this one)."
    )

    rules = (
        Rule(
            "has(self.cidr) != (has(self.namespaceLabels) || has(self.podLabels))",
            "a peer is either a cidr or namespace/pod labels",
            lambda peer: (
                (peer.cidr is not None) != (peer.namespaceLabels is not None or peer.podLabels is not None)
            ),
        ),
    )


# Who scrapes /metrics by default: a Prometheus (the Prometheus Operator's and the community chart's pods
# carry this label) and the operator itself (its direct-scrape provider), in any namespace.
OPERATOR_PEER = {"namespaceLabels": {}, "podLabels": {"app.kubernetes.io/name": "tradeplane"}}
"""The operator's pods, as the chart labels them, in any namespace."""
DEFAULT_METRICS_PEERS = (
    {"namespaceLabels": {}, "podLabels": {"app.kubernetes.io/name": "prometheus"}},
    OPERATOR_PEER,
)


class NetworkPolicySettings(Model):
    """The NetworkPolicy the operator renders for the service: what may reach it, and whom it may reach."""

    enabled: bool = Field(
        default=True,
        description="false renders no NetworkPolicy: the explicit opt-out; traffic is then unrestricted.",
    )
    clients: list[Peer] = Field(
        default_factory=list,
        max_length=32,
        description="Where trading clients and admins connect from (client/admin identities); "
        "the bundled components that call the service are allowed anyway.",
    )
    metricsFrom: list[Peer] = Field(
        default_factory=lambda: [Peer.model_validate(peer) for peer in DEFAULT_METRICS_PEERS],
        max_length=32,
        description="Who may scrape the metrics port (default: Prometheus and the operator, any namespace).",
    )


class Network(Model):
    # A list of type set: the API server itself refuses duplicates.
    capabilities: list[Literal["NET_ADMIN", "NET_RAW"]] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Added only when asked; everything else is dropped.",
    )
    sessionKeys: str = Field(
        default="tradeplane-session-keys",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret with a session key per identity (`tradeplane session-keys create`); bundled "
        "components mount their own and their callers' keys, and pick up rotated keys without a restart.",
    )

    @field_validator("capabilities")
    @classmethod
    def _no_duplicates(cls, capabilities: list[str]) -> list[str]:
        duplicates = [
            InitErrorDetails(
                type=PydanticCustomError("duplicate", "Duplicate value: {value}", {"value": capability}),
                loc=(index,),
                input=capability,
            )
            for index, capability in enumerate(capabilities)
            if capability in capabilities[:index]
        ]
        if duplicates:
            raise ValidationError.from_exception_data("capabilities", duplicates)
        return capabilities


class SLO(Model):
    p99LatencyMicros: int = Field(
        default=100, ge=1, le=10_000_000, description="Canary p99 latency gate, microseconds."
    )
    maxErrorRate: float = Field(default=0.001, ge=0, le=1, description="Canary error-rate gate, a fraction.")
    maxDecisionMismatch: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Shadow rollouts (rollout.orderFlow.mode: shadow): the largest fraction of copied checks "
        "on which the canary may decide otherwise than the stable (accept/reject and reason; a copy the "
        "canary did not answer in time counts as a mismatch), measured from the callers' "
        "tradeplane_shadow_decisions_total over the analysis window. State shadows (rollout.stateShadow): "
        "the largest fraction of compared log sequences at which a canary pod's state digest differs from "
        "the stable's (unset: 0, a projection of the same log must agree exactly). Fewer than minSamples "
        "compared decisions is Inconclusive.",
    )


BASIS_POINTS = 10_000
"""A whole: weights are basis points (hundredths of a percent) inside the operator."""


class RolloutStep(Model):
    weight: int | None = Field(
        default=None, ge=1, le=100, description="Percent of traffic (or replicas) on the canary."
    )
    weightBasisPoints: int | None = Field(
        default=None,
        ge=1,
        le=BASIS_POINTS,
        description="Hundredths of a percent of the orders on the canary (10 is 0.1%), instead of weight: "
        "only orderFlow can honour a share finer than a percent.",
    )
    pause: str = Field(default="30s", pattern=DURATION_PATTERN, description="How long the step is analysed.")

    rules = (
        Rule(
            "has(self.weight) != has(self.weightBasisPoints)",
            "a step has either weight (percent) or weightBasisPoints",
            lambda step: (step.weight is None) != (step.weightBasisPoints is None),
        ),
    )

    @property
    def basis_points(self) -> int:
        if self.weightBasisPoints is not None:
            return self.weightBasisPoints
        return (self.weight or 0) * (BASIS_POINTS // 100)


class PrometheusSettings(Model):
    url: str = Field(max_length=2048, pattern=r"^https?://[^\s/]+\S*$", description="Prometheus base URL.")
    p99Query: str | None = Field(
        default=None,
        description="PromQL template for p99 in seconds; {service}, {namespace}, {revision}, {window}.",
    )


class ScrapeSettings(Model):
    timeoutSeconds: float = Field(default=2.0, gt=0, le=30, description="Longest wait for a pod's /metrics.")


GATE_KINDS = ("rejectRate", "fillRatio", "metric")
METRIC_NAME_PATTERN = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"


class Gate(Model):
    """A trading gate of the canary analysis, judged over the analysis window after the SLO gates.

    rejectRate (risk): rejects as a fraction of decisions, from `tradeplane_decisions_total{reason}`. The
    canary fails when its rate exceeds the stable's over the same window times `factor` plus `slack`,
    overall and for each reason code on its own (a new reason at 2% fails even when the overall rate
    hides it among the stable's usual duplicates). fillRatio (execution): fills per routed order, from
    `tradeplane_fills_total` / `tradeplane_orders_total`; fails below the stable's ratio times `factor`
    minus `slack`. metric: any series, judged against an absolute `threshold` or the stable's value times
    `factor` (plus or minus `slack`), in `direction` max or min: a desk's own PnL or slippage.
    """

    kind: Literal["rejectRate", "fillRatio", "metric"] = Field(
        description="rejectRate, fillRatio or metric; each kind's settings are described on its fields."
    )
    name: str | None = Field(
        default=None,
        max_length=63,
        pattern=NAME_PATTERN,
        description="metric: the gate's name in verdicts (required); the other kinds are named by kind.",
    )
    factor: float | None = Field(
        default=None,
        gt=0,
        description="Relative to the stable revision over the same window. rejectRate: the canary's rate "
        "may be at most the stable's times this (default 2); fillRatio: at least the stable's times this "
        "(default 0.8); metric: the bound is the stable's value times this.",
    )
    slack: float | None = Field(
        default=None,
        ge=0,
        description="Absolute allowance on top of the relative bound, so a stable at zero does not make "
        "one reject fail: rejectRate and fillRatio default 0.01 (one percentage point), metric 0.",
    )
    reasons: list[str] | None = Field(
        default=None,
        max_length=64,
        description="rejectRate: the reason codes compared one by one (names such as MAX_QUANTITY); "
        "default every reason either revision gave.",
    )
    query: str | None = Field(
        default=None,
        max_length=4096,
        description="metric, prometheus provider: a PromQL template giving one value per revision; "
        "{service}, {namespace}, {revision} and {window} are filled in.",
    )
    metric: str | None = Field(
        default=None,
        pattern=METRIC_NAME_PATTERN,
        max_length=200,
        description="metric, either provider: a series the pods export with service and revision labels "
        "(summed over the revision's pods and other labels).",
    )
    type: Literal["counter", "gauge"] = Field(
        default="counter",
        description="metric: a counter is judged by its increase over the window, a gauge by its value.",
    )
    direction: Literal["max", "min"] = Field(
        default="max", description="metric: max fails above the bound, min fails below it."
    )
    threshold: float | None = Field(default=None, description="metric: an absolute bound, instead of factor.")

    rules = (
        Rule(
            "self.kind != 'metric' || has(self.name)",
            "a metric gate needs a name",
            lambda gate: gate.kind != "metric" or gate.name is not None,
            "name",
        ),
        Rule(
            "self.kind != 'metric' || has(self.query) != has(self.metric)",
            "a metric gate has either query (PromQL) or metric (a series name)",
            lambda gate: gate.kind != "metric" or (gate.query is None) != (gate.metric is None),
            "metric",
        ),
        Rule(
            "self.kind != 'metric' || has(self.threshold) != has(self.factor)",
            "a metric gate has either threshold (absolute) or factor (relative to the stable)",
            lambda gate: gate.kind != "metric" or (gate.threshold is None) != (gate.factor is None),
            "threshold",
        ),
        Rule(
            "self.kind == 'metric' || (!has(self.query) && !has(self.metric) && !has(self.threshold))",
            "query, metric and threshold belong to metric gates",
            lambda gate: (
                gate.kind == "metric"
                or (gate.query is None and gate.metric is None and gate.threshold is None)
            ),
            "kind",
        ),
        Rule(
            "self.kind == 'rejectRate' || !has(self.reasons)",
            "reasons belong to rejectRate gates",
            lambda gate: gate.kind == "rejectRate" or gate.reasons is None,
            "reasons",
        ),
    )

    @property
    def label(self) -> str:
        """The gate's name in verdicts, Events and the rollback counter."""
        return self.name if self.kind == "metric" and self.name else self.kind


def min_interval(provider: str) -> float:
    return parse_duration(MIN_PROMETHEUS_INTERVAL if provider == "prometheus" else MIN_SCRAPE_INTERVAL)


class Analysis(Model):
    provider: Literal["prometheus", "scrape"] = Field(
        default="scrape",
        description="prometheus: PromQL over the HTTP API; scrape: the pods' /metrics directly. Each "
        "provider's settings are in the field of its name.",
    )
    prometheus: PrometheusSettings | None = Field(
        default=None, description="Required by the prometheus provider."
    )
    scrape: ScrapeSettings = Field(default_factory=ScrapeSettings)
    interval: str = Field(default="5s", pattern=DURATION_PATTERN)
    window: str = Field(default="30s", pattern=DURATION_PATTERN)
    minSamples: int = Field(
        default=200, ge=1, description="Fewer samples than this is Inconclusive, never Pass."
    )
    failureLimit: int = Field(default=1, ge=1, description="Failed intervals that roll back.")
    inconclusiveLimit: int = Field(
        default=12, ge=1, description="Inconclusive intervals in a row that roll back."
    )
    maxRegressionVsBaseline: float | None = Field(
        default=None, ge=1, description="Canary p99 must stay under stable p99 times this."
    )
    gates: list[Gate] = Field(
        default_factory=list,
        max_length=16,
        description="Trading gates judged after the SLO gates, in order, over the same window and "
        "provider: rejectRate, fillRatio and metric.",
    )

    # `has()` guards: the API server also checks the rules against the CRD's own `default: {}`.
    rules = (
        Rule(
            f"!has(self.interval) || !({_duration_guard('interval')}) || "
            "duration(self.interval) >= duration((has(self.provider) && self.provider == 'prometheus') ? "
            f"'{MIN_PROMETHEUS_INTERVAL}' : '{MIN_SCRAPE_INTERVAL}')",
            f"analysis interval must be at least {MIN_SCRAPE_INTERVAL} ({MIN_PROMETHEUS_INTERVAL} with the "
            "prometheus provider, whose figures change no faster than its scrapes)",
            lambda analysis: parse_duration(analysis.interval) >= min_interval(analysis.provider),
            "interval",
        ),
        Rule(
            f"!has(self.window) || !has(self.interval) || !({_duration_guard('window', 'interval')}) || "
            "duration(self.window) >= duration(self.interval)",
            "analysis window must be at least the interval",
            lambda analysis: parse_duration(analysis.window) >= parse_duration(analysis.interval),
            "window",
        ),
        Rule(
            "!has(self.provider) || self.provider != 'prometheus' || has(self.prometheus)",
            "the prometheus provider needs prometheus.url",
            lambda analysis: analysis.provider != "prometheus" or analysis.prometheus is not None,
            "prometheus",
        ),
        Rule(
            "!has(self.gates) || (has(self.provider) && self.provider == 'prometheus') || "
            "self.gates.all(gate, !has(gate.query))",
            "a gate's query is PromQL: it needs the prometheus provider (scrape gates name a metric)",
            lambda analysis: (
                analysis.provider == "prometheus" or all(gate.query is None for gate in analysis.gates)
            ),
            "gates",
        ),
        Rule(
            "!has(self.gates) || self.gates.all(gate, self.gates.exists_one(other, "
            "(has(other.name) ? other.name : other.kind) == (has(gate.name) ? gate.name : gate.kind)))",
            "gate names must be unique (rejectRate and fillRatio are named by kind)",
            lambda analysis: len({gate.label for gate in analysis.gates}) == len(analysis.gates),
            "gates",
        ),
    )


class FreezeWindow(Model):
    """No promotion inside: an exchange session from a calendar, or a daily time window in a timezone."""

    calendar: str | None = Field(
        default=None, max_length=16, description="Exchange calendar code, e.g. XNYS, XLON."
    )
    session: Literal["regular", "open", "close"] = Field(
        default="regular", description="regular: the whole session; open/close: 15 minutes around the bell."
    )
    start: str | None = Field(default=None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM.")
    end: str | None = Field(default=None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM.")
    timezone: str = Field(default="UTC", max_length=64, description="IANA timezone for start and end.")
    days: list[Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]] = Field(default_factory=list)

    rules = (
        Rule(
            "has(self.start) == has(self.end)",
            "start and end go together",
            lambda window: (window.start is None) == (window.end is None),
        ),
        Rule(
            "has(self.calendar) != has(self.start)",
            "a freeze window names either a calendar or both start and end",
            lambda window: (window.calendar is None) != (window.start is None),
        ),
        # Lists rather than a schema enum: an enum's refusal would list all ~600 timezones.
        Rule(
            f"!has(self.timezone) || self.timezone in {_cel_list(TIMEZONES)}",
            "timezone must be an IANA timezone such as America/New_York",
            lambda window: window.timezone in _TIMEZONE_SET,
            "timezone",
        ),
        Rule(
            f"!has(self.calendar) || self.calendar in {_cel_list(CALENDARS)}",
            "calendar must be an exchange calendar such as XNYS or XLON",
            lambda window: window.calendar is None or window.calendar in _CALENDAR_SET,
            "calendar",
        ),
    )


class EventLog(Model):
    """The NATS JetStream event log the bundled services keep their state in (fills, ...)."""

    servers: list[Annotated[str, Field(pattern=r"^(nats|tls)://[^\s,]+$")]] = Field(
        min_length=1,
        max_length=16,
        description="nats:// or tls:// URLs of the log's servers, e.g. nats://nats.trading.svc:4222.",
    )
    replicas: int = Field(
        default=3,
        ge=1,
        le=5,
        description="Replicas of the stream and snapshot bucket when a service creates them.",
    )


class HTTPRouteRef(Model):
    name: str = Field(min_length=1, description="Gateway API HTTPRoute whose backend weights are split.")


class OrderFlow(Model):
    """The callers of the service split their orders by account: a stable hash of the account, salted per
    rollout, into 10,000 buckets; buckets below the weight go to the canary. Exact to a basis point, and an
    account stays on one revision for the whole rollout."""

    leaseSeconds: int = Field(
        default=3,
        ge=1,
        le=60,
        description="The callers send canary orders only this long after the operator last renewed the "
        "routing (every second during a rollout): without the operator the canary share falls to zero.",
    )
    mode: Literal["live", "shadow"] = Field(
        default="live",
        description="live: the canary answers its share of accounts. shadow: the stable answers every "
        "order; the callers send the canary a copy of the checks of the steps' share of accounts, "
        "discard its answers and compare them with the stable's (gate: slo.maxDecisionMismatch). A "
        "shadow rollout never promotes by itself: once its last step passes it holds there, still "
        "shadowing, until promotion is requested (the promote annotation), which hands all orders to "
        "the canary at once. Changing the mode (e.g. to live after a shadow run) walks the steps again "
        "from the first in the new mode.",
    )


class StateShadow(Model):
    """The canary of a log projection (position) replays the same event log as the stable, serves no client,
    and is compared with the stable by state: at every log sequence both recorded, each canary pod's state
    digest against the stable pods' (the gate: slo.maxDecisionMismatch, default 0). The canary gets a
    Service of its own and the stable's Service selects the stable pods only; a step's weight sets only
    how many canary pods run (its share of the stable's). The canary serves no requests, so the latency
    and error-rate gates (samples, p99, errorRate, baseline) are not judged: the gates are the state
    comparison and the trading gates of analysis.gates, each Inconclusive when its series has no data. A
    passed state shadow holds after its last step (Paused, ShadowPassed), still following the log, until
    promotion is requested (the promote annotation)."""

    timeoutSeconds: float = Field(
        default=2.0, gt=0, le=30, description="Longest wait for a pod's digest history (metrics port)."
    )


# CEL: a step's weight in basis points, whichever of the two fields it has.
_STEP_BASIS_POINTS = "(has(step.weight) ? step.weight * 100 : step.weightBasisPoints)"


class Rollout(Model):
    steps: list[RolloutStep] = Field(
        default_factory=lambda: [
            RolloutStep(weight=5, pause="30s"),
            RolloutStep(weight=25, pause="30s"),
            RolloutStep(weight=50, pause="30s"),
        ],
        min_length=1,
        max_length=MAX_ROLLOUT_STEPS,
    )
    analysis: Analysis = Field(default_factory=Analysis)
    freezeWindows: list[FreezeWindow] = Field(default_factory=list, max_length=16)
    httpRoute: HTTPRouteRef | None = None
    orderFlow: OrderFlow | None = Field(
        default=None,
        description="Split by account in the callers of the service, at basis-point resolution, under a "
        "lease. Bundled: risk, called by order. Not execution: it holds the matching book, and orders of "
        "one symbol split between two books would not meet.",
    )
    stateShadow: StateShadow | None = Field(
        default=None,
        description="A canary of a log projection (bundled: "
        + ", ".join(STATE_SHADOW_COMPONENTS)
        + ") that serves no client and is judged by comparing its state with the stable's at the same "
        "log sequences; a traffic mechanism of its own, instead of orderFlow or httpRoute.",
    )

    rules = (
        Rule(
            f"!has(self.steps) || (self.steps.map(step, {_STEP_BASIS_POINTS}).isSorted() && "
            f"self.steps.all(step, self.steps.exists_one(other, "
            f"{_STEP_BASIS_POINTS.replace('step', 'other')} == {_STEP_BASIS_POINTS})))",
            "rollout step weights must be strictly increasing",
            lambda rollout: all(a.basis_points < b.basis_points for a, b in pairwise(rollout.steps)),
            "steps",
        ),
        Rule(
            "has(self.orderFlow) || !has(self.steps) || self.steps.all(step, !has(step.weightBasisPoints))",
            "weightBasisPoints needs orderFlow: replica ratio and HTTPRoute split by whole percent",
            lambda rollout: (
                rollout.orderFlow is not None or all(step.weightBasisPoints is None for step in rollout.steps)
            ),
            "steps",
        ),
        Rule(
            "!has(self.orderFlow) || !has(self.httpRoute)",
            "orderFlow and httpRoute are two traffic mechanisms: choose one",
            lambda rollout: rollout.orderFlow is None or rollout.httpRoute is None,
            "orderFlow",
        ),
        Rule(
            "!has(self.stateShadow) || (!has(self.orderFlow) && !has(self.httpRoute))",
            "stateShadow gives the canary no client traffic: it goes with neither orderFlow nor httpRoute",
            lambda rollout: (
                rollout.stateShadow is None or (rollout.orderFlow is None and rollout.httpRoute is None)
            ),
            "stateShadow",
        ),
    )

    @property
    def shadow(self) -> bool:
        """Whether the canary answers no client: a shadow of the order flow, or of the state."""
        return self.stateShadow is not None or (
            self.orderFlow is not None and self.orderFlow.mode == "shadow"
        )


class CoLocated(Model):
    component: str = Field(
        description="A bundled component this one calls, run as a container of the same pod.",
        json_schema_extra={"enum": list(BUNDLED)},
    )
    cpus: int = Field(default=1, ge=1, le=512, description="Its exclusive cores (requests == limits).")
    memory: str = Field(
        default="1Gi", pattern=QUANTITY_PATTERN, max_length=16, description="Its memory, requests == limits."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Its settings over its component's defaults, as spec.config is for the first container.",
    )

    rules = (
        Rule(
            _positive_integer_quantity("self.memory"),
            "memory must be a positive quantity",
            lambda colocated: integer_quantity(colocated.memory) > 0,
            "memory",
        ),
    )


class CoLocation(Model):
    """Peers run in the same pod and reached over shared-memory rings: no socket, no syscall per message."""

    services: list[CoLocated] = Field(
        min_length=1, max_length=4, description="The peers that share the pod, each once."
    )
    medium: Literal["HugePages", "Memory"] = Field(
        default="Memory",
        description="Where the rings live: the pod's huge pages (needs resources.hugepages) or memory.",
    )

    rules = (
        Rule(
            "self.services.all(a, self.services.exists_one(b, b.component == a.component))",
            "coLocate.services must name each component once",
            lambda location: len({s.component for s in location.services}) == len(location.services),
            "services",
        ),
    )


CALLEES = {component: tuple(ring_callees(component)) for component in BUNDLED}
"""The bundled components each one calls and may share its pod with (reached over rings)."""


def _cel_callees() -> str:
    entries = ", ".join(f"'{component}': {_cel_list(peers)}" for component, peers in CALLEES.items())
    return f"{{{entries}, 'custom': []}}"


def _cel_port_defaults() -> str:
    # custom has no default port (another rule asks for one); 0 keeps this rule total.
    entries = ", ".join(f"'{component}': {port}" for component, port in BUNDLED_PORTS.items())
    return f"{{{entries}, 'custom': 0}}"


def _components_with(mechanism: str, components: tuple[str, ...], why: str) -> Rule:
    """`rollout.<mechanism>` is only for the components that can honour it."""
    return Rule(
        f"!has(self.rollout) || !has(self.rollout.{mechanism}) || self.component in {_cel_list(components)}",
        f"{mechanism} {why}: component must be one of " + ", ".join(components),
        lambda spec: getattr(spec.rollout, mechanism) is None or spec.component in components,
        f"rollout.{mechanism}",
    )


class TradingServiceSpec(Model):
    component: str = Field(
        description="A bundled service, or custom for any image.",
        json_schema_extra={"enum": list(COMPONENTS)},
    )
    image: str = Field(min_length=1, pattern=r"^\S+$", description="Container image of the service.")
    replicas: int = Field(default=2, ge=0, le=100)
    command: list[str] = Field(default_factory=list, description="custom only: the container command.")
    port: int | None = Field(
        default=None,
        ge=1024,
        le=65535,
        description="Wire-protocol port (1024 and up: the restricted security context cannot bind "
        "lower ones); defaults per component.",
    )
    metricsPort: int = Field(
        default=DEFAULT_METRICS_PORT,
        ge=1024,
        le=65535,
        description="HTTP port of /metrics, /healthz, /readyz.",
    )
    resources: Resources
    placement: Placement = Field(default_factory=Placement)
    network: Network = Field(default_factory=Network)
    # Beside `network`, not in it: the policy shapes no pod, so changing it starts no canary.
    networkPolicy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)
    config: dict[str, Any] = Field(default_factory=dict, description="Component settings.")
    slo: SLO = Field(default_factory=SLO)
    rollout: Rollout = Field(default_factory=Rollout)
    paused: bool = Field(default=False, description="Hold the rollout at its current step.")
    eventLog: EventLog | None = Field(
        default=None,
        description="Where execution appends fills and position projects them from; unset: fills are "
        "reported but kept nowhere.",
    )
    coLocate: CoLocation | None = Field(
        default=None,
        description="Peers this component calls, run in each of its pods and reached over shared-memory "
        "rings instead of TCP.",
    )

    rules = (
        Rule(
            "(self.component == 'custom') == (size(self.command) > 0)",
            "custom components need a command, bundled components take none",
            lambda spec: (spec.component == CUSTOM) == bool(spec.command),
            "command",
        ),
        Rule(
            "self.component != 'custom' || has(self.port)",
            "custom components need a port",
            lambda spec: spec.component != CUSTOM or spec.port is not None,
            "port",
        ),
        _components_with(
            "orderFlow", ORDER_FLOW_COMPONENTS, "needs callers that split their orders by account"
        ),
        Rule(
            "!has(self.slo) || !has(self.slo.maxDecisionMismatch) || (has(self.rollout) && "
            "((has(self.rollout.orderFlow) && has(self.rollout.orderFlow.mode) && "
            "self.rollout.orderFlow.mode == 'shadow') || has(self.rollout.stateShadow)))",
            "slo.maxDecisionMismatch needs rollout.orderFlow.mode: shadow or rollout.stateShadow (only a "
            "shadow canary's decisions or state are compared)",
            lambda spec: spec.slo.maxDecisionMismatch is None or spec.rollout.shadow,
            "slo.maxDecisionMismatch",
        ),
        _components_with("stateShadow", STATE_SHADOW_COMPONENTS, "compares projections of the event log"),
        Rule(
            "!has(self.rollout) || !has(self.rollout.stateShadow) || has(self.eventLog)",
            "stateShadow needs eventLog: without the log there is no projected state to compare",
            lambda spec: spec.rollout.stateShadow is None or spec.eventLog is not None,
            "rollout.stateShadow",
        ),
        Rule(
            f"(has(self.port) ? self.port : {_cel_port_defaults()}[self.component]) != self.metricsPort",
            "metricsPort must differ from the wire-protocol port",
            lambda spec: spec.wire_port != spec.metricsPort,
            "metricsPort",
        ),
        Rule(
            f"!has(self.coLocate) || self.coLocate.services.all(s, s.component in "
            f"{_cel_callees()}[self.component])",
            "coLocate.services may name only peers the component calls ("
            + "; ".join(f"{c}: {', '.join(peers)}" for c, peers in CALLEES.items() if peers)
            + ")",
            lambda spec: (
                spec.coLocate is None
                or all(s.component in CALLEES.get(spec.component, ()) for s in spec.coLocate.services)
            ),
            "coLocate.services",
        ),
        Rule(
            "!has(self.coLocate) || !has(self.coLocate.medium) || self.coLocate.medium != 'HugePages' || "
            "has(self.resources.hugepages)",
            "coLocate.medium HugePages needs resources.hugepages: the rings live in the pod's huge pages",
            lambda spec: (
                spec.coLocate is None
                or spec.coLocate.medium != "HugePages"
                or spec.resources.hugepages is not None
            ),
            "coLocate.medium",
        ),
    )

    @field_validator("component")
    @classmethod
    def _known_component(cls, name: str) -> str:
        if name not in COMPONENTS:
            raise ValueError(f"unknown component {name!r}: expected one of {', '.join(COMPONENTS)}")
        return name

    @property
    def wire_port(self) -> int:
        """The wire-protocol port: the spec's, or the bundled component's default."""
        return self.port if self.port is not None else BUNDLED_PORTS.get(self.component, 0)


class ObjectMeta(BaseModel):
    """The parts of metadata this API reads; everything else passes through."""

    model_config = ConfigDict(extra="allow")
    name: str
    namespace: str | None = None


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    DEGRADED = "Degraded"


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


RollbackOutcome = Literal["Failed", "Inconclusive", "Aborted", "Stalled"]
ConditionType = Literal["Ready", "Placed", "Progressing", "Degraded"]
ConditionStatus = Literal["True", "False", "Unknown"]
CONDITION_ORDER: tuple[ConditionType, ...] = ("Ready", "Placed", "Progressing", "Degraded")


class Condition(Model):
    type: ConditionType
    status: ConditionStatus
    reason: str
    message: str = ""
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


class GateResult(Model):
    """One gate's verdict on one interval."""

    gate: str
    verdict: Verdict
    value: float | None = Field(default=None, description="The canary's figure.")
    baseline: float | None = Field(default=None, description="The stable's figure, for relative gates.")
    threshold: float | None = Field(default=None, description="The bound the value was held to.")
    samples: int = Field(default=0, description="Observations behind the value (decisions, orders, ...).")
    message: str = ""


class AnalysisResult(Model):
    verdict: Verdict
    gate: str | None = Field(
        default=None,
        description="The gate that decided: provider, samples, p99, errorRate, baseline, decisionMismatch, "
        "or a trading gate (rejectRate, fillRatio, a metric gate's name).",
    )
    value: float | None = Field(default=None, description="The deciding gate's measured value.")
    baselineValue: float | None = Field(
        default=None, description="The stable's figure for the deciding gate, when it is relative."
    )
    gates: list[GateResult] = Field(
        default_factory=list, description="Every trading gate's verdict on this interval, in order."
    )
    p99Micros: float | None = None
    baselineP99Micros: float | None = None
    errorRate: float | None = None
    threshold: float | None = None
    samples: int = 0
    window: str | None = None
    revision: str | None = None
    message: str = ""
    time: str | None = None


class TradingServiceStatus(Model):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, use_enum_values=True)

    phase: Phase = Phase.PENDING
    observedGeneration: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int = 0
    readyReplicas: int = 0
    nodes: list[str] = Field(default_factory=list)
    stableRevision: str | None = None
    canaryRevision: str | None = None
    failedRevision: str | None = None
    rollbackOutcome: RollbackOutcome | None = Field(
        default=None,
        description="Why failedRevision was rolled back: Failed (a gate), Inconclusive (no conclusive "
        "analysis, e.g. no traffic or no metrics), Aborted, or Stalled (pods never became ready). It is not "
        "retried until the pod template changes or `tradeplane retry` asks.",
    )
    retriedRequest: str | None = Field(
        default=None, description="The last retry request honoured: each request is honoured once."
    )
    step: int | None = None
    weight: float = Field(
        default=0, description="The step's canary share, percent (two decimals: basis points exact)."
    )
    actualWeight: float = Field(
        default=0,
        description="The canary's share as served, percent: its share of ready pods (replica ratio), the "
        "route's weight (HTTPRoute), or of the orders the callers counted (orderFlow).",
    )
    shadow: bool = Field(
        default=False,
        description="The canary's steps run in shadow mode (it answers no client: orderFlow.mode shadow or "
        "stateShadow); a change of mode restarts the steps at 1 in the new mode.",
    )
    stepStartedAt: str | None = None
    lastAnalysisAt: str | None = None
    failedIntervals: int = 0
    inconclusiveIntervals: int = 0
    lastAnalysis: AnalysisResult | None = None
    message: str = ""

    def condition(self, kind: ConditionType) -> Condition:
        return next(
            (condition for condition in self.conditions if condition.type == kind),
            Condition(type=kind, status="Unknown", reason="Unknown"),
        )

    def set_condition(
        self,
        kind: ConditionType,
        holds: bool,
        reason: str,
        message: str,
        now: datetime,
        generation: int | None,
    ) -> Condition:
        """Set a condition, keeping its transition time while its state holds; answer the previous one.
        Times are whole seconds, as Kubernetes stamps conditions."""
        state: ConditionStatus = "True" if holds else "False"
        previous = self.condition(kind)
        changed = previous.status != state
        self.conditions = [c for c in self.conditions if c.type != kind] + [
            Condition(
                type=kind,
                status=state,
                reason=reason,
                message=message,
                lastTransitionTime=now_iso(now.replace(microsecond=0))
                if changed
                else previous.lastTransitionTime,
                observedGeneration=generation,
            )
        ]
        self.conditions.sort(key=lambda condition: CONDITION_ORDER.index(condition.type))
        return previous


class TradingService(Model):
    """A whole manifest, as `kubectl apply` sends it; the CRD's root schema carries its rules."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, use_enum_values=True)

    apiVersion: Literal["tradeplane.io/v1alpha1"]
    kind: Literal["TradingService"]
    metadata: ObjectMeta
    spec: TradingServiceSpec
    status: TradingServiceStatus | None = None

    rules = (
        Rule(
            f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
            f"metadata.name must be at most {MAX_NAME_LENGTH} characters: children are named "
            "<name>-canary and <name>-<revision>",
            lambda service: len(service.metadata.name) <= MAX_NAME_LENGTH,
            "metadata",
        ),
        Rule(
            f"self.metadata.name.matches('{NAME_PATTERN}')",
            "metadata.name must start with a letter and hold only lower-case letters, digits and '-': "
            "it names a Service",
            lambda service: re.fullmatch(NAME_PATTERN, service.metadata.name) is not None,
            "metadata",
        ),
    )


def percent(basis_points: int) -> float:
    """Basis points as a percent, exact to its two decimals."""
    return round(basis_points / (BASIS_POINTS // 100), 2)


def now_iso(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")
