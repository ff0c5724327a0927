"""`tradeplane demo`: the product at work on the local control plane, in one live screen.

The local control plane, the CRD, the operator and the five bundled services (real processes behind
kwok's simulated pods, see cluster/podrunner.py) come up; orders flow order -> risk -> execution ->
position. Then the story: a risk revision with injected latency is released, fails its p99 gate and is
rolled back by the operator on its own; a good revision walks its steps and is promoted, its pods handed
to the stable Deployment without a restart. `--once` runs the same story without a screen and exits 0
only when all of it happened.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from rich.console import Console
from rich.live import Live
from urllib3.exceptions import HTTPError

from tradeplane import crd
from tradeplane.api import BUNDLED_PORTS
from tradeplane.cluster import local
from tradeplane.cluster.podrunner import PodRunner
from tradeplane.demo.flow import OrderFlow
from tradeplane.demo.observe import Observer, Snapshot
from tradeplane.demo.screen import render
from tradeplane.demo.traffic import RiskTraffic
from tradeplane.sessions_cli import DEFAULT_SECRET, ensure_secret, secret_credentials
from tradeplane_services.catalog import CLIENT
from tradeplane_services.config import Address
from tradeplane_services.natsserver import CLIENT_PORT, NatsServers
from tradeplane_services.sessions import Credentials

NAMESPACE = "trading"
SAMPLES_DIR = crd.REPO_ROOT / "samples"
RISK = "risk"
# Loose on purpose: the control plane, the operator and eleven service processes share two cores here,
# where a healthy revision's in-process p99 reaches milliseconds under load and now and then a stall past
# 10 ms (seen in CI: 10.8 ms over one 5 s window). The gate sits on the 20 ms bucket bound, the bad revision
# well above it. The injected latency is spun, not slept, and blocks the service's one loop (its /metrics
# too), so the checks' rate is kept low enough that the slow canary stays busy only part of the time and
# can still be measured.
SLO_MICROS = 20_000
SLOW_MICROS = 50_000
RISK_CHECKS_PER_SECOND = 45.0
ROLLOUT = {
    "steps": [{"weight": 25, "pause": "3s"}, {"weight": 50, "pause": "3s"}],
    "analysis": {"provider": "scrape", "interval": "1s", "window": "5s", "minSamples": 50},
}
WARM_UP_SECONDS = 8.0
TICK_SECONDS = 1.0

T = TypeVar("T")


class StoryFailed(Exception):
    """A step of the story did not happen in time; the message says which and what was seen."""


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _start_operator(kubeconfig: Path) -> subprocess.Popen[bytes]:
    log_path = local.state_dir() / "logs" / "operator.log"
    _say(f"starting the operator (log: {log_path})")
    return subprocess.Popen(
        [sys.executable, "-m", "tradeplane.cli", "operator", "run", "--namespace", NAMESPACE],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def _fresh_namespace() -> None:
    """A namespace left by an earlier run holds failed revisions the story would not be allowed to retry."""
    if local.kubectl("get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name").stdout.strip():
        _say(f"removing namespace {NAMESPACE} left by an earlier run")
        local.kubectl("delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s")


def _trading_services() -> list[dict[str, Any]]:
    listed = json.loads(local.kubectl("get", "tradingservices", "-n", NAMESPACE, "-o", "json").stdout)
    items: list[dict[str, Any]] = listed["items"]
    return items


def _all_ready(expected: int) -> bool:
    items = _trading_services()
    return len(items) == expected and all(
        (item.get("status") or {}).get("readyReplicas", 0) >= item["spec"].get("replicas", 0)
        and (item.get("status") or {}).get("phase") == "Ready"
        for item in items
    )


def _patch_risk(spec: dict[str, Any]) -> int:
    """Merge-patch the risk TradingService's spec; return the generation the patch made."""
    patched = local.kubectl(
        "patch", "tradingservice", RISK, "-n", NAMESPACE, "--type", "merge",
        "-p", json.dumps({"spec": spec}), "-o", "json",
    )  # fmt: skip
    generation: int = json.loads(patched.stdout)["metadata"]["generation"]
    return generation


