"""The trading gates of the judge: reject rate by reason, fill ratio and a desk's own metric, each against
the stable revision over the same window (or an absolute bound), each reported with value, baseline,
threshold and samples."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tradeplane.api import SLO, Analysis, AnalysisResult, GateResult, Verdict
from tradeplane.judge import DECISIONS, FILLS, ORDERS, judge
from tradeplane.measurement import Measurement, ProviderUnavailable, Series

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
SLO_100US = SLO(p99LatencyMicros=100, maxErrorRate=0.01)
PNL = Series(metric="desk_pnl", counter=False)


def figures(p99_micros: float = 50, **series: dict[str, float]) -> Measurement:
    """A revision within the SLO, with the given series (keyword: decisions, orders, fills, pnl)."""
    named = {"decisions": DECISIONS, "orders": ORDERS, "fills": FILLS, "pnl": PNL}
    return Measurement(p99_micros / 1e6, 1000, 1000, 0, {named[key]: value for key, value in series.items()})


def analysis(*gates: dict[str, Any]) -> Analysis:
    return Analysis.model_validate({"minSamples": 100, "window": "30s", "gates": list(gates)})


def gate(result: AnalysisResult, name: str) -> GateResult:
    return next(each for each in result.gates if each.gate == name)


def test_a_new_reject_reason_fails_even_when_the_overall_rate_matches_the_stable() -> None:
    # The stable rejects 40% as duplicates; the canary rejects 40% for quantity: same overall rate.
    stable = figures(decisions={"OK": 600, "DUPLICATE_ORDER": 400})
    canary = figures(decisions={"OK": 300, "MAX_QUANTITY": 200})
    result = judge(canary, stable, SLO_100US, analysis({"kind": "rejectRate"}), "r2", NOW)
    assert (result.verdict, result.gate) == (Verdict.FAIL, "rejectRate")
    assert (result.value, result.baselineValue, result.threshold) == (0.4, 0.0, 0.01)
    assert result.window == "30s" and gate(result, "rejectRate").samples == 500
    assert "MAX_QUANTITY rate 0.4 of 500 decisions" in result.message


def test_the_breaching_reason_is_named_rather_than_the_overall_rate() -> None:
    # Every reject is one reason: its rate and the overall rate are equal, the reason is what a desk needs.
    stable = figures(decisions={"OK": 1000})
    canary = figures(decisions={"OK": 100, "MAX_QUANTITY": 400})
    result = judge(canary, stable, SLO_100US, analysis({"kind": "rejectRate"}), "r2", NOW)
    assert result.verdict == Verdict.FAIL and "MAX_QUANTITY rate 0.8 of 500 decisions" in result.message


def test_the_overall_rate_fails_when_no_single_reason_does() -> None:
    stable = figures(decisions={"OK": 1000})
    canary = figures(decisions={"OK": 980, "MAX_QUANTITY": 8, "PRICE_COLLAR": 8, "MAX_NOTIONAL": 8})
    result = judge(canary, stable, SLO_100US, analysis({"kind": "rejectRate"}), "r2", NOW)
    assert result.verdict == Verdict.FAIL and result.message.startswith("rejects rate 0.0239 of 1004")


def test_a_reject_rate_within_factor_and_slack_of_the_stable_passes() -> None:
    stable = figures(decisions={"OK": 900, "MAX_QUANTITY": 100})  # 10%
    canary = figures(decisions={"OK": 790, "MAX_QUANTITY": 210})  # 21% <= 10% x 2 + 1%
    result = judge(canary, stable, SLO_100US, analysis({"kind": "rejectRate"}), "r2", NOW)
    assert result.verdict == Verdict.PASS
    reported = gate(result, "rejectRate")
    assert (reported.value, reported.baseline, reported.threshold, reported.samples) == pytest.approx(
        (0.21, 0.1, 0.21, 1000)
    )
    worse = figures(decisions={"OK": 780, "MAX_QUANTITY": 220})
    failed = judge(worse, stable, SLO_100US, analysis({"kind": "rejectRate"}), "r2", NOW)
    assert (failed.verdict, failed.gate) == (Verdict.FAIL, "rejectRate")


def test_listed_reasons_are_the_only_ones_compared_one_by_one() -> None:
    stable = figures(decisions={"OK": 1000})
    canary = figures(decisions={"OK": 900, "THROTTLED": 50, "MAX_QUANTITY": 50})
    settings = {"kind": "rejectRate", "reasons": ["MAX_QUANTITY"], "factor": 1, "slack": 0.06}
    # 10% overall breaks 0 x 1 + 6%, whatever reasons are listed: the overall rate is always compared.
    assert judge(canary, stable, SLO_100US, analysis(settings), "r", NOW).verdict == Verdict.FAIL
    settings["slack"] = 0.1
    assert judge(canary, stable, SLO_100US, analysis(settings), "r", NOW).verdict == Verdict.PASS
    settings["slack"], settings["reasons"] = 0.04, ["CREDIT_LIMIT"]
    result = judge(canary, stable, SLO_100US, analysis(settings), "r", NOW)
    assert (result.verdict, result.value) == (Verdict.FAIL, 0.1)  # overall, the only one broken


def test_too_few_decisions_on_either_revision_is_inconclusive() -> None:
    plenty = figures(decisions={"OK": 1000})
    few = figures(decisions={"OK": 60, "MAX_QUANTITY": 39})
    for canary, stable, who in ((few, plenty, "canary"), (plenty, few, "stable")):
        result = judge(canary, stable, SLO_100US, analysis({"kind": "rejectRate"}), "r", NOW)
        assert (result.verdict, result.gate, result.value, result.threshold) == (
            Verdict.INCONCLUSIVE,
            "rejectRate",
            99,
            100,
        )
        assert result.message.startswith(f"{who} has 99 decisions")


def test_a_fill_ratio_under_the_stable_fails_and_one_near_it_passes() -> None:
    stable = figures(orders={"": 1000}, fills={"": 600})
    settings = {"kind": "fillRatio"}  # at least 0.6 x 0.8 - 0.01 = 0.47
    passing = judge(
        figures(orders={"": 500}, fills={"": 240}), stable, SLO_100US, analysis(settings), "r", NOW
    )
    assert passing.verdict == Verdict.PASS
    result = judge(
        figures(orders={"": 500}, fills={"": 230}), stable, SLO_100US, analysis(settings), "r", NOW
    )
    assert (result.verdict, result.gate, result.baselineValue) == (Verdict.FAIL, "fillRatio", 0.6)
    assert (result.value, result.threshold) == pytest.approx((0.46, 0.47))
    assert gate(result, "fillRatio").samples == 500


@pytest.mark.parametrize(
    ("settings", "canary_pnl", "verdict"),
    [
        ({"direction": "min", "threshold": -1000}, -999.0, Verdict.PASS),
        ({"direction": "min", "threshold": -1000}, -1001.0, Verdict.FAIL),
        ({"direction": "max", "threshold": 5}, 5.0, Verdict.PASS),
        ({"direction": "max", "threshold": 5}, 5.5, Verdict.FAIL),
        # relative: stable 100, min: at least 100 x 0.9 - 5 = 85
        ({"direction": "min", "factor": 0.9, "slack": 5}, 85.0, Verdict.PASS),
        ({"direction": "min", "factor": 0.9, "slack": 5}, 84.0, Verdict.FAIL),
        # relative: max: at most 100 x 1.2 + 5 = 125
        ({"direction": "max", "factor": 1.2, "slack": 5}, 125.0, Verdict.PASS),
        ({"direction": "max", "factor": 1.2, "slack": 5}, 126.0, Verdict.FAIL),
    ],
)
def test_a_metric_gate_holds_a_desks_series_to_its_bound(
    settings: dict[str, Any], canary_pnl: float, verdict: Verdict
) -> None:
    spec = {"kind": "metric", "name": "desk-pnl", "metric": "desk_pnl", "type": "gauge", **settings}
    canary = figures(pnl={"": canary_pnl})
    result = judge(canary, figures(pnl={"": 100.0}), SLO_100US, analysis(spec), "r", NOW)
    reported = gate(result, "desk-pnl")
    assert reported.verdict == verdict and reported.value == canary_pnl
    assert (result.gate == "desk-pnl") == (verdict == Verdict.FAIL)
    assert reported.baseline == (100.0 if "factor" in settings else None)


def test_a_metric_gate_without_data_is_inconclusive() -> None:
    spec = {"kind": "metric", "name": "desk-pnl", "metric": "desk_pnl", "type": "gauge", "threshold": 0}
    result = judge(figures(pnl={}), None, SLO_100US, analysis(spec), "r", NOW)
    assert (result.verdict, result.gate, result.message) == (
        Verdict.INCONCLUSIVE,
        "desk-pnl",
        "no data for desk_pnl of the canary",
    )


def test_a_relative_gate_without_a_measured_stable_is_inconclusive() -> None:
    canary = figures(decisions={"OK": 1000})
    result = judge(
        canary, ProviderUnavailable("p down"), SLO_100US, analysis({"kind": "rejectRate"}), "r", NOW
    )
    assert (result.verdict, result.gate, result.message) == (
        Verdict.INCONCLUSIVE,
        "rejectRate",
        "stable baseline unavailable: p down",
    )


def test_every_gate_is_reported_and_the_first_that_did_not_pass_decides() -> None:
    stable = figures(decisions={"OK": 1000}, orders={"": 1000}, fills={"": 500})
    canary = figures(400, decisions={"OK": 500, "MAX_QUANTITY": 500}, orders={"": 1000}, fills={"": 100})
    gates = analysis({"kind": "rejectRate"}, {"kind": "fillRatio"})
    result = judge(canary, stable, SLO_100US, gates, "r", NOW)
    assert (result.verdict, result.gate) == (Verdict.FAIL, "p99")
    assert [(each.gate, each.verdict) for each in result.gates] == [
        ("samples", Verdict.PASS),
        ("p99", Verdict.FAIL),
        ("errorRate", Verdict.PASS),
        ("rejectRate", Verdict.FAIL),
        ("fillRatio", Verdict.FAIL),
    ]
    healthy = judge(
        figures(decisions={"OK": 1000}, orders={"": 1000}, fills={"": 500}),
        stable,
        SLO_100US,
        gates,
        "r",
        NOW,
    )
    assert (healthy.verdict, healthy.gate, healthy.value) == (Verdict.PASS, "p99", 50.0)
    assert all(each.verdict == Verdict.PASS for each in healthy.gates)
