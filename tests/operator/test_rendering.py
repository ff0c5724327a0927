"""Rendering: the children of a TradingService, as data."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tradeplane import podspec, rendering
from tradeplane.api import BUNDLED_PORTS, TradingServiceSpec
from tradeplane.labels import APPLIED_ANNOTATION
from tradeplane.naming import Owner
from tradeplane.podspec import qos_violations
from tradeplane.revision import template_revision

OWNER = Owner("order", "trading", "uid-1")


def spec(**changes: Any) -> TradingServiceSpec:
    document: dict[str, Any] = {
        "component": "order",
        "image": "svc:1",
        "replicas": 3,
        "resources": {"cpus": 4, "memory": "8Gi", "hugepages": {"pageSize": "1Gi", "amount": "2Gi"}},
        "config": {"riskTimeoutMillis": 100},
    }
    document.update(changes)
    return TradingServiceSpec.model_validate(document)


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {child["kind"]: child for child in children}


def test_a_service_consists_of_its_revision_config_deployment_service_and_budget() -> None:
    children = rendering.stable_children(OWNER, spec(), "r1", monitoring=False)
    assert [(child["kind"], child["metadata"]["name"]) for child in children] == [
        ("ControllerRevision", "order-r1"),
        ("ConfigMap", "order-r1"),
        ("Deployment", "order"),
        ("Service", "order"),
        ("PodDisruptionBudget", "order"),
        ("NetworkPolicy", "order"),
    ]
    monitored = rendering.stable_children(OWNER, spec(), "r1", monitoring=True)
    assert monitored[-1]["kind"] == "ServiceMonitor"
    for child in monitored:
        metadata = child["metadata"]
        assert metadata["namespace"] == "trading"
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "tradeplane"
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "tradeplane.io/v1alpha1",
                "kind": "TradingService",
                "name": "order",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert APPLIED_ANNOTATION in metadata["annotations"]


def test_offline_rendering_has_no_owner_reference() -> None:
    children = rendering.stable_children(Owner("order", "trading"), spec(), "r1", monitoring=False)
    assert all("ownerReferences" not in child["metadata"] for child in children)


def test_the_pod_template_is_the_same_for_stable_and_canary() -> None:
    """A promotion hands the canary's ReplicaSet to the stable Deployment: the templates must match."""
    stable = rendering.deployment(OWNER, spec(), "r2", "stable", 3)
    canary = rendering.deployment(OWNER, spec(), "r2", "canary", 1)
    assert stable["spec"]["template"] == canary["spec"]["template"]
    assert (
        stable["spec"]["selector"]
        == canary["spec"]["selector"]
        == {"matchLabels": {"app.kubernetes.io/name": "order"}}
    )
    assert (stable["metadata"]["name"], canary["metadata"]["name"]) == ("order", "order-canary")
    assert canary["metadata"]["labels"]["tradeplane.io/role"] == "canary"
    assert canary["spec"]["replicas"] == 1


def test_the_pod_is_guaranteed_pinned_and_hugepage_backed() -> None:
    template = podspec.pod_template(OWNER, spec(), "r1")
    pod = template["spec"]
    assert qos_violations(pod) == []
    container = pod["containers"][0]
    assert container["command"] == ["tradeplane-svc", "order"]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "8Gi", "hugepages-1Gi": "2Gi"}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["hugepages"] == "/dev/hugepages"
    assert mounts["config"] == "/etc/tradeplane"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["hugepages"]["emptyDir"] == {"medium": "HugePages-1Gi"}
    assert volumes["config"]["configMap"] == {"name": "order-r1"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] == 20
    assert pod["tolerations"][0]["key"] == "tradeplane.io/pool"
    assert template["metadata"]["labels"]["tradeplane.io/revision"] == "r1"
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["labelSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "order",
        "tradeplane.io/revision": "r1",
    }


