"""The chart as the real helm renders it: lint, every mode's manifests, the RBAC's limits, the schema."""

from __future__ import annotations

from typing import Any

import pytest
from chart.chartkit import CHART, MODES, Helm, Manifest, find, one, operator_container, set_json

from tradeplane import cli

FULLNAME = "tp-tradeplane"
RELEASE_NAMESPACE = "tradeplane-system"
WATCHED = ["desk-a", "desk-b"]
READ = {"get", "list", "watch"}


def rules(manifests: list[Manifest]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(kind, namespace, rule) of every Role and ClusterRole rule."""
    return [
        (role["kind"], role["metadata"].get("namespace"), rule)
        for kind in ("ClusterRole", "Role")
        for role in find(manifests, kind)
        for rule in role["rules"]
    ]


def granted(manifests: list[Manifest], kind: str, resource: str) -> set[str]:
    return {
        verb
        for role_kind, _, rule in rules(manifests)
        if role_kind == kind and resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("mode", MODES)
def test_lint_strict(helm: Helm, mode: str) -> None:
    result = helm.run("lint", "--strict", str(CHART), *set_json(MODES[mode]))
    assert "0 chart(s) failed" in result.stdout


def test_cluster_wide_mode_binds_everything_through_one_cluster_role(helm: Helm) -> None:
    manifests = helm.manifests()
    role = one(manifests, "ClusterRole")
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NAMESPACE}
    ]
    # In the release namespace, only the leader election's Lease.
    assert [r["metadata"]["name"] for r in find(manifests, "Role")] == [f"{FULLNAME}-leader-election"]
    assert [b["roleRef"]["name"] for b in find(manifests, "RoleBinding")] == [f"{FULLNAME}-leader-election"]
    # kopf writes nothing to the resource itself: only its status is patched.
    assert granted(manifests, "ClusterRole", "tradingservices") == {"list", "watch"}
    assert granted(manifests, "ClusterRole", "tradingservices/status") == {"patch"}
    assert granted(manifests, "ClusterRole", "namespaces") == set()
    args = operator_container(manifests)["args"]
    assert "--all-namespaces" in args
    assert not any(arg.startswith("--namespace") for arg in args)


def test_namespaced_mode_grants_only_inside_the_watched_namespaces(helm: Helm) -> None:
    manifests = helm.manifests({"watchNamespaces": WATCHED})
    election = f"{FULLNAME}-leader-election"
    roles = [r for r in find(manifests, "Role") if r["metadata"]["name"] != election]
    bindings = [b for b in find(manifests, "RoleBinding") if b["metadata"]["name"] != election]
    assert sorted(r["metadata"]["namespace"] for r in roles) == WATCHED
    assert sorted(b["metadata"]["namespace"] for b in bindings) == WATCHED
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": FULLNAME,
        }
        assert binding["subjects"][0]["namespace"] == RELEASE_NAMESPACE
    # Cluster-wide it may only read: the nodes, the CRDs, and which namespaces exist.
    cluster_rules = [rule for kind, _, rule in rules(manifests) if kind == "ClusterRole"]
    assert {r for rule in cluster_rules for r in rule["resources"]} == {
        "nodes",
        "customresourcedefinitions",
        "namespaces",
    }
    assert all(set(rule["verbs"]) <= READ for rule in cluster_rules)
    args = operator_container(manifests)["args"]
    assert [arg for arg in args if arg.startswith("--namespace")] == [f"--namespace={ns}" for ns in WATCHED]
    assert "--all-namespaces" not in args
    # The Lease stays in the release namespace, whatever the watched namespaces.
    assert [lease["metadata"]["namespace"] for lease in find(manifests, "Lease")] == [RELEASE_NAMESPACE]


def test_replicas_elect_one_operator_through_the_charts_lease(helm: Helm) -> None:
    manifests = helm.manifests()
    statefulset = one(manifests, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 2
    container = operator_container(manifests)
    assert f"--lease={FULLNAME}" in container["args"]
    assert f"--lease-namespace={RELEASE_NAMESPACE}" in container["args"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name"
    lease = one(manifests, "Lease", FULLNAME)
    assert (lease["apiVersion"], lease["metadata"]["namespace"]) == (
        "coordination.k8s.io/v1",
        RELEASE_NAMESPACE,
    )
    lease_rules = [(kind, rule) for kind, _, rule in rules(manifests) if "leases" in rule["resources"]]
    # Read and renew the one Lease, by name; no create (the chart renders it), no other Lease.
    assert lease_rules == [
        (
            "Role",
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [FULLNAME],
                "verbs": ["get", "patch"],
            },
        )
    ]
    assert one(manifests, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("watch", [[], WATCHED], ids=["cluster-wide", "namespaced"])
def test_standalone_mode_has_no_leader_election(helm: Helm, watch: list[str]) -> None:
    values = {"replicas": 1, "leaderElection": {"enabled": False}, "watchNamespaces": watch}
    manifests = helm.manifests(values)
    assert one(manifests, "StatefulSet")["spec"]["replicas"] == 1
    args = operator_container(manifests)["args"]
    assert "--standalone" in args
    assert not any(arg.startswith("--lease") for arg in args)
    assert not find(manifests, "Lease")
    assert not any("leases" in rule["resources"] for _, _, rule in rules(manifests))
    assert not find(manifests, "PodDisruptionBudget")


@pytest.mark.parametrize("mode", MODES)
def test_rbac_never_reaches_secrets_exec_or_node_writes(helm: Helm, mode: str) -> None:
    for kind, namespace, rule in rules(helm.manifests(MODES[mode])):
        where = f"{kind} in {namespace or 'the cluster'}: {rule}"
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard {key} in {where}"
        assert "secrets" not in rule["resources"], where
        assert not any("/" in r and not r.endswith("/status") for r in rule["resources"]), where
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), where
        assert "rbac.authorization.k8s.io" not in rule["apiGroups"], where
        if "nodes" in rule["resources"] or "namespaces" in rule["resources"]:
            assert set(rule["verbs"]) <= READ, where
        if "pods" in rule["resources"]:
            assert set(rule["verbs"]) <= READ | {"delete"}, where


def test_operator_container_is_locked_down(helm: Helm) -> None:
    manifests = helm.manifests()
    pod = one(manifests, "StatefulSet")["spec"]["template"]["spec"]
    container = operator_container(manifests)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] >= 10000
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == FULLNAME
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in container["args"]
    assert f"--metrics-port={ports['metrics']}" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_image_digest_pins_the_image(helm: Helm) -> None:
    digest = "sha256:" + "ab" * 32
    assert operator_container(helm.manifests())["image"] == "registry.example/tradeplane-operator:0.1.0"
    pinned = operator_container(helm.manifests({"image": {"digest": digest}}))["image"]
    assert pinned == f"registry.example/tradeplane-operator@{digest}"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": "two"}, "at '/replicas': got string, want integer"),
        ({"replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
        ({"leaderElection": {"enabled": False}}, "at '/leaderElection/enabled': value must be true"),
        ({"watchNamespaces": ["Trading Desk"]}, "at '/watchNamespaces/0'"),
        (
            {"securityContext": {"readOnlyRootFilesystem": False}},
            "/readOnlyRootFilesystem': value must be true",
        ),
        ({"metrics": {"port": 80}}, "at '/metrics/port': minimum: got 80, want 1,024"),
        ({"replica": 2}, "additional properties 'replica' not allowed"),
    ],
)
def test_schema_refuses_wrong_values_with_its_message(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    result = helm.run("template", "tp", str(CHART), *set_json(values), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_operator_command_line_accepts_the_charts_arguments(helm: Helm, mode: str) -> None:
    """The container's args through the real `tradeplane` parser."""
    values = MODES[mode]
    args = operator_container(helm.manifests(values))["args"]
    parsed = cli.build_parser().parse_args(args)
    assert (parsed.command, parsed.action) == ("operator", "run")
    watched = values.get("watchNamespaces", [])
    assert parsed.namespace == (watched or None)
    assert parsed.all_namespaces is not bool(watched)
    if values.get("leaderElection", {}).get("enabled", True):
        assert (parsed.lease, parsed.lease_namespace) == (FULLNAME, RELEASE_NAMESPACE)
        assert (parsed.lease_seconds, parsed.lease_renew_deadline, parsed.lease_retry) == (4, 3.0, 0.5)
    else:
        assert (parsed.standalone, parsed.lease) == (True, None)
    assert parsed.liveness == "http://0.0.0.0:8080/healthz"
    assert parsed.metrics_port == 9090
