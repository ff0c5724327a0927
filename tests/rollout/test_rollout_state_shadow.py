"""State shadows of a log projection: comparing the canary pods' state digests with the stable pods' at the
same log sequences, the judge's gates when the canary serves no client, the router, and the state machine
holding a passed state shadow until promotion."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError
from rollout.world import World, make_spec

from tradeplane.analysis import measure
from tradeplane.api import SLO, Analysis, Gate, Phase, TradingServiceSpec, TradingServiceStatus, Verdict
from tradeplane.judge import judge
from tradeplane.measurement import Decisions, Measurement, ProviderUnavailable, Series
from tradeplane.providers import Providers
from tradeplane.state_comparison import SPAN, WHAT, BadDigests, compare_states, parse_history
from tradeplane.traffic import Serving, router_for
from tradeplane.traffic.state_shadow import StateShadowRouter
from tradeplane_services.catalog import DIGESTS_ROUTE
from tradeplane_services.position import PositionBook
from tradeplane_services.protocol import Fill, Side, price_units, symbol_bytes

NOW = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)
ANALYSIS = Analysis(minSamples=4, window="10s")
A, B, C = "00000000000000aa", "00000000000000bb", "00000000000000cc"
LOG = {"servers": ["nats://nats.trading.svc:4222"]}
NO_TRAFFIC = Measurement(p99_seconds=None, samples=0, requests=0, errors=0)


def test_each_canary_pod_is_compared_at_every_sequence_the_stable_holds_too() -> None:
    stable = {"s1:9100": {10: A, 11: B, 12: C}, "s2:9100": {11: B, 12: C, 13: A}}
    canary = {"c1:9100": {9: A, 11: B, 12: C, 13: A, 14: B}, "c2:9100": {12: C}}
    assert compare_states(canary, stable) == Decisions(4, 0, 0, what=WHAT, span=SPAN)


def test_a_canary_digest_other_than_the_stable_s_is_a_mismatch_named_by_its_first_sequence() -> None:
    stable = {"s1:9100": {11: A, 12: B, 13: C}}
    canary = {"c1:9100": {11: A, 12: C, 13: A}, "c2:9100": {13: B}}
    decisions = compare_states(canary, stable)
    assert (decisions.match, decisions.mismatch, decisions.unanswered) == (1, 3, 0)
    assert decisions.detail == f"first at log sequence 12: c1:9100 holds {C}, the stable {B}"


def test_stable_pods_that_disagree_make_the_sequence_a_mismatch_whatever_the_canary_holds() -> None:
    stable = {"s1:9100": {5: A}, "s2:9100": {5: B}}
    decisions = compare_states({"c1:9100": {5: A}}, stable)
    assert (decisions.match, decisions.mismatch) == (0, 1)
    assert decisions.detail.endswith(f"the stable {A}, {B}")


def test_no_common_sequence_compares_nothing_and_the_gate_is_inconclusive() -> None:
    decisions = compare_states({"c1:9100": {20: A, 21: A}}, {"s1:9100": {18: A, 19: A}})
    assert decisions == Decisions(0, 0, 0, what=WHAT, span=SPAN)
    result = judge(NO_TRAFFIC, None, SLO(), ANALYSIS, "v2", NOW, decisions, state_shadow=True)
    assert (result.verdict, result.gate) == (Verdict.INCONCLUSIVE, "decisionMismatch")
    assert f"0 {WHAT} of revision v2 compared at the log sequences both hold, fewer" in result.message


def test_a_digest_document_is_read_with_errors_naming_the_pod_and_the_entry() -> None:
    assert parse_history("p:9100", {"sequence": 2, "history": [[1, A], [2, B]]}) == {1: A, 2: B}
    with pytest.raises(BadDigests, match=r"p:9100: history\[1\] is \[2, 'xyz'\], expected"):
        parse_history("p:9100", {"history": [[1, A], [2, "xyz"]]})
    with pytest.raises(BadDigests, match="p:9100: expected an object with a history list"):
        parse_history("p:9100", ["not", "a", "document"])


def test_a_state_shadow_is_judged_without_latency_gates_and_held_to_exact_agreement() -> None:
    agreed = judge(
        NO_TRAFFIC, None, SLO(), ANALYSIS, "v2", NOW, Decisions(40, 0, 0, what=WHAT), state_shadow=True
    )
    assert (agreed.verdict, agreed.gate, agreed.samples) == (Verdict.PASS, "decisionMismatch", 40)
    assert [gate.gate for gate in agreed.gates] == ["decisionMismatch"], "no p99, error-rate or samples gate"
    assert agreed.message == "all gates passed on 40 samples"
    one_off = judge(
        NO_TRAFFIC, None, SLO(), ANALYSIS, "v2", NOW, Decisions(39, 1, 0, what=WHAT), state_shadow=True
    )
    assert (one_off.verdict, one_off.gate, one_off.threshold) == (Verdict.FAIL, "decisionMismatch", 0.0)
    tolerant = SLO(maxDecisionMismatch=0.05)
    assert judge(
        NO_TRAFFIC, None, tolerant, ANALYSIS, "v2", NOW, Decisions(39, 1, 0), state_shadow=True
    ).verdict == (Verdict.PASS)
    unreachable = ProviderUnavailable("c1:9100/digests: refused")
    assert judge(NO_TRAFFIC, None, SLO(), ANALYSIS, "v2", NOW, unreachable, state_shadow=True).verdict == (
        Verdict.INCONCLUSIVE
    )


def test_a_state_shadow_s_trading_gates_are_judged_and_inconclusive_without_data() -> None:
    series = Series(metric="tradeplane_fills_applied_total")
    gated = Analysis(
        minSamples=4, gates=[Gate(kind="metric", name="applied", metric=series.metric, threshold=1e9)]
    )
    no_data = judge(NO_TRAFFIC, None, SLO(), gated, "v2", NOW, Decisions(40, 0, 0), state_shadow=True)
    assert (no_data.verdict, no_data.gate) == (Verdict.INCONCLUSIVE, "applied")
    counted = Measurement(None, 0, 0, 0, series={series: {"": 120.0}})
    passed = judge(counted, None, SLO(), gated, "v2", NOW, Decisions(40, 0, 0), state_shadow=True)
    assert [(gate.gate, gate.verdict) for gate in passed.gates] == [
        ("applied", Verdict.PASS),
        ("decisionMismatch", Verdict.PASS),
    ]


def state_shadow_spec(**slo: float) -> TradingServiceSpec:
    rollout = {
        "stateShadow": {},
        "steps": [{"weight": 50, "pause": "10s"}, {"weight": 100, "pause": "10s"}],
        "analysis": {"interval": "2s", "window": "10s", "minSamples": 20},
    }
    return make_spec(
        component="position", rollout=rollout, slo={"p99LatencyMicros": 100, **slo}, eventLog=LOG
    )


def test_the_router_gives_the_canary_a_service_of_its_own_and_no_traffic() -> None:
    spec = state_shadow_spec()
    router = router_for(spec)
    assert isinstance(router, StateShadowRouter)
    assert (router.per_revision_services, router.sets_weight) == (True, False)
    assert router.canary_replicas(4, 5000) == 2
    assert router.served_weight(Serving(stable_ready=4, canary_ready=2)) == 0
    assert router.reached(Serving(4, 2), 2, 5000) and not router.reached(Serving(4, 1), 2, 5000)


def test_the_api_takes_a_state_shadow_for_a_log_projection_on_a_log_only_and_alone() -> None:
    assert state_shadow_spec(maxDecisionMismatch=0.01).rollout.shadow
    with pytest.raises(ValidationError, match="component must be one of position"):
        make_spec(component="risk", rollout={"stateShadow": {}}, eventLog=LOG)
    with pytest.raises(ValidationError, match="it goes with neither orderFlow nor httpRoute"):
        make_spec(
            component="position", rollout={"stateShadow": {}, "httpRoute": {"name": "position"}}, eventLog=LOG
        )
    with pytest.raises(ValidationError, match="stateShadow needs eventLog"):
        make_spec(component="position", rollout={"stateShadow": {}})


def test_a_passed_state_shadow_holds_with_no_weight_until_promotion_is_requested() -> None:
    world = World(state_shadow_spec())
    world.tick()
    world.revision = "v2"
    world.run_until(lambda world: world.state.phase == Phase.PAUSED)
    state = world.state
    assert (state.step, state.shadow, state.actualWeight, world.plans[-1].traffic_weight) == (
        2,
        True,
        0,
        None,
    )
    assert state.message.endswith("the canary answered no client: request promotion")
    for _ in range(30):
        world.tick()
    assert world.state.phase == Phase.PAUSED and world.state.canaryRevision == "v2", "never promoted alone"
    assert world.reasons().count("ShadowPassed") == 1
    world.promote = world.request()
    world.run_until(lambda world: world.state.stableRevision == "v2")


@contextmanager
def digest_server(book: PositionBook) -> Iterator[str]:
    """A real HTTP server answering the book's digest document at DIGESTS_ROUTE, as a position pod does."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == DIGESTS_ROUTE
            body = json.dumps(book.digest_document()).encode() if found else b"not found"
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def projected(method: str, first: int, last: int) -> PositionBook:
    """A book that applied fills first..last of one log (both sides, moving prices), event by event."""
    book = PositionBook(method)
    for n in range(1, last + 1):
        side = Side.BUY if n % 3 else Side.SELL
        fill = Fill(7, n, 1 + n % 5, symbol_bytes("AAPL"), int(side), 10, price_units(180 + n % 17), n, 0)
        book.apply(fill)
        if n >= first:
            book.advance(n)
    return book


def analysed(canary: list[str], stable: list[str]) -> Verdict:
    status = TradingServiceStatus(canaryRevision="v2", stableRevision="v1")
    spec = state_shadow_spec()
    return asyncio.run(measure(Providers(), spec, status, "trading", "position", canary, stable, NOW)).verdict


def test_an_analysis_reads_the_pods_digests_and_judges_the_canary_by_its_state() -> None:
    stable_books = [projected("average-cost", 1, 60), projected("average-cost", 30, 60)]
    with digest_server(stable_books[0]) as one, digest_server(stable_books[1]) as two:
        with digest_server(projected("average-cost", 25, 60)) as agreeing:
            assert analysed([agreeing], [one, two]) == Verdict.PASS
        with digest_server(projected("fifo", 25, 60)) as differing:
            assert analysed([differing], [one, two]) == Verdict.FAIL
        with digest_server(projected("average-cost", 61, 61)) as ahead:
            assert analysed([ahead], [one, two]) == Verdict.INCONCLUSIVE, "no common sequence"
        with digest_server(projected("average-cost", 25, 60)) as agreeing:
            unreachable = "127.0.0.1:9"
            assert analysed([agreeing, unreachable], [one, two]) == Verdict.INCONCLUSIVE
