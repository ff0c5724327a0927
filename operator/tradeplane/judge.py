"""The judge: figures of a canary (and its stable baseline) over one window -> a verdict. Pure.

Gates in order: provider reachable, samples >= minSamples, p99 <= SLO, error rate <= max, and when
maxRegressionVsBaseline is set, canary p99 <= stable p99 x factor over the same window; in a shadow
rollout with slo.maxDecisionMismatch, the decision-mismatch gate (decision_gate.py).
"""

from __future__ import annotations

from datetime import datetime

from tradeplane.api import SLO, Analysis, AnalysisResult, Verdict, now_iso
from tradeplane.decision_gate import decision_mismatch
from tradeplane.measurement import REQUESTS_METRIC, Decisions, Measurement, ProviderUnavailable


def judge(
    canary: Measurement | ProviderUnavailable,
    baseline: Measurement | ProviderUnavailable | None,
    slo: SLO,
    analysis: Analysis,
    revision: str,
    now: datetime,
    decisions: Decisions | ProviderUnavailable | None = None,
) -> AnalysisResult:
    """The verdict on one interval. Too few samples is Inconclusive, never Pass.

    Gates in order: provider reachable, samples >= minSamples, p99 <= SLO, error rate <= max, and when
    maxRegressionVsBaseline is set, canary p99 <= stable p99 x factor over the same window (a stable
    without enough samples makes that gate Inconclusive). The first gate that does not pass decides.
    """
    window = analysis.window

    def result(
        verdict: Verdict,
        gate: str,
        message: str,
        value: float | None = None,
        threshold: float | None = None,
        baseline_p99: float | None = None,
        samples: int | None = None,
    ) -> AnalysisResult:
        measured = canary if isinstance(canary, Measurement) else Measurement(None, 0, 0, 0)
        return AnalysisResult(
            verdict=verdict,
            gate=gate,
            value=value,
            threshold=threshold,
            p99Micros=measured.p99_micros,
            baselineP99Micros=baseline_p99,
            errorRate=measured.error_rate,
            samples=measured.samples if samples is None else samples,
            window=window,
            revision=revision,
            message=message,
            time=now_iso(now),
        )

    if isinstance(canary, ProviderUnavailable):
        return result(Verdict.INCONCLUSIVE, "provider", str(canary))
    p99, samples = canary.p99_micros, canary.samples
    if samples < analysis.minSamples or p99 is None:
        return result(
            Verdict.INCONCLUSIVE,
            "samples",
            f"{samples} samples in {window}, fewer than minSamples {analysis.minSamples}",
            samples,
            analysis.minSamples,
        )
    if p99 > slo.p99LatencyMicros:
        return result(
            Verdict.FAIL,
            "p99",
            f"p99 {p99}us over {window} exceeds the SLO {slo.p99LatencyMicros}us ({samples} samples)",
            p99,
            slo.p99LatencyMicros,
        )
    error_rate = canary.error_rate
    if error_rate is None:
        return result(
            Verdict.INCONCLUSIVE,
            "errorRate",
            f"no {REQUESTS_METRIC} for revision {revision}: error rate unknown",
        )
    if error_rate > slo.maxErrorRate:
        return result(
            Verdict.FAIL,
            "errorRate",
            f"error rate {error_rate:.4g} ({canary.errors}/{canary.requests}) over {window} exceeds "
            f"{slo.maxErrorRate}",
            error_rate,
            slo.maxErrorRate,
        )
    factor = analysis.maxRegressionVsBaseline
    baseline_p99 = None
    if factor is not None:
        if not isinstance(baseline, Measurement):
            reason = "not measured" if baseline is None else str(baseline)
            return result(Verdict.INCONCLUSIVE, "baseline", f"stable baseline unavailable: {reason}")
        baseline_p99 = baseline.p99_micros
        if baseline.samples < analysis.minSamples or baseline_p99 is None:
            return result(
                Verdict.INCONCLUSIVE,
                "baseline",
                f"stable baseline has {baseline.samples} samples in {window}, fewer than minSamples "
                f"{analysis.minSamples}",
                baseline.samples,
                analysis.minSamples,
            )
        limit = round(baseline_p99 * factor, 1)
        if p99 > limit:
            return result(
                Verdict.FAIL,
                "baseline",
                f"p99 {p99}us exceeds stable p99 {baseline_p99}us x {factor} = {limit}us over {window}",
                p99,
                limit,
                baseline_p99,
            )
    if decisions is not None and slo.maxDecisionMismatch is not None:
        gate = decision_mismatch(decisions, slo.maxDecisionMismatch, analysis.minSamples, window, revision)
        if gate.verdict != Verdict.PASS:
            return result(
                gate.verdict, gate.gate, gate.message, gate.value, gate.threshold, baseline_p99, gate.samples
            )
    return result(
        Verdict.PASS,
        "p99",
        f"all gates passed on {samples} samples",
        p99,
        slo.p99LatencyMicros,
        baseline_p99,
    )
