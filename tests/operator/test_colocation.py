"""Co-location (`spec.coLocate`): peers as containers of the caller's pod, reached over shared-memory rings
in a volume they share; the rendered variables are read back by the services' own parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tradeplane import podspec, rendering
from tradeplane.api import TradingServiceSpec
from tradeplane.naming import Owner
from tradeplane.podspec import qos_violations
from tradeplane.revision import template_revision
from tradeplane_services.config import Address, RingAddress, load_settings, read_environment

OWNER = Owner("order", "trading", "uid-1")


def spec(co_locate: dict[str, Any], hugepages: dict[str, str] | None = None) -> TradingServiceSpec:
    resources: dict[str, Any] = {"cpus": 4, "memory": "8Gi"}
    if hugepages:
        resources["hugepages"] = hugepages
    return TradingServiceSpec.model_validate(
        {"component": "order", "image": "svc:1", "resources": resources, "coLocate": co_locate}
    )


def variables(container: dict[str, Any]) -> dict[str, str]:
    """The container's env as its process sees it (pod fields resolved to a pod's values)."""
    resolved = {"status.podIP": "10.0.0.7", "metadata.name": "order-abc"}
    return {
        v["name"]: v["value"] if "value" in v else resolved[v["valueFrom"]["fieldRef"]["fieldPath"]]
        for v in container["env"]
    }


def test_a_co_located_peer_is_a_guaranteed_container_serving_the_caller_over_rings() -> None:
    pod = podspec.pod_template(OWNER, spec({"services": [{"component": "risk", "cpus": 2}]}), "r1")["spec"]
    order, risk = pod["containers"]
    assert (order["name"], risk["name"]) == ("order", "risk")
    assert qos_violations(pod) == []
    assert risk["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"} == risk["resources"]["requests"]
    rings = next(volume for volume in pod["volumes"] if volume["name"] == "rings")
    assert rings["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Mi"}  # two 1 MiB rings in whole MiB
    for container in (order, risk):
        assert {"name": "rings", "mountPath": podspec.RINGS_MOUNT} in container["volumeMounts"]

    caller = read_environment("order", None, variables(order))
    assert caller.peer("risk") == RingAddress(Path("/run/tradeplane/rings/risk"))
    assert caller.peer("execution") == Address("execution.trading.svc", 7004)  # not co-located: TCP
    served = read_environment("risk", None, variables(risk))
    assert served.ring_dir == Path("/run/tradeplane/rings/risk")
    assert (served.port, served.metrics_port) == (7002, 9101)  # beside order's 7001 and 9100 in one pod
    assert served.peer("market-data") == Address("market-data.trading.svc", 7003)
    assert risk["readinessProbe"]["httpGet"]["port"] == 9101
    assert all("name" not in port for port in risk["ports"])  # port names are unique within a pod
    keys = next(volume for volume in pod["volumes"] if volume["name"] == "session-keys")
    assert {item["key"] for item in keys["secret"]["items"]} == {"order", "client", "risk", "admin"}


def test_rings_in_huge_pages_are_requested_by_the_container_that_creates_them() -> None:
    pages = {"pageSize": "2Mi", "amount": "64Mi"}
    pod = podspec.pod_template(
        OWNER, spec({"medium": "HugePages", "services": [{"component": "risk"}]}, pages), "r1"
    )["spec"]
    order, risk = pod["containers"]
    rings = next(volume for volume in pod["volumes"] if volume["name"] == "rings")
    assert rings["emptyDir"] == {"medium": "HugePages-2Mi"}
    # Two ring files of 1 MiB + a 4 KiB header, each rounded up to whole 2 MiB pages.
    assert (
        risk["resources"]["limits"]["hugepages-2Mi"]
        == "4Mi"
        == risk["resources"]["requests"]["hugepages-2Mi"]
    )
    assert order["resources"]["limits"]["hugepages-2Mi"] == "64Mi"
    assert qos_violations(pod) == []
    gigantic = podspec.pod_template(
        OWNER,
        spec(
            {"medium": "HugePages", "services": [{"component": "risk"}]}, {"pageSize": "1Gi", "amount": "2Gi"}
        ),
        "r1",
    )["spec"]
    assert gigantic["containers"][1]["resources"]["limits"]["hugepages-1Gi"] == "2Gi"


def test_without_co_location_the_pod_has_one_container_and_tcp_peers() -> None:
    document = spec({"services": [{"component": "risk"}]}).model_dump()
    document["coLocate"] = None
    pod = podspec.pod_template(OWNER, TradingServiceSpec.model_validate(document), "r1")["spec"]
    assert [container["name"] for container in pod["containers"]] == ["order"]
    assert "rings" not in [volume["name"] for volume in pod["volumes"]]
    environment = read_environment("order", None, variables(pod["containers"][0]))
    assert environment.peer("risk") == Address("risk.trading.svc", 7002)


def test_the_network_policy_lets_a_co_located_peer_do_its_work() -> None:
    """risk in order's pod: its callers reach its port, it reaches market data, the feed reaches it."""
    policy = rendering.network_policy(OWNER, spec({"services": [{"component": "risk"}]}))
    assert policy is not None
    ingress, egress = policy["spec"]["ingress"], policy["spec"]["egress"]
    risk_port = next(rule for rule in ingress if rule["ports"] == [{"protocol": "TCP", "port": 7002}])
    orders = {"app.kubernetes.io/component": "order", "app.kubernetes.io/managed-by": "tradeplane"}
    assert risk_port["from"] == [{"podSelector": {"matchLabels": orders}}]
    assert any(rule["ports"] == [{"protocol": "UDP"}] for rule in ingress)
    reached = [rule["ports"] for rule in egress]
    for port in (7002, 7004, 7003):
        assert [{"protocol": "TCP", "port": port}] in reached


def test_a_co_located_peer_reads_its_own_settings_from_the_revisions_config_map(tmp_path: Path) -> None:
    limited = spec({"services": [{"component": "risk", "config": {"maxPosition": 500}}]})
    files = rendering.config_map(OWNER, limited, "r1")["data"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    order, risk = podspec.pod_template(OWNER, limited, "r1")["spec"]["containers"]
    mounted = {
        container["name"]: Path(variables(container)["TRADEPLANE_CONFIG"]) for container in (order, risk)
    }
    assert all(path.parent == Path(podspec.CONFIG_DIR) for path in mounted.values())
    settings = load_settings("risk", tmp_path / mounted["risk"].name)
    assert settings.maxPosition == 500  # type: ignore[attr-defined]
    assert type(load_settings("order", tmp_path / mounted["order"].name)).__name__ == "OrderSettings"


def test_co_location_and_a_peers_settings_shape_the_revision() -> None:
    alone = TradingServiceSpec.model_validate(
        {"component": "order", "image": "svc:1", "resources": {"cpus": 4, "memory": "8Gi"}}
    )
    with_risk = spec({"services": [{"component": "risk"}]})
    limited = spec({"services": [{"component": "risk", "config": {"maxPosition": 500}}]})
    revisions = {template_revision(alone), template_revision(with_risk), template_revision(limited)}
    assert len(revisions) == 3, "each needs its own pods: a canary, not an in-place change"
