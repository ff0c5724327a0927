"""`helm install` on the local control plane, and what its ServiceAccount may and may not do there."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from chart.chartkit import CHART, Helm, Manifest, Release, find

from support import Kubectl, get_json

pytestmark = pytest.mark.cluster

Install = Callable[[dict[str, Any]], Release]
CLUSTER = ""  # scope of a check on a cluster-scoped resource, or across all namespaces


@dataclass(frozen=True)
class Access:
    verb: str
    group: str
    resource: str
    subresource: str = ""
    name: str = ""

    def __str__(self) -> str:
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        subresource = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {resource}{subresource}{f' {self.name}' if self.name else ''}"


def grants(role: Manifest) -> list[Access]:
    """Every (verb, resource, name) a rendered Role or ClusterRole grants."""
    return [
        Access(verb, group, *resource.partition("/")[::2], name)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames", [""])
    ]


def allowed(kubectl: Kubectl, user: str, checks: list[tuple[Access, str]]) -> list[bool]:
    """The API server's RBAC verdicts for the ServiceAccount, one SubjectAccessReview per (access, scope).

    Unlike `kubectl auth can-i`, a review names resources whose CRDs are not installed here (ServiceMonitor,
    HTTPRoute); the groups are those every ServiceAccount token carries.
    """
    namespace = user.split(":")[2]
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    reviews = [
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": groups,
                "resourceAttributes": {
                    "verb": access.verb,
                    "group": access.group,
                    "resource": access.resource,
                    "subresource": access.subresource,
                    "name": access.name,
                    "namespace": scope,
                },
            },
        }
        for access, scope in checks
    ]
    batch = {"apiVersion": "v1", "kind": "List", "items": reviews}
    # One line per review, in order: kubectl prints the created objects one after another.
    created = kubectl("create", "-o", 'jsonpath={.status.allowed}{"\\n"}', "-f", "-", input=json.dumps(batch))
    return [line == "true" for line in created.stdout.splitlines()]


def can_i(kubectl: Kubectl, user: str, verb: str, resource: str, scope: str) -> bool:
    """`kubectl auth can-i` as the user; resource is `plural[.group][/subresource]`."""
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    args.append(f"--namespace={scope}" if scope else "--all-namespaces")
    if subresource:
        args.append(f"--subresource={subresource}")
    answer = kubectl(*args, check=False)
    assert answer.stdout.strip() in ("yes", "no"), answer.stderr
    return answer.stdout.strip() == "yes"


# What the operator never needs, whatever the mode: checked where it would hurt most.
NEVER = [
    ("list", "secrets", CLUSTER),
    ("get", "secrets", "{release}"),
    ("watch", "secrets", "{watched}"),
    ("create", "pods/exec", "{watched}"),
    ("get", "pods/exec", "{watched}"),
    ("create", "pods/attach", "{watched}"),
    ("create", "pods/portforward", "{watched}"),
    ("create", "pods", "{watched}"),
    ("patch", "nodes", CLUSTER),
    ("update", "nodes/status", CLUSTER),
    ("delete", "nodes", CLUSTER),
    ("create", "serviceaccounts/token", "{release}"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", CLUSTER),
    ("escalate", "roles.rbac.authorization.k8s.io", "{watched}"),
    ("impersonate", "serviceaccounts", "{watched}"),
    ("delete", "tradingservices.tradeplane.io", "{watched}"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", CLUSTER),
    ("create", "leases.coordination.k8s.io", "{release}"),
]


def assert_never(kubectl: Kubectl, release: Release, watched: str) -> None:
    user = release.service_account
    scopes = {"release": release.namespace, "watched": watched}
    may = [
        f"{verb} {resource} in {scope or 'the cluster'}"
        for verb, resource, template in NEVER
        if can_i(kubectl, user, verb, resource, scope := template.format(**scopes))
    ]
    assert may == [], f"{user} may {may}"


def assert_verdicts(kubectl: Kubectl, user: str, checks: list[tuple[Access, str]], expected: bool) -> None:
    wrong = [
        f"{access} in {scope or 'the cluster'}"
        for (access, scope), verdict in zip(checks, allowed(kubectl, user, checks), strict=True)
        if verdict != expected
    ]
    assert wrong == [], f"{user} {'may not' if expected else 'may'}: {wrong}"


def test_cluster_wide_install_grants_its_rules_everywhere_and_nothing_sensitive(
    install: Install, kubectl: Kubectl, namespace: str
) -> None:
    release = install({})
    user = release.service_account
    (role,) = find(release.manifests, "ClusterRole")
    assert_verdicts(kubectl, user, [(access, CLUSTER) for access in grants(role)], expected=True)
    other_lease = Access("patch", "coordination.k8s.io", "leases", name="another-operator")
    assert_verdicts(kubectl, user, [(other_lease, release.namespace)], expected=False)
    assert_never(kubectl, release, watched="default")

    # Two pods, each with its own stable name: its identity in the Lease.
    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app.kubernetes.io/instance=tp")["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["tp-tradeplane-0", "tp-tradeplane-1"]
    # The standby does not share the active pod's node.
    assert len({p["spec"]["nodeName"] for p in pods}) == 2


def test_namespaced_install_reaches_nothing_outside_the_watched_namespaces(
    install: Install, kubectl: Kubectl, namespace: str, watched: list[str]
) -> None:
    release = install({"watchNamespaces": watched})
    user = release.service_account
    (cluster_role,) = find(release.manifests, "ClusterRole")
    assert_verdicts(kubectl, user, [(access, CLUSTER) for access in grants(cluster_role)], expected=True)
    election = f"{release.name}-tradeplane-leader-election"
    roles = [role for role in find(release.manifests, "Role") if role["metadata"]["name"] != election]
    assert {role["metadata"]["namespace"] for role in roles} == set(watched)
    namespaced = grants(roles[0])
    assert_verdicts(kubectl, user, [(a, scope) for a in namespaced for scope in watched], expected=True)
    # Not in its own namespace, not in any other, not across all namespaces.
    unwatched = [namespace, "default", "kube-system", CLUSTER]
    assert_verdicts(kubectl, user, [(a, scope) for a in namespaced for scope in unwatched], expected=False)
    assert_never(kubectl, release, watched=watched[0])


def test_wrong_value_fails_install_with_the_schema_message(
    cluster_helm: Helm, kubectl: Kubectl, namespace: str
) -> None:
    result = cluster_helm.run(
        "install", "tp", str(CHART), f"--namespace={namespace}", "--set-string=replicas=two", check=False
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert "at '/replicas': got string, want integer" in result.stderr
    assert cluster_helm.run("status", "tp", f"--namespace={namespace}", check=False).returncode != 0
    assert kubectl("get", "serviceaccount", "tp-tradeplane", "-n", namespace, check=False).returncode != 0
