"""The durability proof matrix, `--runs` times (default 5), on the local control plane.

Each run brings up the stack of tests/e2e/durability.py in a fresh namespace (every service on JetStream
run as a StatefulSet of three clustered nats-server pods, streams at R3; two order replicas, two risk
replicas owning the account partitions, maxPosition 300; the operator and the pod runners as processes)
and runs the five faults in turn while two sessions, one per order replica, send crossing pairs at
`--pairs-per-second`: a trading node deleted (kwok; a risk pod and perhaps position move), a JetStream
pod's process killed -9 (the pod runner restarts it, as a kubelet would), the position pod deleted, a
risk pod deleted, a position canary started and aborted. After each fault the run checks that
every fill the clients were told of is in positions exactly once, as in the venue's log, and that no
account's net position ever passed maxPosition. A failed check fails that case and ends that run.

Prints each case: runs passed, fills (median per run), orders/s sent, and medians of the recovery time
(what it measures depends on the case, see RECOVERY), of the risk takeover (the heirs' claim-to-serving of
the partitions that changed owner), of the position replay (the new pod's own figure: snapshot load and the
events after it, and how many events) and the refusals seen. Never fails on timing.

    python bench/durability_matrix.py                       # 5 runs at 500 pairs/s (1k orders/s)
    python bench/durability_matrix.py --runs 1 --pairs-per-second 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from e2e.durability import CASES, CaseResult, proof_stack

from support import kubectl_runner
from tradeplane import crd
from tradeplane.cluster import local

RECOVERY = {
    "delete_state_node": "node deleted -> risk/position moved, ready, every partition served",
    "kill_jetstream_node": "kill -9 of nats-1's process -> restarted by the pod runner, every server healthy",
    "delete_position_pod": "pod deleted -> the new pod ready, the log replayed (the replay time)",
    "delete_risk_pod": "pod deleted -> every partition served by the other risk pod",
    "abort_position_canary": "spec patched -> canary ready -> aborted -> its pod gone",
}


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs-per-second", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=16.0, help="each case's stream, at least")
    args = parser.parse_args()
    kubeconfig = local.up(log=lambda message: print(message, file=sys.stderr))
    os.environ["KUBECONFIG"] = str(kubeconfig)
    kubectl = kubectl_runner(kubeconfig)
    definition = str(crd.REPO_ROOT / "crds" / "tradingservice.yaml")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", definition)
    local.wait_established(kubectl, "tradingservices.tradeplane.io")
    results: dict[str, list[CaseResult]] = defaultdict(list)
    failures: Counter[str] = Counter()
    for run in range(1, args.runs + 1):
        namespace = f"proof-{uuid.uuid4().hex[:6]}"
        kubectl("create", "namespace", namespace)
        try:
            with (
                tempfile.TemporaryDirectory(prefix="durability-") as workdir,
                proof_stack(kubectl, kubeconfig, namespace, Path(workdir)) as stack,
            ):
                for case in CASES:
                    started = time.monotonic()
                    try:
                        result: CaseResult = getattr(stack, case)(args.pairs_per_second, args.seconds)
                    except AssertionError as error:
                        # The stack may not come whole again: the run's remaining cases are not tried.
                        failures[case] += 1
                        print(f"run {run} {case}: FAILED {error}", flush=True)
                        break
                    results[case].append(result)
                    print(f"run {run} {case}: {result} ({time.monotonic() - started:.0f}s)", flush=True)
        finally:
            kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    print(f"\n{' '.join(sys.argv)}  ({args.runs} runs, target {2 * args.pairs_per_second:.0f} orders/s)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    header = (
        f"{'case':<24} {'passed':>7} {'fills':>7} {'orders/s':>9} {'recovery s':>11} {'takeover s':>11} "
        f"{'replay s':>9} {'replayed':>9}"
    )
    print(header + "  refusals (all runs)")
    for case in CASES:
        done = results[case]
        refused: Counter[str] = Counter()
        for result in done:
            refused.update(result.refused)
        takeovers = [r.takeover_seconds for r in done if r.takeover_seconds is not None]
        replays = [r.replay_seconds for r in done if r.replay_seconds is not None]
        replayed = [float(r.replay_events) for r in done if r.replay_events is not None]
        print(
            f"{case:<24} {len(done):>3}/{len(done) + failures[case]:<3} "
            f"{median([float(r.fills) for r in done]):>7} {median([r.orders_per_second for r in done]):>9} "
            f"{median([r.recovery_seconds for r in done]):>11} {median(takeovers):>11} "
            f"{median(replays):>9} {median(replayed):>9}  {dict(refused)}"
        )
    for case, what in RECOVERY.items():
        print(f"  recovery of {case}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
