"""The decision-mismatch gate of shadow rollouts: how often the canary decided otherwise than the stable
(order flow's shadow), or held another state at the same log sequence (a state shadow).

Pure. The fraction is (mismatch + unanswered) / compared, compared being every copy whose window closed
(match + mismatch + unanswered): a canary that does not answer is not agreeing. Fewer compared decisions
than minSamples is Inconclusive, never Pass.
"""

from __future__ import annotations

from tradeplane.api import GateResult, Verdict
from tradeplane.measurement import Decisions, ProviderUnavailable

GATE = "decisionMismatch"


def decision_mismatch(
    decisions: Decisions | ProviderUnavailable,
    max_mismatch: float,
    min_decisions: int,
    window: str,
    revision: str,
) -> GateResult:
    """Fail when the canary's mismatch fraction over the window exceeds `max_mismatch`."""
    if isinstance(decisions, ProviderUnavailable):
        return GateResult(
            gate=GATE, verdict=Verdict.INCONCLUSIVE, message=f"shadow decisions unavailable: {decisions}"
        )
    compared = decisions.match + decisions.mismatch + decisions.unanswered
    if compared < min_decisions:
        return GateResult(
            gate=GATE,
            verdict=Verdict.INCONCLUSIVE,
            message=f"{compared} {decisions.what} of revision {revision} compared "
            f"{decisions.span or f'in {window}'}, fewer than minSamples {min_decisions}",
            value=compared,
            threshold=min_decisions,
            samples=compared,
        )
    disagreed = decisions.mismatch + decisions.unanswered
    fraction = disagreed / compared
    figures = (
        f"{disagreed}/{compared} {decisions.what} of revision {revision} differ from the stable's "
        f"{decisions.span or f'over {window}'} ({decisions.mismatch} mismatched, {decisions.unanswered} "
        "unanswered)"
    )
    if decisions.detail:
        figures += f", {decisions.detail}"
    failed = fraction > max_mismatch
    return GateResult(
        gate=GATE,
        verdict=Verdict.FAIL if failed else Verdict.PASS,
        message=f"{figures}: {fraction:.4g} {'exceeds' if failed else 'within'} maxDecisionMismatch "
        f"{max_mismatch}",
        value=round(fraction, 6),
        threshold=max_mismatch,
        samples=compared,
    )
