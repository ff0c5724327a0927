"""The Gateway API split: with spec.rollout.httpRoute the operator moves the route's backend weights.

On the local control plane with the HTTPRoute CRD installed (no gateway implementation runs here, so the
traffic still reaches every pod; what is checked is what the operator writes into the route and the
per-revision Services it points at).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.conftest import OperatorProcess
from e2e.scenario import NAME, SLOW_MICROS, Rollout, run_with_market_data, traffic

from support import Kubectl, get_json, wait_for
from tradeplane.api import BUNDLED_PORTS
from tradeplane.cluster.podrunner import PodRunner
from tradeplane.labels import REVISION_LABEL

pytestmark = pytest.mark.cluster

ROUTE = "orders"
CANARY = f"{NAME}-canary"


def weights(kubectl: Kubectl, namespace: str) -> dict[str, int]:
    route = get_json(kubectl, "httproute", ROUTE, "-n", namespace)
    rules: list[dict[str, Any]] = route["spec"]["rules"]  # type: ignore[index]
    return {ref["name"]: ref.get("weight", 1) for ref in rules[0]["backendRefs"]}


def selected_revision(kubectl: Kubectl, namespace: str, service: str) -> str | None:
    """The revision a Service selects; None when it selects every revision or does not exist."""
    if kubectl("get", "service", service, "-n", namespace, check=False).returncode != 0:
        return None
    found = get_json(kubectl, "service", service, "-n", namespace)
    selector: dict[str, str] = found["spec"]["selector"]  # type: ignore[index]
    return selector.get(REVISION_LABEL)


@pytest.fixture
def routed(
    kubectl: Kubectl,
    namespace: str,
    gateway_api_crds: str,
    operator_process: OperatorProcess,
    pod_runner: Callable[..., PodRunner],
) -> Rollout:
    """Revision one behind the route `orders`, which sends everything to the risk Service."""
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "trading-gateway"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/risk"}}],
                    "backendRefs": [{"name": NAME, "port": BUNDLED_PORTS["risk"]}],
                }
            ],
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(route))
    rollout = Rollout(kubectl, namespace, {"httpRoute": {"name": ROUTE}})
    run_with_market_data(rollout, pod_runner, {"maxOrderQuantity": 50_000})
    return rollout


def test_route_weights_follow_the_steps_and_the_stable_service_follows_the_promotion(
    kube_env: Path, kubectl: Kubectl, namespace: str, routed: Rollout
) -> None:
    first = routed.status()["stableRevision"]
    assert selected_revision(kubectl, namespace, NAME) == first
    seen: list[dict[str, int]] = []

    def note_weights(status: dict[str, Any]) -> bool:
        current = weights(kubectl, namespace)
        if not seen or seen[-1] != current:
            seen.append(current)
        return status.get("phase") == "Ready" and status.get("stableRevision") != first

    with traffic(kube_env, namespace):
        routed.apply({"maxOrderQuantity": 60_000})
        canary = routed.wait(lambda s: bool(s.get("canaryRevision")), 30, "a canary")["canaryRevision"]
        # The status is recorded before the objects are applied: the canary Service follows it.
        wait_for(
            lambda: selected_revision(kubectl, namespace, CANARY) == canary, 10, what="the canary Service"
        )
        done = routed.wait(note_weights, 90, "the canary promoted")
    assert {NAME: 75, CANARY: 25} in seen and {NAME: 50, CANARY: 50} in seen
    assert seen[-1] == {NAME: 100}
    assert done["stableRevision"] == canary
    # The stable Service now selects the promoted revision, whose pods were the canary's.
    assert selected_revision(kubectl, namespace, NAME) == canary
    wait_for(
        lambda: selected_revision(kubectl, namespace, CANARY) is None, 10, what="the canary Service gone"
    )
    steps = [s for s in routed.seen if s.get("canaryRevision") == canary and s.get("step") == 1]
    assert any(s.get("actualWeight") == 25 for s in steps), "the actual weight is read back from the route"


def test_a_rollback_takes_the_canary_out_of_the_route(
    kube_env: Path, kubectl: Kubectl, namespace: str, routed: Rollout
) -> None:
    with traffic(kube_env, namespace):
        routed.apply({"maxOrderQuantity": 50_000, "latencyInjectionMicros": SLOW_MICROS})
        routed.wait(
            # A canary pod is in the route once its process answers /readyz: a cold start on a loaded machine.
            lambda s: s.get("step") == 1 and s.get("actualWeight") == 25,
            90,
            "the canary in the route",
        )
        rolled_back = routed.wait(lambda s: s.get("phase") == "RolledBack", 60, "the canary rolled back")
    assert rolled_back["lastAnalysis"]["gate"] == "p99"
    assert weights(kubectl, namespace) == {NAME: 100}
    assert selected_revision(kubectl, namespace, NAME) == rolled_back["stableRevision"]
