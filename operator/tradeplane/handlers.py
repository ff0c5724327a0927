"""kopf wiring: watch the TradingServices, their children and their pods, and queue the owner's reconcile.

kopf watches the TradingServices, their children (whatever a TradingService controls by ownerReference,
`kinds.CHILD_KINDS`, so editing a child's labels does not hide it) and their pods (labelled
app.kubernetes.io/managed-by=tradeplane), keeps them in in-memory indexes, and on every event queues the
owning TradingService with the `Controller`. Each TradingService is also reconciled at least every
RESYNC_SECONDS, the net under edits no watch reports (a child whose ownerReference was removed). kopf
calls no handler before every index is filled, so the first reconciles after a start see the whole
picture and write nothing when everything is right. Only `on.event` and index handlers are used: kopf
itself writes nothing to the resources (no finalizer, no progress annotations). Children carry
ownerReferences, so the garbage collector deletes them with their owner.

Permissions the watches use: list/watch on tradingservices, the child kinds and pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from tradeplane.api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from tradeplane.capacity import PodView
from tradeplane.controller import Controller, ServiceKey, index_id
from tradeplane.kinds import CHILD_KINDS, Kind
from tradeplane.labels import MANAGED_BY_LABEL, MANAGER, NAME_LABEL, REVISION_LABEL

MANAGED = {MANAGED_BY_LABEL: MANAGER}


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> ServiceKey | None:
    name = labels.get(NAME_LABEL)
    return (namespace, name) if namespace and name else None


def _controller_key(namespace: str | None, meta: Mapping[str, Any]) -> ServiceKey | None:
    """The TradingService that controls an object, by its controller ownerReference."""
    for reference in meta.get("ownerReferences") or ():
        if (
            reference.get("controller")
            and reference.get("kind") == KIND
            and reference.get("apiVersion") == API_VERSION
        ):
            return (namespace, reference["name"]) if namespace else None
    return None


def _controlled(namespace: str | None, meta: kopf.Meta, **_: Any) -> bool:
    return _controller_key(namespace, meta) is not None


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as the writing client: $KUBECONFIG, ~/.kube/config, else in-cluster.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Events are posted by the reconcile, for decisions; kopf's own would echo every log line.
        settings.posting.enabled = False
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        await controller.queue.stop()

    @kopf.index(GROUP, VERSION, PLURAL, id="tradingservices", registry=registry)
    def tradingservices(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[ServiceKey, Any] | None:
        return {(namespace, name): dict(body)} if namespace else None

    @kopf.on.event(GROUP, VERSION, PLURAL, id="tradingservice_changed", registry=registry)
    async def service_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
        controller.enqueue((namespace, name) if namespace else None, kwargs)

    for kind in CHILD_KINDS:
        _register_child(registry, controller, kind)

    @kopf.index("", "v1", "pods", id="service_pods", labels=MANAGED, registry=registry)
    def service_pods(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[ServiceKey, PodView] | None:
        key = _owner_key(namespace, labels)
        return {key: PodView.from_manifest(body, REVISION_LABEL)} if key else None

    @kopf.on.event("", "v1", "pods", id="pod_changed", labels=MANAGED, registry=registry)
    async def pod_changed(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
        controller.enqueue(_owner_key(namespace, labels), kwargs)

    return registry


def _register_child(registry: kopf.OperatorRegistry, controller: Controller, kind: Kind) -> None:
    def index(
        namespace: str | None, meta: kopf.Meta, body: kopf.Body, **_: Any
    ) -> dict[ServiceKey, Any] | None:
        key = _controller_key(namespace, meta)
        return {key: dict(body)} if key else None

    async def changed(namespace: str | None, meta: kopf.Meta, **kwargs: Any) -> None:
        controller.enqueue(_controller_key(namespace, meta), kwargs)

    group, version, plural = kind.group, kind.version, kind.plural
    kopf.index(group, version, plural, id=index_id(kind.kind), when=_controlled, registry=registry)(index)
    kopf.on.event(group, version, plural, id=f"{plural}_changed", when=_controlled, registry=registry)(
        changed
    )
