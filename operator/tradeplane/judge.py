"""The judge: figures of a canary (and its stable baseline) over one window -> a verdict. Pure.

The judge walks a list of gates (`gates_for`): samples >= minSamples, p99 <= SLO, error rate <= max, the
p99 regression against the stable when maxRegressionVsBaseline is set, then the trading gates of
`analysis.gates`. Each gate is a small `Gate` giving a `GateResult` (value, baseline, threshold, samples);
every gate is judged and reported, and the first that did not pass decides. Adding a gate kind is one
class and one entry in `TRADING_GATES`. In a shadow rollout with slo.maxDecisionMismatch, the
decision-mismatch gate (decision_gate.py) comes last.

A state shadow's canary serves no client: it has no latency samples, requests or errors, so the gates on
them (samples, p99, errorRate, baseline) are not judged, rather than left Inconclusive forever. Its gates
are the state comparison (the decision-mismatch gate, at slo.maxDecisionMismatch or else 0) and the
trading gates of analysis.gates, each Inconclusive when its series has no data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tradeplane.api import SLO, Analysis, AnalysisResult, GateResult, Verdict, now_iso
from tradeplane.api import Gate as GateSettings
from tradeplane.decision_gate import GATE as DECISION_GATE
from tradeplane.decision_gate import decision_mismatch
from tradeplane.measurement import (
    ACCEPTED_REASON,
    DECISIONS_METRIC,
    FILLS_METRIC,
    ORDERS_METRIC,
    REQUESTS_METRIC,
    Decisions,
    Measurement,
    ProviderUnavailable,
    Series,
)

DECISIONS = Series(DECISIONS_METRIC, by="reason")
ORDERS = Series(ORDERS_METRIC)
FILLS = Series(FILLS_METRIC)
RATE_SLACK = 0.01
"""Default slack of the rate gates: one percentage point."""


class Gate(Protocol):
    """One gate: what it reads, whether it needs the stable measured, and its verdict."""

    @property
    def name(self) -> str: ...

    @property
    def needs(self) -> tuple[Series, ...]: ...

    @property
    def relative(self) -> bool: ...

    def __call__(
        self, canary: Measurement, baseline: Measurement | None, analysis: Analysis
    ) -> GateResult: ...


def _result(
    gate: str,
    verdict: Verdict,
    message: str,
    value: float | None = None,
    threshold: float | None = None,
    samples: int = 0,
    baseline: float | None = None,
) -> GateResult:
    return GateResult(
        gate=gate,
        verdict=verdict,
        value=value,
        threshold=threshold,
        samples=samples,
        baseline=baseline,
        message=message,
    )


@dataclass(frozen=True)
class SamplesGate:
    name = "samples"
    needs: tuple[Series, ...] = ()
    relative = False

    def __call__(self, canary: Measurement, baseline: Measurement | None, analysis: Analysis) -> GateResult:
        samples = canary.samples
        if samples < analysis.minSamples or canary.p99_micros is None:
            message = f"{samples} samples in {analysis.window}, fewer than minSamples {analysis.minSamples}"
            return _result(self.name, Verdict.INCONCLUSIVE, message, samples, analysis.minSamples, samples)
        return _result(self.name, Verdict.PASS, "", samples, analysis.minSamples, samples)


@dataclass(frozen=True)
class P99Gate:
    slo: SLO
    name = "p99"
    needs: tuple[Series, ...] = ()
    relative = False

    def __call__(self, canary: Measurement, baseline: Measurement | None, analysis: Analysis) -> GateResult:
        p99, limit, samples = canary.p99_micros, self.slo.p99LatencyMicros, canary.samples
        if p99 is None:
            return _result(self.name, Verdict.INCONCLUSIVE, "no latency samples", None, limit)
        if p99 > limit:
            message = f"p99 {p99}us over {analysis.window} exceeds the SLO {limit}us ({samples} samples)"
            return _result(self.name, Verdict.FAIL, message, p99, limit, samples)
        return _result(self.name, Verdict.PASS, "", p99, limit, samples)


@dataclass(frozen=True)
class ErrorRateGate:
    slo: SLO
    name = "errorRate"
    needs: tuple[Series, ...] = ()
    relative = False

    def __call__(self, canary: Measurement, baseline: Measurement | None, analysis: Analysis) -> GateResult:
        error_rate, limit = canary.error_rate, self.slo.maxErrorRate
        if error_rate is None:
            return _result(self.name, Verdict.INCONCLUSIVE, f"no {REQUESTS_METRIC}: error rate unknown")
        if error_rate > limit:
            message = (
                f"error rate {error_rate:.4g} ({canary.errors}/{canary.requests}) over {analysis.window} "
                f"exceeds {limit}"
            )
            return _result(self.name, Verdict.FAIL, message, error_rate, limit, canary.requests)
        return _result(self.name, Verdict.PASS, "", error_rate, limit, canary.requests)


@dataclass(frozen=True)
class RegressionGate:
    """Canary p99 <= stable p99 x maxRegressionVsBaseline over the same window."""

    factor: float
    name = "baseline"
    needs: tuple[Series, ...] = ()
    relative = True

    def __call__(self, canary: Measurement, baseline: Measurement | None, analysis: Analysis) -> GateResult:
        assert baseline is not None  # the judge answers a missing baseline for every relative gate
        baseline_p99 = baseline.p99_micros
        if baseline.samples < analysis.minSamples or baseline_p99 is None:
            message = (
                f"stable baseline has {baseline.samples} samples in {analysis.window}, fewer than "
                f"minSamples {analysis.minSamples}"
            )
            return _result(self.name, Verdict.INCONCLUSIVE, message, baseline.samples, analysis.minSamples)
        p99, limit = canary.p99_micros, round(baseline_p99 * self.factor, 1)
        if p99 is not None and p99 > limit:
            message = (
                f"p99 {p99}us exceeds stable p99 {baseline_p99}us x {self.factor} = {limit}us over "
                f"{analysis.window}"
            )
            return _result(self.name, Verdict.FAIL, message, p99, limit, canary.samples, baseline_p99)
        return _result(self.name, Verdict.PASS, "", p99, limit, canary.samples, baseline_p99)


def _too_few(name: str, what: str, counts: Mapping[str, int], analysis: Analysis) -> GateResult | None:
    """Inconclusive when the canary or the stable saw fewer than minSamples of `what` in the window."""
    for revision, count in counts.items():
        if count < analysis.minSamples:
            message = (
                f"{revision} has {count} {what} in {analysis.window}, fewer than minSamples "
                f"{analysis.minSamples}"
            )
            return _result(name, Verdict.INCONCLUSIVE, message, count, analysis.minSamples, count)
    return None


@dataclass(frozen=True)
class RejectRateGate:
    """Rejects per decision, overall and per reason: canary <= stable x factor + slack, each of them."""

    settings: GateSettings
    name = "rejectRate"
    needs: tuple[Series, ...] = (DECISIONS,)
    relative = True

    def __call__(self, canary: Measurement, baseline: Measurement | None, analysis: Analysis) -> GateResult:
        assert baseline is not None
        factor = self.settings.factor if self.settings.factor is not None else 2.0
        slack = self.settings.slack if self.settings.slack is not None else RATE_SLACK
        ours, theirs = canary.series.get(DECISIONS, {}), baseline.series.get(DECISIONS, {})
        decisions, stable_decisions = round(sum(ours.values())), round(sum(theirs.values()))
        too_few = _too_few(
            self.name, "decisions", {"canary": decisions, "stable": stable_decisions}, analysis
        )
        if too_few is not None:
            return too_few
        reasons = self.settings.reasons or sorted((set(ours) | set(theirs)) - {ACCEPTED_REASON})
        overall = ("rejects", _rejects(ours) / decisions, _rejects(theirs) / stable_decisions)
        by_reason = [
            (reason, ours.get(reason, 0.0) / decisions, theirs.get(reason, 0.0) / stable_decisions)
            for reason in reasons
        ]

        def excess(entry: tuple[str, float, float]) -> float:
            _, rate, stable_rate = entry
            return rate - (stable_rate * factor + slack)

        # A desk wants the reason: the worst breaching one decides before the overall rate, which is at
        # least as high whenever any reason is.
        breaching = [entry for entry in by_reason if excess(entry) > 0]
        what, rate, stable_rate = max(breaching, key=excess) if breaching else overall
        limit = stable_rate * factor + slack
        if rate > limit:
            message = (
                f"{what} rate {rate:.4g} of {decisions} decisions over {analysis.window} exceeds the "
                f"stable's {stable_rate:.4g} x {factor} + {slack} = {limit:.4g}"
            )
            return _result(self.name, Verdict.FAIL, message, rate, limit, decisions, stable_rate)
        return _result(self.name, Verdict.PASS, "", rate, limit, decisions, stable_rate)


def _rejects(by_reason: Mapping[str, float]) -> float:
    return sum(count for reason, count in by_reason.items() if reason != ACCEPTED_REASON)


@dataclass(frozen=True)
class FillRatioGate:
    """Fills per routed order: canary >= stable x factor - slack."""

    settings: GateSettings
    name = "fillRatio"
    needs: tuple[Series, ...] = (ORDERS, FILLS)
    relative = True

    def __call__(self, canary: Measurement, baseline: Measurement | None, analysis: Analysis) -> GateResult:
        assert baseline is not None
        factor = self.settings.factor if self.settings.factor is not None else 0.8
        slack = self.settings.slack if self.settings.slack is not None else RATE_SLACK
        orders, stable_orders = (round(sum(m.series.get(ORDERS, {}).values())) for m in (canary, baseline))
        too_few = _too_few(self.name, "orders", {"canary": orders, "stable": stable_orders}, analysis)
        if too_few is not None:
            return too_few
        ratio = sum(canary.series.get(FILLS, {}).values()) / orders
        stable_ratio = sum(baseline.series.get(FILLS, {}).values()) / stable_orders
        limit = stable_ratio * factor - slack
        if ratio < limit:
            message = (
                f"fill ratio {ratio:.4g} over {orders} orders in {analysis.window} is under the stable's "
                f"{stable_ratio:.4g} x {factor} - {slack} = {limit:.4g}"
            )
            return _result(self.name, Verdict.FAIL, message, ratio, limit, orders, stable_ratio)
        return _result(self.name, Verdict.PASS, "", ratio, limit, orders, stable_ratio)


@dataclass(frozen=True)
class MetricGate:
    """A desk's own series, against an absolute threshold or the stable's value x factor +/- slack."""

    settings: GateSettings

    @property
    def name(self) -> str:
        return self.settings.label

    @property
    def series(self) -> Series:
        gate = self.settings
        return Series(metric=gate.metric, counter=gate.type == "counter", query=gate.query)

    @property
    def needs(self) -> tuple[Series, ...]:
        return (self.series,)

    @property
    def relative(self) -> bool:
        return self.settings.factor is not None

    def __call__(self, canary: Measurement, baseline: Measurement | None, analysis: Analysis) -> GateResult:
        gate, series = self.settings, self.series
        what = gate.query or gate.metric
        value = _value(canary, series)
        if value is None:
            return _result(self.name, Verdict.INCONCLUSIVE, f"no data for {what} of the canary")
        stable_value = None
        if gate.factor is None:
            assert gate.threshold is not None  # the models hold a metric gate to one of the two
            limit = gate.threshold
        else:
            stable_value = None if baseline is None else _value(baseline, series)
            if stable_value is None:
                return _result(self.name, Verdict.INCONCLUSIVE, f"no data for {what} of the stable", value)
            slack = gate.slack or 0.0
            limit = stable_value * gate.factor + (slack if gate.direction == "max" else -slack)
        broken = value > limit if gate.direction == "max" else value < limit
        if broken:
            side = "above the maximum" if gate.direction == "max" else "below the minimum"
            message = f"{what} = {value:.6g} over {analysis.window} is {side} {limit:.6g}"
            return _result(self.name, Verdict.FAIL, message, value, limit, canary.requests, stable_value)
        return _result(self.name, Verdict.PASS, "", value, limit, canary.requests, stable_value)


def _value(measured: Measurement, series: Series) -> float | None:
    values = measured.series.get(series, {})
    return sum(values.values()) if values else None


TRADING_GATES: dict[str, Callable[[GateSettings], Gate]] = {
    "rejectRate": RejectRateGate,
    "fillRatio": FillRatioGate,
    "metric": MetricGate,
}
"""Gate kinds of `spec.rollout.analysis.gates`, by `kind`."""


def gates_for(slo: SLO, analysis: Analysis, serves_clients: bool = True) -> list[Gate]:
    """The gates of one analysis, in the order they decide (a canary that serves no client has no
    latency or error figures to judge)."""
    gates: list[Gate] = []
    if serves_clients:
        gates += [SamplesGate(), P99Gate(slo), ErrorRateGate(slo)]
        if analysis.maxRegressionVsBaseline is not None:
            gates.append(RegressionGate(analysis.maxRegressionVsBaseline))
    gates += [TRADING_GATES[settings.kind](settings) for settings in analysis.gates]
    return gates


def judge(
    canary: Measurement | ProviderUnavailable,
    baseline: Measurement | ProviderUnavailable | None,
    slo: SLO,
    analysis: Analysis,
    revision: str,
    now: datetime,
    decisions: Decisions | ProviderUnavailable | None = None,
    state_shadow: bool = False,
) -> AnalysisResult:
    """The verdict on one interval. Too few samples is Inconclusive, never Pass.

    An unreachable provider is Inconclusive. Otherwise every gate is judged; a gate relative to the
    stable is Inconclusive when the stable could not be measured. The first gate that did not pass
    decides; when all pass, the verdict reports p99.
    """
    measured = canary if isinstance(canary, Measurement) else Measurement(None, 0, 0, 0)

    def verdict(decider: GateResult, results: list[GateResult], message: str) -> AnalysisResult:
        p99_result = next((result for result in results if result.gate == "baseline"), None)
        samples = measured.samples
        if state_shadow:  # no latency samples: what the verdict stands on is the states compared
            samples = next((result.samples for result in results if result.gate == DECISION_GATE), 0)
        return AnalysisResult(
            verdict=decider.verdict,
            gate=decider.gate,
            value=decider.value,
            threshold=decider.threshold,
            baselineValue=decider.baseline,
            gates=results,
            p99Micros=measured.p99_micros,
            baselineP99Micros=p99_result.baseline if p99_result else None,
            errorRate=measured.error_rate,
            samples=samples,
            window=analysis.window,
            revision=revision,
            message=message,
            time=now_iso(now),
        )

    if isinstance(canary, ProviderUnavailable):
        return verdict(_result("provider", Verdict.INCONCLUSIVE, str(canary)), [], str(canary))
    results = []
    for gate in gates_for(slo, analysis, serves_clients=not state_shadow):
        if not gate.relative:
            results.append(gate(canary, None, analysis))
        elif isinstance(baseline, Measurement):
            results.append(gate(canary, baseline, analysis))
        else:
            reason = "not measured" if baseline is None else str(baseline)
            results.append(_result(gate.name, Verdict.INCONCLUSIVE, f"stable baseline unavailable: {reason}"))
    max_mismatch = slo.maxDecisionMismatch
    if max_mismatch is None and state_shadow:
        max_mismatch = 0.0  # projections of the same log agree exactly
    if decisions is not None and max_mismatch is not None:
        results.append(
            decision_mismatch(decisions, max_mismatch, analysis.minSamples, analysis.window, revision)
        )
    decider = next((result for result in results if result.verdict != Verdict.PASS), None)
    if decider is not None:
        return verdict(decider, results, decider.message)
    # The p99 gate when the canary serves clients; a state shadow's last gate is its state comparison.
    passed = next((result for result in results if result.gate == "p99"), results[-1])
    return verdict(passed, results, f"all gates passed on {passed.samples} samples")
