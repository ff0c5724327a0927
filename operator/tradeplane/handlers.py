"""kopf wiring: watch, call the core, apply with server-side apply, patch status, post Events.

kopf watches the TradingServices, their children (Deployments, Services, ConfigMaps, PDBs,
ControllerRevisions, ServiceMonitors: whatever a TradingService controls by ownerReference, so editing a
child's labels does not hide it) and their pods (labelled app.kubernetes.io/managed-by=tradeplane), keeps
them in in-memory indexes, and on every event queues the owning TradingService. Each TradingService is
also reconciled at least every RESYNC_SECONDS, the net under edits no watch reports (a child whose
ownerReference was removed). kopf calls no handler before every index is filled, so the first reconciles
after a start see the whole picture and write nothing when everything is right. Only `on.event` and
index handlers are used: kopf itself writes nothing to the resources (no finalizer, no progress
annotations). Children carry ownerReferences, so the garbage collector deletes them with their owner.

The reconcile of one TradingService: read it and what it owns from the indexes, read the pool when pods
still need a place, measure the canary when the rollout says so, `reconcile.decide`, then do exactly that:
status first (with a resourceVersion precondition: a reconcile from a stale view is refused, and retried
once the watch caught up), then applies under the one field manager `tradeplane`, deletions, Events.

Permissions it uses: tradingservices list/watch, tradingservices/status patch; deployments, services,
configmaps, poddisruptionbudgets, networkpolicies, controllerrevisions, servicemonitors
list/watch/create/patch/delete
(server-side apply creates through patch); pods list/watch/delete; nodes list; events create;
httproutes get/patch (only the route a spec names). Preflight lists the pool's pods across namespaces;
where that is forbidden it counts the watched namespaces' pods and says so. Clusters that enforce
OwnerReferencesPermissionEnforcement (OpenShift) also need update on tradingservices/finalizers, for
the children's blockOwnerDeletion.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import Counter, Gauge, Histogram

from tradeplane import rollout_handlers
from tradeplane.api import API_VERSION, GROUP, KIND, PLURAL, POOL_LABEL, VERSION, now_iso
from tradeplane.kube import ApiError, Kube
from tradeplane.placement import Amounts, NodeView, PodView, PoolSnapshot, pod_requests
from tradeplane.reconcile import ChildKey, Decision, View, decide
from tradeplane.rendering import MANAGED_BY_LABEL, MANAGER, NAME_LABEL, REVISION_LABEL
from tradeplane.rollout import Event
from tradeplane.workqueue import WorkQueue

logger = logging.getLogger("tradeplane")

ServiceKey = tuple[str, str]
"""(namespace, name) of a TradingService."""
MANAGED = {MANAGED_BY_LABEL: MANAGER}
# group, version, plural, kind of each child kind the operator applies and watches for drift.
CHILD_RESOURCES = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("", "v1", "configmaps", "ConfigMap"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ("apps", "v1", "controllerrevisions", "ControllerRevision"),
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"),
)
POOL_CACHE_SECONDS = 2.0
MONITORING_CACHE_SECONDS = 30.0
CONFLICT_RETRY_SECONDS = 0.2
RESYNC_SECONDS = 60.0
ROUTE_API = "gateway.networking.k8s.io/v1"

RECONCILE_SECONDS = Histogram(
    "tradeplane_reconcile_duration_seconds",
    "Time to reconcile one TradingService",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("tradeplane_reconcile_errors", "Failed reconciles by reason", ["reason"])
MANAGED_OBJECTS = Gauge("tradeplane_managed_objects", "Objects the operator manages, by kind", ["kind"])
WRITES = Counter("tradeplane_writes", "Writes to the API server by verb and kind", ["verb", "kind"])


@dataclass
class Indexes:
    """kopf's in-memory indexes, keyed by the owning TradingService's (namespace, name)."""

    services: Mapping[ServiceKey, Any]
    children: Mapping[str, Mapping[ServiceKey, Any]]
    pods: Mapping[ServiceKey, Any]

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(
            services=kwargs["tradingservices"],
            children={kind: kwargs[_index_id(kind)] for *_, kind in CHILD_RESOURCES},
            pods=kwargs["service_pods"],
        )

    def body(self, key: ServiceKey) -> Mapping[str, Any] | None:
        return next(iter(self.services.get(key, ())), None)

    def owned(self, key: ServiceKey) -> dict[ChildKey, Mapping[str, Any]]:
        return {
            (kind, child["metadata"]["name"]): child
            for kind, index in self.children.items()
            for child in index.get(key, ())
        }


def _index_id(kind: str) -> str:
    return f"owned_{kind.lower()}s"


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


@dataclass
class PoolCache:
    """The pool's nodes and the requests of the pods on them, read at most every few seconds."""

    kube: Kube
    namespaces: Sequence[str]
    ttl: float = POOL_CACHE_SECONDS
    _snapshots: dict[str, tuple[float, PoolSnapshot]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def snapshot(self, pool: str) -> PoolSnapshot:
        async with self._locks.setdefault(pool, asyncio.Lock()):
            cached = self._snapshots.get(pool)
            if cached is not None and time.monotonic() - cached[0] < self.ttl:
                return cached[1]
            snapshot = await self._read(pool)
            self._snapshots[pool] = (time.monotonic(), snapshot)
            return snapshot

    async def _read(self, pool: str) -> PoolSnapshot:
        nodes = [
            NodeView.from_manifest(node)
            for node in await self.kube.list("v1", "Node", label_selector=f"{POOL_LABEL}={pool}", cached=True)
        ]
        pages = await asyncio.gather(*(self._pods_on(node.name) for node in nodes))
        requested = {}
        partial = False
        for node, (pods, complete) in zip(nodes, pages, strict=True):
            total = Amounts()
            for pod in pods:
                total = total + pod_requests(pod)
            requested[node.name] = total
            partial = partial or not complete
        return PoolSnapshot(pool, nodes, requested, partial)

    async def _pods_on(self, node: str) -> tuple[list[dict[str, Any]], bool]:
        """Non-terminal pods on a node: all namespaces if allowed, else the watched ones (incomplete)."""
        selector = f"spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed"
        try:
            return await self.kube.list("v1", "Pod", field_selector=selector, cached=True), True
        except ApiError as error:
            if error.status != 403 or not self.namespaces:
                raise
        pages = await asyncio.gather(
            *(
                self.kube.list("v1", "Pod", namespace, field_selector=selector, cached=True)
                for namespace in self.namespaces
            )
        )
        return [pod for page in pages for pod in page], False


@dataclass
class Controller:
    """The reconcile loop: one queued run per TradingService at a time."""

    kube: Kube
    namespaces: Sequence[str] = ()
    concurrency: int = 16
    indexes: Indexes | None = None
    instance: str = field(default_factory=socket.gethostname)
    queue: WorkQueue[ServiceKey] = field(init=False)
    pools: PoolCache = field(init=False)
    _monitoring: tuple[float, bool] | None = None

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self.reconcile, concurrency=self.concurrency, on_error=self._failed)
        self.pools = PoolCache(self.kube, self.namespaces)

    def enqueue(self, key: ServiceKey | None, kwargs: Mapping[str, Any]) -> None:
        if self.indexes is None:
            self.indexes = Indexes.from_kwargs(kwargs)
        if key is not None:
            self.queue.add(key)

    async def reconcile(self, key: ServiceKey) -> float | None:
        assert self.indexes is not None, "indexes are bound by the first handler call"
        body = self.indexes.body(key)
        if body is None:
            rollout_handlers.forget(*key)
            self.queue.forget(key)
            return None
        started = time.perf_counter()
        now = datetime.now(UTC)
        view = View.observe(body, self.indexes.owned(key), list(self.indexes.pods.get(key, ())))
        pool = None
        if view.spec is not None and view.needs_preflight():
            pool = await self.pools.snapshot(view.spec.placement.pool)
        analysis = None
        if view.spec is not None and view.analysis_due(now):
            status = view.status
            canary = status.canaryRevision or ""
            stable = status.stableRevision or ""
            analysis = await rollout_handlers.measure(
                view.spec,
                status,
                view.owner.namespace,
                view.owner.name,
                [f"{pod.ip}:{view.spec.metricsPort}" for pod in view.ready_pods(canary)],
                [f"{pod.ip}:{view.spec.metricsPort}" for pod in view.ready_pods(stable)],
                now,
            )
        route = None
        if view.spec is not None and view.spec.rollout.httpRoute is not None:
            route = await self.kube.get(
                ROUTE_API, "HTTPRoute", view.owner.namespace, view.spec.rollout.httpRoute.name
            )
        decision = decide(
            view,
            now=now,
            pool=pool,
            monitoring=await self._monitoring_served(),
            analysis=analysis,
            route=route,
        )
        again = await self._execute(view, body, decision)
        RECONCILE_SECONDS.observe(time.perf_counter() - started)
        self._count_managed()
        return RESYNC_SECONDS if again is None else again

    async def _execute(self, view: View, body: Mapping[str, Any], decision: Decision) -> float | None:
        owner = view.owner
        if decision.status is not None:
            try:
                await self.kube.patch_status(
                    API_VERSION,
                    KIND,
                    owner.namespace,
                    owner.name,
                    decision.status,
                    resource_version=body["metadata"]["resourceVersion"],
                )
            except ApiError as error:
                if error.conflict:
                    # Decided from a stale view: the watch brings the newer one, decide again then.
                    return CONFLICT_RETRY_SECONDS
                raise
            WRITES.labels("patch", "TradingService/status").inc()
        for manifest in decision.apply:
            await self.kube.apply(manifest)
            WRITES.labels("apply", manifest["kind"]).inc()
            logger.info(
                "%s/%s: applied %s %s",
                owner.namespace,
                owner.name,
                manifest["kind"],
                manifest["metadata"]["name"],
            )
        for deletion in decision.delete:
            await self.kube.delete(
                deletion.api_version,
                deletion.kind,
                owner.namespace,
                deletion.name,
                propagation=deletion.propagation,
                uid=deletion.uid,
            )
            WRITES.labels("delete", deletion.kind).inc()
        if decision.route_rules is not None and view.spec and view.spec.rollout.httpRoute:
            route_name = view.spec.rollout.httpRoute.name
            await self.kube.patch(
                ROUTE_API, "HTTPRoute", owner.namespace, route_name, {"spec": {"rules": decision.route_rules}}
            )
            WRITES.labels("patch", "HTTPRoute").inc()
        for pod in decision.delete_pods:
            await self.kube.delete("v1", "Pod", owner.namespace, pod.name)
            WRITES.labels("delete", "Pod").inc()
        for note in decision.events:
            await self._post_event(body, note)
        status = view.status if decision.status is None else view.status.model_validate(decision.status)
        rollout_handlers.record(owner.namespace, owner.name, status, decision.rollback_reason)
        return decision.requeue_after

    async def _post_event(self, body: Mapping[str, Any], note: Event) -> None:
        metadata = body["metadata"]
        now = now_iso(datetime.now(UTC).replace(microsecond=0))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },
            "type": note.type,
            "reason": note.reason,
            "message": note.message[:1024],
            "source": {"component": MANAGER, "host": self.instance},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(event)
            WRITES.labels("create", "Event").inc()
        except ApiError as error:
            # An Event is a courtesy: never fail the reconcile for one.
            logger.warning("could not post event %s for %s: %s", note.reason, metadata["name"], error)

    async def _monitoring_served(self) -> bool:
        if self._monitoring is None or time.monotonic() - self._monitoring[0] > MONITORING_CACHE_SECONDS:
            served = await self.kube.served("monitoring.coreos.com/v1", "servicemonitors")
            self._monitoring = (time.monotonic(), served)
        return self._monitoring[1]

    def _count_managed(self) -> None:
        assert self.indexes is not None
        for kind, index in self.indexes.children.items():
            MANAGED_OBJECTS.labels(kind).set(sum(len(store) for store in index.values()))
        MANAGED_OBJECTS.labels(KIND).set(len(self.indexes.services))

    def _failed(self, key: ServiceKey, error: BaseException) -> None:
        reason = f"api{error.status}" if isinstance(error, ApiError) else type(error).__name__
        RECONCILE_ERRORS.labels(reason).inc()
        logger.error(
            "reconcile of %s/%s failed: %s", key[0], key[1], error, exc_info=not isinstance(error, ApiError)
        )


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

    for group, version, plural, kind in CHILD_RESOURCES:
        _register_child(registry, controller, group, version, plural, kind)

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


def _register_child(
    registry: kopf.OperatorRegistry, controller: Controller, group: str, version: str, plural: str, kind: str
) -> None:
    def index(
        namespace: str | None, meta: kopf.Meta, body: kopf.Body, **_: Any
    ) -> dict[ServiceKey, Any] | None:
        key = _controller_key(namespace, meta)
        return {key: dict(body)} if key else None

    async def changed(namespace: str | None, meta: kopf.Meta, **kwargs: Any) -> None:
        controller.enqueue(_controller_key(namespace, meta), kwargs)

    kopf.index(group, version, plural, id=_index_id(kind), when=_controlled, registry=registry)(index)
    kopf.on.event(group, version, plural, id=f"{plural}_changed", when=_controlled, registry=registry)(
        changed
    )