def test_the_environment_tells_the_service_where_it_is_and_where_its_peers_are() -> None:
    env = {
        var["name"]: var for var in podspec.pod_template(OWNER, spec(), "r1")["spec"]["containers"][0]["env"]
    }
    assert env["TRADEPLANE_REVISION"]["value"] == "r1"
    assert env["TRADEPLANE_SERVICE"]["value"] == "order"
    assert env["TRADEPLANE_CONFIG"]["value"] == "/etc/tradeplane/config.yaml"
    assert env["TRADEPLANE_PORT"]["value"] == "7001"
    assert env["TRADEPLANE_METRICS_PORT"]["value"] == "9100"
    assert env["TRADEPLANE_BIND"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["TRADEPLANE_REPLICA"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Only the peers it calls: order reaches risk and execution, nothing else.
    peers = {name: var["value"] for name, var in env.items() if name.endswith("_ADDR")}
    assert peers == {
        "TRADEPLANE_RISK_ADDR": "risk.trading.svc:7002",
        "TRADEPLANE_EXECUTION_ADDR": "execution.trading.svc:7004",
    }
    risk = podspec.pod_template(OWNER, spec(component="risk"), "r1")["spec"]["containers"][0]["env"]
    assert [var["name"] for var in risk if var["name"].endswith("_ADDR")] == ["TRADEPLANE_MARKET_DATA_ADDR"]


def test_an_event_log_reaches_bundled_components_and_changes_the_revision() -> None:
    event_log = {"servers": ["nats://nats-0.nats:4222", "nats://nats-1.nats:4222"], "replicas": 3}

    def env(**fields: Any) -> dict[str, str]:
        container = podspec.pod_template(OWNER, spec(**fields), "r1")["spec"]["containers"][0]
        return {var["name"]: var.get("value", "") for var in container["env"]}

    position = env(component="position", eventLog=event_log)
    assert position["TRADEPLANE_EVENT_LOG"] == "nats://nats-0.nats:4222,nats://nats-1.nats:4222"
    assert position["TRADEPLANE_EVENT_LOG_REPLICAS"] == "3"
    assert "TRADEPLANE_EVENT_LOG" not in env(component="position")
    assert template_revision(spec(eventLog=event_log)) != template_revision(spec())


def test_a_drain_setting_stretches_the_grace_period() -> None:
    slow = podspec.pod_template(OWNER, spec(config={"drainTimeoutSeconds": 29.5}), "r1")
    assert slow["spec"]["terminationGracePeriodSeconds"] == 5 + 30 + 5


def test_isolation_runtime_class_and_capabilities_reach_the_pod() -> None:
    isolated = spec(
        placement={"runtimeClassName": "performance", "isolation": {"irqLoadBalancing": False}},
        network={"capabilities": ["NET_ADMIN"]},
    )
    template = podspec.pod_template(OWNER, isolated, "r1")
    assert template["metadata"]["annotations"] == {"irq-load-balancing.crio.io": "disable"}
    assert template["spec"]["runtimeClassName"] == "performance"
    capabilities = template["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert capabilities == {"drop": ["ALL"], "add": ["NET_ADMIN"]}


def test_config_merges_component_defaults_with_the_spec() -> None:
    config_map = rendering.config_map(OWNER, spec(component="risk", config={"maxOrderQuantity": 10}), "r1")
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == {
        "killSwitch": "ACTIVE",
        "maxOrderQuantity": 10,
    }
    assert config_map["metadata"]["name"] == "order-r1"


def test_market_data_serves_subscriptions_over_tcp() -> None:
    # Subscribers subscribe and ask for replays over TCP; the UDP feed needs no Service port.
    market_data = spec(component="market-data")
    ports = rendering.service(OWNER, market_data)["spec"]["ports"]
    assert ports[0] == {"name": "wire", "port": 7003, "targetPort": "wire", "protocol": "TCP"}
    assert ports[1]["protocol"] == "TCP"


def test_a_routed_split_gives_each_revision_its_service() -> None:
    stable = rendering.service(OWNER, spec(), "stable", "r1")
    canary = rendering.service(OWNER, spec(), "canary", "r2")
    assert stable["metadata"]["name"] == "order"
    assert stable["spec"]["selector"] == {"app.kubernetes.io/name": "order", "tradeplane.io/revision": "r1"}
    assert canary["metadata"]["name"] == "order-canary"
    assert rendering.service(OWNER, spec())["spec"]["selector"] == {"app.kubernetes.io/name": "order"}


def test_a_stored_revision_renders_the_same_pods_under_a_newer_spec() -> None:
    old = spec()
    revision = template_revision(old)
    stored = rendering.controller_revision(OWNER, old, revision, 4)
    assert stored["revision"] == 4
    newer = spec(image="svc:2", replicas=5)
    restored = rendering.spec_from_revision(stored["data"], newer)
    assert template_revision(restored) == revision
    assert restored.replicas == 5
    assert podspec.pod_template(OWNER, restored, revision) == podspec.pod_template(OWNER, old, revision)


def test_a_default_port_in_the_stored_revision_survives_a_spec_that_sets_one() -> None:
    old = spec()
    stored = rendering.controller_revision(OWNER, old, "r1", 1)
    restored = rendering.spec_from_revision(stored["data"], spec(port=7100))
    assert restored.wire_port == 7001


def test_quantities_are_rendered_as_the_api_server_stores_them() -> None:
    template = podspec.pod_template(OWNER, spec(resources={"cpus": 1, "memory": "8192Mi"}), "r1")
    assert template["spec"]["containers"][0]["resources"]["requests"]["memory"] == "8Gi"


@pytest.mark.parametrize(
    "change", [{"image": "svc:2"}, {"config": {"riskTimeoutMillis": 5}}, {"metricsPort": 9200}]
)
def test_pod_shaping_changes_make_a_new_revision(change: dict[str, Any]) -> None:
    assert template_revision(spec(**change)) != template_revision(spec())


@pytest.mark.parametrize(
    "change",
    [
        {"replicas": 7},
        {"slo": {"p99LatencyMicros": 5}},
        {"rollout": {"steps": [{"weight": 50}]}},
        {"paused": True},
        {"resources": {"cpus": 4, "memory": "8192Mi", "hugepages": {"pageSize": "1Gi", "amount": "2048Mi"}}},
        {"placement": {"pool": "trading"}},
    ],
)
def test_other_changes_keep_the_revision(change: dict[str, Any]) -> None:
    assert template_revision(spec(**change)) == template_revision(spec())


def test_the_applied_stamp_follows_the_content() -> None:
    first = rendering.deployment(OWNER, spec(), "r1", "stable", 3)
    again = rendering.deployment(OWNER, spec(), "r1", "stable", 3)
    paused = rendering.deployment(OWNER, spec(), "r1", "stable", 3, paused=True)
    stamp = APPLIED_ANNOTATION
    assert first["metadata"]["annotations"][stamp] == again["metadata"]["annotations"][stamp]
    assert first["metadata"]["annotations"][stamp] != paused["metadata"]["annotations"][stamp]
    assert paused["spec"]["paused"] is True
    assert "paused" not in first["spec"]


@pytest.mark.parametrize(
    ("component", "identities"),
    [
        ("order", ["order", "client"]),
        ("risk", ["risk", "order", "admin"]),
        ("execution", ["execution", "order"]),
        ("position", ["position", "client", "admin"]),
        ("market-data", ["market-data", "risk", "position", "analytics", "client", "admin"]),
        ("analytics", ["analytics"]),
    ],
)
def test_a_bundled_pod_holds_its_own_session_key_and_its_callers_only(
    component: str, identities: list[str]
) -> None:
    pod = podspec.pod_template(OWNER, spec(component=component, config={}), "r1")["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "session-keys"]
    assert volume["secret"]["secretName"] == "tradeplane-session-keys"
    assert [item["key"] for item in volume["secret"]["items"]] == identities
    container = pod["containers"][0]
    assert {"name": "session-keys", "mountPath": "/etc/tradeplane-keys", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "TRADEPLANE_KEYS_DIR", "value": "/etc/tradeplane-keys"} in container["env"]
    named = podspec.pod_template(
        OWNER, spec(component=component, config={}, network={"sessionKeys": "k"}), "r1"
    )
    assert [v["secret"]["secretName"] for v in named["spec"]["volumes"] if "secret" in v] == ["k"]


def test_a_custom_component_gets_no_session_keys() -> None:
    custom = spec(component="custom", command=["serve"], port=8000, config={})
    pod = podspec.pod_template(OWNER, custom, "r1")["spec"]
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert "TRADEPLANE_KEYS_DIR" not in {variable["name"] for variable in pod["containers"][0]["env"]}


def policy_of(component: str, **settings: Any) -> dict[str, Any]:
    owner = Owner(component, "trading", "uid-1")
    policy = rendering.network_policy(owner, spec(component=component, config={}, networkPolicy=settings))
    assert policy is not None and policy["metadata"]["name"] == component
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": component}}
    return dict(policy["spec"])


def components_in(peers: list[dict[str, Any]]) -> list[str]:
    return [
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers if "podSelector" in p
    ]


DESK = {"clients": [{"cidr": "10.20.0.0/16"}]}


@pytest.mark.parametrize(
    ("component", "callers", "clients", "called"),
    [
        ("order", [], True, [("risk", 7002), ("execution", 7004)]),
        ("risk", ["order"], True, [("market-data", 7003)]),
        ("execution", ["order"], False, []),
        ("position", [], True, [("market-data", 7003)]),
        ("market-data", ["risk", "position", "analytics"], True, []),
    ],
)
def test_a_policy_lets_in_only_the_callers_and_lets_out_only_to_the_called(
    component: str, callers: list[str], clients: bool, called: list[tuple[str, int]]
) -> None:
    policy = policy_of(component, **DESK)
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    wire, metrics = policy["ingress"][0], policy["ingress"][1]
    assert wire["ports"] == [{"protocol": "TCP", "port": BUNDLED_PORTS[component]}]
    assert components_in(wire["from"]) == callers
    # Execution takes no client, whatever the spec says: nothing reaches it except through order.
    assert ({"ipBlock": {"cidr": "10.20.0.0/16"}} in wire["from"]) is clients
    assert metrics["ports"] == [{"protocol": "TCP", "port": 9100}]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in metrics["from"]] == [
        "prometheus",
        "tradeplane",
    ]
    dns, *peers = policy["egress"]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    tcp = [
        (components_in(rule["to"])[0], rule["ports"][0]["port"])
        for rule in peers
        if "port" in rule["ports"][0]
    ]
    assert tcp == called


def test_a_service_with_an_event_log_may_reach_its_servers_ports() -> None:
    owner = Owner("execution", "trading", "uid-1")
    servers = ["nats://nats.events.svc:4222", "nats://10.1.2.3:4223", "tls://nats-2.events.svc"]
    policy = rendering.network_policy(
        owner, spec(component="execution", config={}, eventLog={"servers": servers})
    )
    assert policy is not None
    assert policy["spec"]["egress"][-1] == {"ports": [{"protocol": "TCP", "port": p} for p in (4222, 4223)]}
    # Without a log, every egress rule names whom it reaches.
    assert all("to" in rule for rule in policy_of("execution")["egress"])


def test_analytics_with_a_clickhouse_server_may_reach_its_http_port() -> None:
    config = {"clickhouseUrl": "https://reader@clickhouse.data.svc"}
    policy = rendering.network_policy(OWNER, spec(component="analytics", config=config))
    assert policy is not None
    assert policy["spec"]["egress"][-1] == {"ports": [{"protocol": "TCP", "port": 8443}]}
    embedded = policy_of("analytics", **DESK)
    assert all("to" in rule for rule in embedded["egress"]), "chDB in the pod needs no egress"
    # Nobody calls its wire port; the desk asks over HTTP, from where `metricsFrom` allows.
    assert [rule["ports"][0].get("port") for rule in embedded["ingress"]] == [9100, None]


def test_market_data_reaches_its_subscribers_by_udp_and_they_let_it_in() -> None:
    udp = [{"protocol": "UDP"}]
    feed = policy_of("market-data")["egress"][-1]
    assert (components_in(feed["to"]), feed["ports"]) == (["risk", "position", "analytics"], udp)
    for subscriber in ("risk", "position", "analytics"):
        assert {"from": [_pods("market-data")], "ports": udp} in policy_of(subscriber)["ingress"]


def _pods(component: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "tradeplane"}
    return {"podSelector": {"matchLabels": labels}}


def test_opting_out_renders_no_policy_and_a_custom_component_keeps_its_egress() -> None:
    assert rendering.network_policy(OWNER, spec(networkPolicy={"enabled": False})) is None
    custom = spec(component="custom", command=["serve"], port=8000, config={}, networkPolicy=DESK)
    policy = rendering.network_policy(OWNER, custom)
    assert policy is not None
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"][0] == {
        "from": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"protocol": "TCP", "port": 8000}],
    }


def test_the_operator_may_always_push_routing_to_a_component_that_splits_orders() -> None:
    prometheus = {"namespaceLabels": {}, "podLabels": {"app.kubernetes.io/name": "prometheus"}}

    def metrics_readers(component: str) -> list[str]:
        ingress = policy_of(component, metricsFrom=[prometheus])["ingress"]
        rule = next(rule for rule in ingress if rule["ports"] == [{"protocol": "TCP", "port": 9100}])
        return [peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]]

    assert metrics_readers("order") == ["prometheus", "tradeplane"], "order takes the routing there"
    assert metrics_readers("risk") == ["prometheus"]