def _verdict(status: dict[str, Any]) -> str:
    analysis = status.get("lastAnalysis") or {}
    if analysis.get("value") is None:
        return f"{analysis.get('verdict')} ({analysis.get('message')})"
    return (
        f"{analysis['verdict']}: p99 {analysis['value']} µs against {analysis['threshold']} µs "
        f"on {analysis['samples']} samples"
    )


class Story:
    """The demo's script, stepped once per tick against the latest Snapshot; lines tell what happened."""

    def __init__(self, flow: OrderFlow, checks: RiskTraffic, tell: Callable[[str], None]) -> None:
        self.flow = flow
        self.checks = checks
        self.tell = tell
        self.lines: list[str] = []
        self.snapshot = Snapshot(services=[], pods=[], latency={}, positions=[])
        self.started = time.monotonic()
        self.finished = False
        self.failure: str | None = None
        self._script = self._run()

    def step(self, snapshot: Snapshot) -> None:
        if self.finished or self.failure:
            return
        self.snapshot = snapshot
        try:
            next(self._script)
        except StopIteration:
            self.finished = True
        except StoryFailed as error:
            self.failure = str(error)
            self.say(f"FAILED: {error}")

    def say(self, line: str) -> None:
        stamped = f"[{time.monotonic() - self.started:5.1f}s] {line}"
        self.lines.append(stamped)
        self.tell(stamped)

    @property
    def risk(self) -> dict[str, Any]:
        return self.snapshot.status(RISK)

    def _until(self, what: str, value: Callable[[], T | None], timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        while not value():
            if time.monotonic() > deadline:
                raise StoryFailed(f"{what}: not within {timeout:.0f}s; risk status {json.dumps(self.risk)}")
            yield

    def _hold(self, seconds: float) -> Iterator[None]:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            yield

    def _pods(self, revision: str | None) -> set[str]:
        return {pod.uid for pod in self.snapshot.pods_of(RISK, revision)}

    def _run(self) -> Iterator[None]:
        yield from self._until("orders flowing through the stack", lambda: self.flow.fills > 0, 60)
        self.say(
            f"orders flowing: {self.flow.acknowledged} acknowledged, {self.flow.fills} fills; "
            f"risk checks spread over risk's pods at {RISK_CHECKS_PER_SECOND:.0f}/s"
        )
        yield from self._hold(WARM_UP_SECONDS)
        generation = _patch_risk({"slo": {"p99LatencyMicros": SLO_MICROS}, "rollout": ROLLOUT})
        yield from self._until(
            "risk's rollout settings observed",
            lambda: self.risk.get("observedGeneration", 0) >= generation,
            30,
        )
        self.say(
            f"risk: canary steps 25% then 50%, gate p99 <= {SLO_MICROS} µs on >= 50 samples per 5s window "
            "(no new revision: SLO and rollout settings do not change a pod)"
        )
        stable = self.risk["stableRevision"]
        stable_pods = self._pods(stable)

        _patch_risk({"config": {"latencyInjectionMicros": SLOW_MICROS}})
        self.say(f"releasing a bad risk revision: {SLOW_MICROS} µs of injected latency per check")
        yield from self._until("the bad canary started", lambda: self.risk.get("canaryRevision"), 60)
        bad = self.risk["canaryRevision"]
        self.say(f"canary {bad} started beside stable {stable} (step {self.risk.get('step')})")
        yield from self._until(
            "the bad canary's verdict",
            lambda: self.risk.get("phase") in ("RollingBack", "RolledBack"),
            90,
        )
        verdict = self.risk.get("lastAnalysis") or {}
        if verdict.get("verdict") != "Fail" or verdict.get("gate") != "p99":
            raise StoryFailed(f"rolled back, but not by the p99 gate: {self.risk.get('message')}")
        self.say(
            f"gate p99 FAILED: p99 {verdict['value']} µs > {verdict['threshold']} µs "
            f"on {verdict['samples']} samples over {verdict['window']}"
        )
        yield from self._until(
            "the bad canary gone",
            lambda: self.risk.get("phase") == "RolledBack" and not self._pods(bad),
            60,
        )
        first_slow = self.checks.first_answer.get(bad)
        breach = f"{time.monotonic() - first_slow:.1f}s after its first slow answer" if first_slow else ""
        self.say(f"ROLLED BACK on its own: canary {bad} has no pods left, {breach}")
        if self._pods(stable) != stable_pods:
            raise StoryFailed(f"the stable revision {stable}'s pods changed during the rollback")
        self.say(f"stable {stable} kept its {len(stable_pods)} pods throughout (same pod UIDs)")

        _patch_risk({"config": {"latencyInjectionMicros": None, "maxOrderQuantity": 60_000}})
        self.say("releasing a good risk revision: maxOrderQuantity 50000 -> 60000")
        yield from self._until("the good canary started", lambda: self.risk.get("canaryRevision"), 60)
        good = self.risk["canaryRevision"]
        self.say(f"canary {good} started (step 1, {float(self.risk.get('weight') or 0):g}%)")
        yield from self._until("the good canary at its last step", lambda: self.risk.get("step") == 2, 90)
        self.say(f"step 2 ({float(self.risk.get('weight') or 0):g}%): last analysis {_verdict(self.risk)}")
        canary_pods = self._pods(good)
        yield from self._until(
            "the good canary promoted",
            lambda: self.risk.get("phase") == "Ready" and self.risk.get("stableRevision") == good,
            90,
        )
        yield from self._until("the old stable's pods gone", lambda: not self._pods(stable), 30)
        kept = canary_pods & self._pods(good)
        if kept != canary_pods:
            raise StoryFailed(f"the canary's pods were restarted on promotion: {canary_pods - kept}")
        self.say(
            f"PROMOTED: {good} is stable; its {len(kept)} canary pods became the stable ones "
            "(same pod UIDs: no restart)"
        )
        self.say(
            f"the desk's flow went on throughout: {self.flow.acknowledged} acknowledged, "
            f"{self.flow.fills} fills, {sum(self.flow.rejects.values())} rejects"
        )


def _order_address(observer: Observer) -> Callable[[], Address | None]:
    def locate() -> Address | None:
        pods = observer.running_pods("order")
        return Address(pods[0].ip, BUNDLED_PORTS["order"]) if pods else None

    return locate


def _event_log() -> NatsServers:
    """The event log the services keep fills in: one nats-server on loopback, as the pods' processes are
    (the port moves with TRADEPLANE_PORT_OFFSET, like the cluster's)."""
    offset = int(os.environ.get("TRADEPLANE_PORT_OFFSET", "0"))
    servers = NatsServers("127.0.0.1", local.state_dir() / "eventlog", port=CLIENT_PORT + 10_000 + offset)
    servers.start()
    servers.wait_ready()
    return servers


# Fills are logged and positions projected from the log. Order and risk run without it, one risk limit per
# replica: partitioned risk answers only after the log's fsync, and on two shared cores beside the rest of
# the stack that puts the canary story's checks past their SLO.
LOGGED = frozenset({"execution", "position"})


def _bring_up(args: argparse.Namespace, api: client.CoreV1Api, runner: PodRunner, event_log: str) -> int:
    samples = sorted(SAMPLES_DIR.glob("*.yaml"))
    _say(f"applying {len(samples)} sample manifests from {SAMPLES_DIR}, event log {event_log}")
    for sample in samples:
        manifest = yaml.safe_load(sample.read_text())
        if (manifest.get("spec") or {}).get("component") in LOGGED:
            manifest["spec"]["eventLog"] = {"servers": [event_log], "replicas": 1}
        local.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    added = ensure_secret(api, NAMESPACE)
    _say(f"session keys: secret {NAMESPACE}/{DEFAULT_SECRET} ({len(added)} new)")
    expected = len(_trading_services())
    runner.start()
    deadline = time.monotonic() + args.timeout
    while not _all_ready(expected):
        if time.monotonic() > deadline:
            _say(f"not every TradingService was Ready within {args.timeout:.0f}s")
            return 1
        time.sleep(1)
    runner.wait_running(sum(item["spec"]["replicas"] for item in _trading_services()), timeout=30)
    _say("every TradingService is Ready and every pod's process runs")
    return 0


def _observe(observer: Observer) -> Snapshot | None:
    """A snapshot, or None when the API server did not answer this tick (the next tick asks again)."""
    try:
        return observer.snapshot()
    except (ApiException, HTTPError, OSError) as error:
        _say(f"reading the cluster failed this tick: {error}")
        return None


def _play(
    args: argparse.Namespace,
    kubeconfig: Path,
    operator: subprocess.Popen[bytes],
    runner: PodRunner,
    creds: Credentials,
) -> int:
    observer = Observer(kubeconfig, NAMESPACE, creds)
    # A log (--once) has no terminal width; wide enough that no table column is folded.
    console = Console() if not args.once else Console(width=180)
    flow = OrderFlow(_order_address(observer), creds)
    checks = RiskTraffic(kubeconfig, NAMESPACE, RISK, BUNDLED_PORTS["risk"], rate=RISK_CHECKS_PER_SECOND)
    title = "tradeplane demo: the bundled stack on the local control plane (Ctrl-C stops it)"
    with flow, checks:
        if args.once:
            story = Story(flow, checks, tell=lambda line: print(line, flush=True))
            while not (story.finished or story.failure):
                if operator.poll() is not None:
                    raise StoryFailed(f"the operator exited with {operator.returncode}; see its log")
                if snapshot := _observe(observer):
                    story.step(snapshot)
                time.sleep(TICK_SECONDS)
            console.print(render(observer.snapshot(), flow, story.lines, title))
            for pod, exit in runner.exits.items():
                print(f"pod process restarted: {pod} {exit}")
            return 0 if story.finished else 1
        story = Story(flow, checks, tell=lambda line: None)
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                if snapshot := _observe(observer):
                    story.step(snapshot)
                    live.update(render(snapshot, flow, story.lines, title), refresh=True)
                time.sleep(TICK_SECONDS)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` or a closed terminal stops what the demo started, as Ctrl-C does


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    _say("starting the local control plane")
    kubeconfig = local.up(log=_say)
    os.environ["KUBECONFIG"] = str(kubeconfig)
    _say("installing the TradingService CRD")
    local.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(crd.crd()))
    local.wait_established(local.kubectl, "tradingservices.tradeplane.io")
    # Before the operator starts: its watch of a namespace being deleted would miss the new one.
    _fresh_namespace()
    _say("starting the event log (nats-server, JetStream, sync_interval: always)")
    event_log = _event_log()
    operator = _start_operator(kubeconfig)
    runner = PodRunner(NAMESPACE, kubeconfig=str(kubeconfig))
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))  # type: ignore[no-untyped-call]
    keys = tempfile.TemporaryDirectory(prefix="tradeplane-demo-keys-")
    try:
        if _bring_up(args, api, runner, event_log.url):
            return 1
        # The desk's flow and the position reads log on as a trading client would.
        creds = secret_credentials(api, NAMESPACE, CLIENT, Path(keys.name))
        return _play(args, kubeconfig, operator, runner, creds)
    except StoryFailed as error:
        _say(str(error))
        return 1
    except KeyboardInterrupt:
        _say("stopping the operator and the service processes; the cluster stays up")
        return 0
    finally:
        runner.stop()
        operator.terminate()
        operator.wait(timeout=15)
        event_log.stop()
        keys.cleanup()


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the stack on the local control plane: orders, a bad release rolled back, a good one promoted",
    )
    demo.add_argument(
        "--once",
        action="store_true",
        help="run the story without the live screen; exit 0 only when all of it happened",
    )
    demo.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for every service to be Ready"
    )
    demo.set_defaults(handler=run)
