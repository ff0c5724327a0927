"""The Prometheus provider against a real Prometheus scraping real metrics servers, and its agreement with
the direct-scrape provider on the same data."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from e2e.prometheus import run_prometheus, static_scrape_config
from rollout.latency_server import LatencyServer, latency_server

from support import wait_for
from tradeplane.measurement import DECISIONS_METRIC, Decisions, ProviderUnavailable, Series, Target
from tradeplane.providers.prometheus import PrometheusProvider
from tradeplane.providers.scrape import ScrapeProvider

pytestmark = pytest.mark.prometheus


def traffic(server: LatencyServer, fast: float, slow: float, slow_share: float, seconds: float) -> None:
    """Batches of observations over a few scrape intervals, a share of them slow."""
    batches = int(seconds / 0.1)
    for _ in range(batches):
        slow_count = round(100 * slow_share)
        server.observe(fast, count=100 - slow_count)
        server.observe(slow, count=slow_count)
        time.sleep(0.1)


def test_prometheus_and_direct_scrape_agree_on_p99(tmp_path: Path) -> None:
    with (
        latency_server("order", "stable1") as stable,
        latency_server("order", "canary2") as canary,
        run_prometheus(
            tmp_path, [static_scrape_config("order", [stable.endpoint, canary.endpoint])]
        ) as prometheus,
    ):
        started = time.time()
        wait_for(lambda: prometheus.scraped_since(started) == 2, timeout=15, what="first scrapes")
        direct = ScrapeProvider()
        canary_target = Target("trading", "order", "canary2", (canary.endpoint,))
        asyncio.run(direct.measure(canary_target, "1m"))  # the window's start

        traffic(canary, fast=30e-6, slow=3e-3, slow_share=0.02, seconds=3)
        traffic(stable, fast=30e-6, slow=3e-3, slow_share=0.0, seconds=1)
        stopped = time.time()
        wait_for(lambda: prometheus.scraped_since(stopped) == 2, timeout=15, what="scrapes after the traffic")

        from_prometheus = asyncio.run(PrometheusProvider(prometheus.url).measure(canary_target, "1m"))
        from_pods = asyncio.run(direct.measure(canary_target, "1m"))
        baseline = asyncio.run(
            PrometheusProvider(prometheus.url).measure(Target("trading", "order", "stable1"), "1m")
        )

    assert from_pods.samples == 3000 and from_pods.errors == 0
    assert from_pods.p99_seconds is not None and 2e-3 < from_pods.p99_seconds <= 5e-3
    assert from_prometheus.p99_seconds == pytest.approx(from_pods.p99_seconds, rel=0.01)
    # increase() extrapolates a little past the last scrape: counts agree to within a scrape interval.
    assert from_pods.samples <= from_prometheus.samples <= from_pods.samples * 1.5
    assert baseline.p99_seconds is not None and 20e-6 < baseline.p99_seconds <= 50e-6


def test_prometheus_and_direct_scrape_agree_on_the_series_the_trading_gates_read(tmp_path: Path) -> None:
    by_reason = Series(DECISIONS_METRIC, by="reason")
    pnl = Series("desk_pnl", counter=False)
    query = Series(query='sum(desk_pnl{service="{service}",revision="{revision}"}) * 2')
    with (
        latency_server("risk", "canary2") as canary,
        run_prometheus(tmp_path, [static_scrape_config("risk", [canary.endpoint])]) as prometheus,
    ):
        started = time.time()
        wait_for(lambda: prometheus.scraped_since(started) == 1, timeout=15, what="first scrapes")
        target = Target("trading", "risk", "canary2", (canary.endpoint,))
        direct = ScrapeProvider()
        asyncio.run(direct.series(target, "1m", by_reason))  # the window's start
        canary.decisions.labels("risk", "canary2", "OK").inc(300)
        canary.decisions.labels("risk", "canary2", "MAX_QUANTITY").inc(100)
        canary.pnl.labels("risk", "canary2").set(-1250.5)
        stopped = time.time()
        wait_for(lambda: prometheus.scraped_since(stopped) == 1, timeout=15, what="scrapes after the counts")
        through_prometheus = PrometheusProvider(prometheus.url)
        from_prometheus = {
            series: asyncio.run(through_prometheus.series(target, "1m", series))
            for series in (by_reason, pnl, query)
        }
        from_pods = {series: asyncio.run(direct.series(target, "1m", series)) for series in (by_reason, pnl)}
    assert from_pods == {by_reason: {"OK": 300.0, "MAX_QUANTITY": 100.0}, pnl: {"": -1250.5}}
    # increase() extrapolates a little past the last scrape: counts agree to within a scrape interval.
    assert from_prometheus[by_reason].keys() == {"OK", "MAX_QUANTITY"}
    assert 300 <= from_prometheus[by_reason]["OK"] <= 450
    assert 100 <= from_prometheus[by_reason]["MAX_QUANTITY"] <= 150
    assert from_prometheus[pnl] == {"": -1250.5} and from_prometheus[query] == {"": -2501.0}
    with pytest.raises(ProviderUnavailable, match="PromQL needs prometheus"):
        asyncio.run(direct.series(target, "1m", query))


def test_prometheus_and_direct_scrape_agree_on_a_callers_shadow_decisions(tmp_path: Path) -> None:
    """Two order pods compare risk canary v2's decisions; the gate reads both, over the window."""
    with (
        latency_server("order", "o1") as first,
        latency_server("order", "o1") as second,
        run_prometheus(
            tmp_path, [static_scrape_config("order", [first.endpoint, second.endpoint])]
        ) as prometheus,
    ):
        for caller in (first, second):
            for outcome in ("match", "mismatch", "unanswered"):
                caller.compare("risk", "v2", outcome, 0)
        started = time.time()
        wait_for(lambda: prometheus.scraped_since(started) == 2, timeout=15, what="first scrapes")
        direct = ScrapeProvider()
        callers = Target("trading", "risk", "v2", (first.endpoint, second.endpoint))
        asyncio.run(direct.decisions(callers, "1m"))  # the window's start

        first.compare("risk", "v2", "match", 900)
        first.compare("risk", "v2", "mismatch", 60)
        second.compare("risk", "v2", "unanswered", 40)
        second.compare("risk", "v3", "mismatch", 500)  # another canary's decisions
        stopped = time.time()
        wait_for(
            lambda: prometheus.scraped_since(stopped) == 2, timeout=15, what="scrapes after the decisions"
        )

        from_pods = asyncio.run(direct.decisions(callers, "1m"))
        from_prometheus = asyncio.run(PrometheusProvider(prometheus.url).decisions(callers, "1m"))

    assert from_pods == Decisions(900, 60, 40)
    # increase() extrapolates the few scrapes of a short burst towards the window's edges: counts are
    # larger by up to the extrapolation, by the same factor for series scraped together (one pod's).
    for field in ("match", "mismatch", "unanswered"):
        exact = getattr(from_pods, field)
        assert exact <= getattr(from_prometheus, field) <= exact * 2, from_prometheus
    assert from_prometheus.mismatch / from_prometheus.match == pytest.approx(60 / 900, rel=0.02)


def test_a_revision_without_series_has_no_samples(tmp_path: Path) -> None:
    with run_prometheus(tmp_path, []) as prometheus:
        measured = asyncio.run(
            PrometheusProvider(prometheus.url).measure(Target("t", "order", "nope"), "30s")
        )
    assert (measured.p99_seconds, measured.samples, measured.requests) == (None, 0, 0)


def test_a_query_prometheus_refuses_is_named(tmp_path: Path) -> None:
    with run_prometheus(tmp_path, []) as prometheus:
        provider = PrometheusProvider(prometheus.url, p99_query="histogram_quantile(0.99, rate(x[{window}]")
        with pytest.raises(ProviderUnavailable, match=r"refused 'histogram_quantile.*bad_data"):
            asyncio.run(provider.measure(Target("t", "order", "r"), "30s"))
