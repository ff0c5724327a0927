"""The TradingService API, defined once: the CRD under `crds/` is generated from these models.

Field names are the wire names (camelCase) so that a model dumps straight into a manifest.
Rules a structural schema cannot say travel as CEL `x-kubernetes-validations`, so the API server
refuses bad manifests at `kubectl apply` with a message naming the field.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "tradeplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TradingService"
PLURAL = "tradingservices"
SINGULAR = "tradingservice"
SHORT_NAMES = ["ts"]

POOL_LABEL = "tradeplane.io/pool"
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
QUANTITY_PATTERN = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"
MAX_ROLLOUT_STEPS = 10
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_BINARY_SUFFIXES = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL_SUFFIXES = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `30s`, `1m30s` or `250ms`."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 1m30s or 250ms")
    return sum(int(n) * _DURATION_UNITS[unit] for n, unit in re.findall(r"([0-9]+)(ms|s|m|h)", text))


def parse_quantity(text: str) -> int:
    """Bytes (or units) in a Kubernetes quantity limited to the integer forms this API accepts."""
    match = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?", text)
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as 8Gi or 512Mi")
    number, suffix = int(match.group(1)), match.group(2) or ""
    return number * (_BINARY_SUFFIXES.get(suffix) or _DECIMAL_SUFFIXES[suffix])


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    validation = {"rule": rule, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=True)


class Component(StrEnum):
    ORDER = "order"
    RISK = "risk"
    MARKET_DATA = "market-data"
    POSITION = "position"
    EXECUTION = "execution"
    CUSTOM = "custom"


class HugePages(Model):
    pageSize: Literal["2Mi", "1Gi"] = Field(description="Huge page size; the pod asks hugepages-<pageSize>.")
    amount: str = Field(pattern=QUANTITY_PATTERN, description="Total huge page memory, e.g. 2Gi.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "quantity(self.amount).asInteger() > 0 && "
                    "quantity(self.amount).asInteger() % quantity(self.pageSize).asInteger() == 0",
                    "hugepages amount must be a positive multiple of pageSize",
                    ".amount",
                )
            ]
        }
    )


class Resources(Model):
    cpus: int = Field(
        ge=1, le=512, description="Exclusive cores: an integer, so the static CPU manager pins them."
    )
    memory: str = Field(pattern=QUANTITY_PATTERN, description="Memory, requests == limits, e.g. 8Gi.")
    hugepages: HugePages | None = None


class Isolation(Model):
    """What the runtime should stop doing on the pinned cores (CRI-O annotations, as OpenShift does)."""

    cpuLoadBalancing: bool = Field(True, description="false: disable kernel load balancing on the cores.")
    irqLoadBalancing: bool = Field(True, description="false: keep device interrupts off the cores.")
    cpuQuota: bool = Field(True, description="false: disable CFS quota throttling for the pod.")


class Placement(Model):
    pool: str = Field(
        "trading",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description=f"Node pool: nodes labelled {POOL_LABEL}=<pool>; the pool's taint is tolerated.",
    )
    numa: Literal["single-numa-node", "restricted", "best-effort", "none"] = Field(
        "single-numa-node", description="Topology hint, checked against the nodes' feature labels."
    )
    spread: Literal["host", "none"] = Field("host", description="host: replicas never share a node.")
    runtimeClassName: str | None = Field(None, description="Runtime class carrying the isolation asks.")
    isolation: Isolation = Field(default_factory=Isolation)


class Network(Model):
    capabilities: list[Literal["NET_ADMIN", "NET_RAW"]] = Field(
        default_factory=list, description="Added only when asked; everything else is dropped."
    )


class SLO(Model):
    p99LatencyMicros: int = Field(100, ge=1, description="Canary p99 latency gate, microseconds.")
    maxErrorRate: float = Field(0.001, ge=0, le=1, description="Canary error-rate gate, a fraction.")


class RolloutStep(Model):
    weight: int = Field(ge=1, le=100, description="Percent of traffic (or replicas) on the canary.")
    pause: str = Field("30s", pattern=DURATION_PATTERN, description="How long the step is analysed.")


class Analysis(Model):
    provider: Literal["prometheus", "scrape"] = Field(
        "scrape", description="prometheus: PromQL over the HTTP API; scrape: the pods' /metrics directly."
    )
    prometheusUrl: str | None = Field(None, description="Prometheus base URL for the prometheus provider.")
    query: str | None = Field(
        None, description="PromQL template for p99 in seconds; {service}, {namespace}, {revision}, {window}."
    )
    interval: str = Field("5s", pattern=DURATION_PATTERN)
    window: str = Field("30s", pattern=DURATION_PATTERN)
    minSamples: int = Field(200, ge=1, description="Fewer samples than this is Inconclusive, never Pass.")
    failureLimit: int = Field(1, ge=1, description="Failed intervals that roll back.")
    inconclusiveLimit: int = Field(12, ge=1, description="Inconclusive intervals in a row that roll back.")
    maxRegressionVsBaseline: float | None = Field(
        None, ge=1, description="Canary p99 must stay under stable p99 times this."
    )


class FreezeWindow(Model):
    """No promotion inside: an exchange session from a calendar, or a daily time window in a timezone."""

    calendar: str | None = Field(None, description="Exchange calendar code, e.g. XNYS, XLON.")
    session: Literal["regular", "open", "close"] = Field(
        "regular", description="regular: the whole session; open/close: 15 minutes around the bell."
    )
    start: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM.")
    end: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM.")
    timezone: str = Field("UTC", description="IANA timezone for start and end.")
    days: list[Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]] = Field(default_factory=list)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.calendar) != (has(self.start) && has(self.end))",
                    "a freeze window names either a calendar or both start and end",
                ),
                cel("has(self.start) == has(self.end)", "start and end go together"),
            ]
        }
    )


class HTTPRouteRef(Model):
    name: str = Field(min_length=1, description="Gateway API HTTPRoute whose backend weights are split.")


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

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    " && ".join(
                        f"(size(self.steps) <= {i} || self.steps[{i}].weight > self.steps[{i - 1}].weight)"
                        for i in range(1, MAX_ROLLOUT_STEPS)
                    ),
                    "rollout step weights must be strictly increasing",
                    ".steps",
                )
            ]
        }
    )


class TradingServiceSpec(Model):
    component: Component = Field(description="A bundled service, or custom for any image.")
    image: str = Field(min_length=1, description="Container image of the service.")
    replicas: int = Field(2, ge=0, le=100)
    command: list[str] = Field(default_factory=list, description="custom only: the container command.")
    port: int | None = Field(
        None, ge=1, le=65535, description="Wire-protocol port; defaults per component."
    )
    metricsPort: int = Field(9100, ge=1, le=65535, description="HTTP port of /metrics, /healthz, /readyz.")
    resources: Resources
    placement: Placement = Field(default_factory=Placement)
    network: Network = Field(default_factory=Network)
    config: dict[str, Any] = Field(default_factory=dict, description="Component settings.")
    slo: SLO = Field(default_factory=SLO)
    rollout: Rollout = Field(default_factory=Rollout)
    paused: bool = Field(False, description="Hold the rollout at its current step.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.component != 'custom' || size(self.command) > 0",
                    "custom components need a command",
                    ".command",
                ),
                cel(
                    "self.component != 'custom' || has(self.port)",
                    "custom components need a port",
                    ".port",
                ),
                cel(
                    "!has(self.port) || self.port != self.metricsPort",
                    "port and metricsPort must differ",
                    ".metricsPort",
                ),
            ]
        }
    )


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


class Condition(Model):
    type: Literal["Ready", "Placed", "Progressing", "Degraded"]
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    lastTransitionTime: str | None = None
    observedGeneration: int | None = None


class AnalysisResult(Model):
    verdict: Verdict
    gate: str | None = Field(
        None, description="The gate that decided: provider, samples, p99, errorRate or baseline."
    )
    value: float | None = Field(None, description="The deciding gate's measured value.")
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
    failedSpec: str | None = Field(
        None, description="Fingerprint of the spec the revision failed under; a spec change retries it."
    )
    step: int | None = None
    weight: int = 0
    actualWeight: int = 0
    stepStartedAt: str | None = None
    lastAnalysisAt: str | None = None
    failedIntervals: int = 0
    inconclusiveIntervals: int = 0
    lastAnalysis: AnalysisResult | None = None
    message: str = ""


def now_iso(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")
