"""The decision-mismatch gate of shadow rollouts: how often the canary decided otherwise than the stable.

Pure. The fraction is (mismatch + unanswered) / compared, compared being every copy whose window closed
(match + mismatch + unanswered): a canary that does not answer is not agreeing. Fewer compared decisions
than minSamples is Inconclusive, never Pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from tradeplane.api import Verdict
from tradeplane.measurement import Decisions, ProviderUnavailable

GATE = "decisionMismatch"


@dataclass(frozen=True)
class GateOutcome:
    """A gate's finding: its verdict with the figures the analysis result shows."""

    verdict: Verdict
    gate: str
    message: str
    value: float | None = None
    threshold: float | None = None
    samples: int | None = None


def decision_mismatch(
    decisions: Decisions | ProviderUnavailable,
    max_mismatch: float,
    min_decisions: int,
    window: str,
    revision: str,
) -> GateOutcome:
    """Fail when the canary's mismatch fraction over the window exceeds `max_mismatch`."""
    if isinstance(decisions, ProviderUnavailable):
        return GateOutcome(Verdict.INCONCLUSIVE, GATE, f"shadow decisions unavailable: {decisions}")
    compared = decisions.match + decisions.mismatch + decisions.unanswered
    if compared < min_decisions:
        return GateOutcome(
            Verdict.INCONCLUSIVE,
            GATE,
            f"{compared} shadow decisions of revision {revision} compared in {window}, fewer than "
            f"minSamples {min_decisions}",
            compared,
            min_decisions,
            compared,
        )
    disagreed = decisions.mismatch + decisions.unanswered
    fraction = disagreed / compared
    figures = (
        f"{disagreed}/{compared} shadow decisions of revision {revision} differ from the stable's over "
        f"{window} ({decisions.mismatch} mismatched, {decisions.unanswered} unanswered)"
    )
    if fraction > max_mismatch:
        return GateOutcome(
            Verdict.FAIL,
            GATE,
            f"{figures}: {fraction:.4g} exceeds maxDecisionMismatch {max_mismatch}",
            round(fraction, 6),
            max_mismatch,
            compared,
        )
    return GateOutcome(
        Verdict.PASS,
        GATE,
        f"{figures}: {fraction:.4g} within maxDecisionMismatch {max_mismatch}",
        round(fraction, 6),
        max_mismatch,
        compared,
    )
