"""Analysis: the histogram quantile, both providers' plumbing, and the gates."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rollout.latency_server import BUCKETS, latency_server

from tradeplane.api import SLO, Analysis, Verdict
from tradeplane.judge import judge
from tradeplane.measurement import Measurement, ProviderUnavailable, Target
from tradeplane.providers.prometheus import DEFAULT_P99_QUERY, PrometheusProvider, render_query
from tradeplane.providers.scrape import Counts, ScrapeProvider, bucket_quantile, parse_counts

NOW = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)
INF = math.inf


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the quantile ------------------------------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = {10e-6: 50, 20e-6: 90, 50e-6: 99, 100e-6: 100, INF: 100}
    assert bucket_quantile(0.99, buckets) == pytest.approx(50e-6)
    assert bucket_quantile(0.95, buckets) == pytest.approx(20e-6 + 30e-6 * 5 / 9)
    assert bucket_quantile(0.25, buckets) == pytest.approx(5e-6)


def test_quantile_in_the_inf_bucket_answers_the_highest_finite_bound() -> None:
    assert bucket_quantile(0.99, {10e-6: 50, 20e-6: 60, INF: 100}) == pytest.approx(20e-6)


def test_quantile_of_an_empty_histogram_is_unknown() -> None:
    assert bucket_quantile(0.99, {10e-6: 0, INF: 0}) is None


def test_quantile_needs_an_inf_bucket() -> None:
    with pytest.raises(ValueError, match=r"\+Inf bucket"):
        bucket_quantile(0.99, {10e-6: 5, 20e-6: 6})


@given(st.lists(st.sampled_from([*BUCKETS, 0.05]), min_size=1, max_size=400))
def test_estimate_and_true_p99_share_a_bucket(latencies: list[float]) -> None:
    bounds = [*BUCKETS, INF]
    buckets = {bound: sum(1 for latency in latencies if latency <= bound) for bound in bounds}
    estimate = bucket_quantile(0.99, buckets)
    assert estimate is not None
    true_p99 = sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
    true_bucket = next(bound for bound in bounds if true_p99 <= bound)
    if math.isinf(true_bucket):
        assert estimate == BUCKETS[-1]
    else:
        lower = max([0.0, *(bound for bound in bounds if bound < true_bucket)])
        assert lower <= estimate <= true_bucket


# -- queries and parsing ---------------------------------------------------------------------------------


def test_query_template_fills_placeholders_and_leaves_promql_braces() -> None:
    target = Target(namespace="trading", service="order", revision="abc123")
    query = render_query(DEFAULT_P99_QUERY, target, "30s")
    assert query == (
        "histogram_quantile(0.99, sum by (le) (rate(tradeplane_request_duration_seconds_bucket"
        '{service="order",revision="abc123"}[30s])))'
    )
    custom = 'max(my_p99{ns="{namespace}",job=~".+"}[{window}]) # {other}'
    assert render_query(custom, target, "1m") == 'max(my_p99{ns="trading",job=~".+"}[1m]) # {other}'


def test_parse_counts_keeps_only_the_service_revision() -> None:
    page = "\n".join(
        [
            "# TYPE tradeplane_request_duration_seconds histogram",
            'tradeplane_request_duration_seconds_bucket{service="order",revision="a",le="1e-05"} 3',
            'tradeplane_request_duration_seconds_bucket{service="order",revision="a",le="+Inf"} 5',
            'tradeplane_request_duration_seconds_bucket{service="order",revision="b",le="+Inf"} 70',
            'tradeplane_request_duration_seconds_bucket{service="risk",revision="a",le="+Inf"} 80',
            "# TYPE tradeplane_requests counter",
            'tradeplane_requests_total{service="order",revision="a",outcome="ok"} 4',
            'tradeplane_requests_total{service="order",revision="a",outcome="error"} 1',
            'tradeplane_requests_total{service="order",revision="b",outcome="error"} 9',
        ]
    )
    counts = parse_counts(page, "order", "a")
    assert counts == Counts({1e-05: 3, INF: 5}, {"ok": 4, "error": 1})


def test_counts_after_a_restart_start_from_zero() -> None:
    before = Counts({1e-05: 100, INF: 120}, {"ok": 120})
    after_restart = Counts({1e-05: 7, INF: 8}, {"ok": 8})
    assert after_restart.minus(before) == after_restart
    later = Counts({1e-05: 130, INF: 160}, {"ok": 159, "error": 1})
    assert later.minus(before) == Counts({1e-05: 30, INF: 40}, {"ok": 39, "error": 1})


# -- the scrape provider, against real HTTP servers ---------------------------------------------------------


def test_scrape_provider_measures_bucket_deltas_over_the_window() -> None:
    clock = Clock()
    provider = ScrapeProvider(clock=clock)
    with latency_server("order", "rev1") as server:
        target = Target("trading", "order", "rev1", (server.endpoint,))
        server.observe(0.004, count=500)  # before the first scrape: not part of any window
        first = asyncio.run(provider.measure(target, "30s"))
        assert first.samples == 0 and first.p99_seconds is None

        clock.now = 10
        server.observe(30e-6, count=290)
        server.observe(30e-6, count=10, outcome="error")
        fast = asyncio.run(provider.measure(target, "30s"))
        assert (fast.samples, fast.requests, fast.errors) == (300, 300, 10)
        assert fast.p99_seconds is not None and 20e-6 < fast.p99_seconds <= 50e-6

        clock.now = 45  # the window [15, 45] starts after the scrape at 10: it is the baseline
        server.observe(3e-3, count=300)
        slow = asyncio.run(provider.measure(target, "30s"))
        assert slow.samples == 300 and slow.errors == 0
        assert slow.p99_seconds is not None and 2e-3 < slow.p99_seconds <= 5e-3


@pytest.mark.parametrize(
    ("started_seconds_ago", "samples"),
    [
        pytest.param(5, 250, id="started-inside-the-window-counts-from-zero"),
        pytest.param(3600, 0, id="older-than-the-window-counts-from-a-baseline-scrape"),
    ],
)
def test_a_first_scrape_counts_a_process_by_its_start_time(started_seconds_ago: int, samples: int) -> None:
    with latency_server("order", "rev1", started=time.time() - started_seconds_ago) as server:
        server.observe(30e-6, count=250)
        measured = asyncio.run(
            ScrapeProvider().measure(Target("t", "order", "rev1", (server.endpoint,)), "30s")
        )
    assert measured.samples == samples


def test_a_new_leaders_first_measurement_counts_from_its_own_baseline_scrape() -> None:
    """After a failover the history died with the old leader: the first analysis still has figures,
    those of the short span after a baseline scrape, never the counts from before it."""
    with latency_server("order", "rev1") as server:
        server.observe(3e-3, count=1000)  # slow, before the new leader's baseline: not in its figures
        stop = threading.Event()

        def steady_traffic() -> None:
            while not stop.is_set():
                server.observe(30e-6, count=10)
                time.sleep(0.005)

        sender = threading.Thread(target=steady_traffic)
        sender.start()
        try:
            target = Target("trading", "order", "rev1", (server.endpoint,))
            measured = asyncio.run(ScrapeProvider(baseline_seconds=0.5).measure(target, "30s"))
        finally:
            stop.set()
            sender.join()
    # Had the 1000 slow observations from before the baseline counted, the p99 would be theirs (3 ms);
    # how many fast ones the short span holds depends on the machine.
    assert measured.samples > 0
    assert measured.p99_seconds is not None and measured.p99_seconds <= 50e-6


def test_scrape_provider_sums_the_revision_pods() -> None:
    clock = Clock()
    provider = ScrapeProvider(clock=clock)
    with latency_server("order", "rev1") as one, latency_server("order", "rev1") as two:
        target = Target("trading", "order", "rev1", (one.endpoint, two.endpoint))
        asyncio.run(provider.measure(target, "30s"))
        one.observe(30e-6, count=200)
        two.observe(3e-3, count=5)
        clock.now = 5
        measured = asyncio.run(provider.measure(target, "30s"))
    assert measured.samples == 205
    # 5 of 205 slow is 2.4 %: the p99 is among them.
    assert measured.p99_seconds is not None and measured.p99_seconds > 2e-3


def test_scrape_provider_reports_an_unreachable_pod() -> None:
    endpoint = f"127.0.0.1:{closed_port()}"
    target = Target("trading", "order", "rev1", (endpoint,))
    with pytest.raises(ProviderUnavailable, match=endpoint):
        asyncio.run(ScrapeProvider().measure(target, "30s"))


def test_scrape_provider_needs_pods() -> None:
    with pytest.raises(ProviderUnavailable, match="no ready pods"):
        asyncio.run(ScrapeProvider().measure(Target("trading", "order", "rev1"), "30s"))


class _NotMetrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>not metrics</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def html_endpoint() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _NotMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_scrape_provider_names_a_page_that_is_not_metrics(html_endpoint: str) -> None:
    target = Target("trading", "order", "rev1", (html_endpoint,))
    with pytest.raises(ProviderUnavailable, match=f"{html_endpoint}/metrics is not Prometheus text"):
        asyncio.run(ScrapeProvider().measure(target, "30s"))


def test_prometheus_provider_reports_an_unreachable_server() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ProviderUnavailable, match="prometheus at"):
        asyncio.run(PrometheusProvider(url).measure(Target("trading", "order", "rev1"), "30s"))


def test_prometheus_provider_names_a_server_that_is_not_prometheus(html_endpoint: str) -> None:
    with pytest.raises(ProviderUnavailable, match="prometheus at"):
        asyncio.run(PrometheusProvider(f"http://{html_endpoint}").measure(Target("t", "order", "r"), "30s"))


# -- the gates ----------------------------------------------------------------------------------------------

SLO_100US = SLO(p99LatencyMicros=100, maxErrorRate=0.01)
ANALYSIS = Analysis(minSamples=200, window="30s")


def measured(p99_micros: float, samples: int = 1000, errors: int = 0) -> Measurement:
    return Measurement(p99_seconds=p99_micros / 1e6, samples=samples, requests=samples, errors=errors)


def test_unreachable_provider_is_inconclusive() -> None:
    result = judge(ProviderUnavailable("prometheus at x: refused"), None, SLO_100US, ANALYSIS, "r", NOW)
    assert (result.verdict, result.gate, result.message) == (
        Verdict.INCONCLUSIVE,
        "provider",
        "prometheus at x: refused",
    )


def test_too_few_samples_is_inconclusive_even_when_slow() -> None:
    result = judge(measured(5000, samples=199), None, SLO_100US, ANALYSIS, "r", NOW)
    assert (result.verdict, result.gate, result.value, result.threshold) == (
        Verdict.INCONCLUSIVE,
        "samples",
        199,
        200,
    )


def test_p99_over_the_slo_fails_with_value_threshold_window_and_samples() -> None:
    result = judge(measured(150, samples=5120), None, SLO_100US, ANALYSIS, "rev9", NOW)
    assert result.verdict == Verdict.FAIL
    assert (result.gate, result.value, result.threshold, result.samples, result.window, result.revision) == (
        "p99",
        150,
        100,
        5120,
        "30s",
        "rev9",
    )
    assert "p99 150.0us over 30s exceeds the SLO 100us (5120 samples)" in result.message


def test_error_rate_over_the_limit_fails() -> None:
    result = judge(measured(50, samples=1000, errors=20), None, SLO_100US, ANALYSIS, "r", NOW)
    assert (result.verdict, result.gate, result.value, result.threshold) == (
        Verdict.FAIL,
        "errorRate",
        0.02,
        0.01,
    )


def test_missing_request_counter_is_inconclusive() -> None:
    figures = Measurement(p99_seconds=50e-6, samples=1000, requests=0, errors=0)
    result = judge(figures, None, SLO_100US, ANALYSIS, "r", NOW)
    assert (result.verdict, result.gate) == (Verdict.INCONCLUSIVE, "errorRate")


def test_baseline_regression_fails_against_stable_times_factor() -> None:
    analysis = Analysis(minSamples=200, maxRegressionVsBaseline=1.25)
    result = judge(measured(80), measured(60), SLO_100US, analysis, "r", NOW)
    assert (result.verdict, result.gate, result.value, result.threshold, result.baselineP99Micros) == (
        Verdict.FAIL,
        "baseline",
        80,
        75,
        60,
    )
    passing = judge(measured(70), measured(60), SLO_100US, analysis, "r", NOW)
    assert (passing.verdict, passing.baselineP99Micros) == (Verdict.PASS, 60)


def test_baseline_without_data_is_inconclusive() -> None:
    analysis = Analysis(minSamples=200, maxRegressionVsBaseline=1.25)
    for baseline in (None, ProviderUnavailable("stable unreachable"), measured(60, samples=10)):
        result = judge(measured(70), baseline, SLO_100US, analysis, "r", NOW)
        assert (result.verdict, result.gate) == (Verdict.INCONCLUSIVE, "baseline")


def test_pass_reports_p99_against_the_slo() -> None:
    result = judge(measured(84, samples=5120), None, SLO_100US, ANALYSIS, "r", NOW)
    assert (result.verdict, result.p99Micros, result.threshold, result.samples, result.time) == (
        Verdict.PASS,
        84,
        100,
        5120,
        "2025-06-03T12:00:00Z",
    )


@given(
    p99=st.floats(min_value=0, max_value=1e5),
    samples=st.integers(min_value=0, max_value=10_000),
    errors=st.integers(min_value=0, max_value=10_000),
    baseline_p99=st.none() | st.floats(min_value=0, max_value=1e5),
    baseline_samples=st.integers(min_value=0, max_value=10_000),
    factor=st.none() | st.floats(min_value=1, max_value=3),
)
def test_a_pass_holds_every_gate(
    p99: float,
    samples: int,
    errors: int,
    baseline_p99: float | None,
    baseline_samples: int,
    factor: float | None,
) -> None:
    errors = min(errors, samples)
    canary = Measurement(p99 / 1e6 if samples else None, samples, samples, errors)
    baseline = (
        None
        if baseline_p99 is None
        else Measurement(baseline_p99 / 1e6, baseline_samples, baseline_samples, 0)
    )
    analysis = Analysis(minSamples=200, maxRegressionVsBaseline=factor)
    result = judge(canary, baseline, SLO_100US, analysis, "r", NOW)
    if result.verdict != Verdict.PASS:
        return
    assert samples >= 200
    assert canary.p99_micros is not None and canary.p99_micros <= 100
    assert errors / samples <= 0.01
    if factor is not None:
        assert baseline is not None and baseline.samples >= 200 and baseline.p99_micros is not None
        assert canary.p99_micros <= round(baseline.p99_micros * factor, 1)
