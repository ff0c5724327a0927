"""The controller: one queued reconcile per TradingService at a time, from kopf's indexes to the API.

The reconcile of one TradingService: read it and what it owns from the indexes, read the pool when pods
still need a place, measure the canary when the rollout says so, read the traffic object when the traffic
router names one, `reconcile.decide`, then do exactly that: status first (with a resourceVersion
precondition: a reconcile from a stale view is refused, and retried once the watch caught up), then
applies under the one field manager `tradeplane`, deletions, the traffic object's patch, Events.

Permissions it uses: tradingservices/status patch; deployments, services, configmaps,
poddisruptionbudgets, networkpolicies, controllerrevisions, servicemonitors create/patch/delete
(server-side apply creates through patch); pods delete; nodes list; events create; httproutes get/patch
(only the route a spec names). With orderFlow it POSTs the routing to the callers' pods (routing.py),
which needs no permission beyond the pods it already watches. Preflight lists the pool's pods across
namespaces; where that is forbidden it counts the watched namespaces' pods and says so. Clusters that enforce
OwnerReferencesPermissionEnforcement (OpenShift) also need update on tradingservices/finalizers, for the
children's blockOwnerDeletion.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tradeplane import analysis, metrics
from tradeplane.api import API_VERSION, DEFAULT_METRICS_PORT, KIND, now_iso
from tradeplane.capacity import Amounts, NodeView, PoolSnapshot, pod_requests
from tradeplane.events import Event
from tradeplane.kinds import CHILD_KINDS
from tradeplane.kube import ApiError, Kube
from tradeplane.labels import MANAGER, POOL_LABEL
from tradeplane.providers import Providers
from tradeplane.reconcile import ChildKey, Decision, View, decide
from tradeplane.routing import RoutingPushes
from tradeplane.traffic import router_for
from tradeplane.workqueue import WorkQueue
from tradeplane_services.catalog import splitting_callers
from tradeplane_services.orderflow import STABLE_BEFORE_ROUTING

logger = logging.getLogger("tradeplane")

ServiceKey = tuple[str, str]
"""(namespace, name) of a TradingService."""
POOL_CACHE_SECONDS = 2.0
MONITORING_CACHE_SECONDS = 30.0
CONFLICT_RETRY_SECONDS = 0.2
RESYNC_SECONDS = 60.0


def index_id(kind: str) -> str:
    """The id of kopf's index of one child kind."""
    return f"owned_{kind.lower()}s"


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
            children={kind.kind: kwargs[index_id(kind.kind)] for kind in CHILD_KINDS},
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
    providers: Providers = field(default_factory=Providers)
    routing: RoutingPushes = field(default_factory=RoutingPushes)
    leading: Callable[[], bool] = lambda: True
    """May this replica act now? A standby watches and indexes, but reconciles nothing (leadership.py)."""
    _monitoring: tuple[float, bool] | None = None

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self.reconcile, concurrency=self.concurrency, on_error=self._failed)
        self.pools = PoolCache(self.kube, self.namespaces)

    def enqueue(self, key: ServiceKey | None, kwargs: Mapping[str, Any]) -> None:
        if self.indexes is None:
            self.indexes = Indexes.from_kwargs(kwargs)
        if key is not None and self.leading():
            self.queue.add(key)

    def reconcile_all(self) -> None:
        """Queue every indexed TradingService: on election, the new leader looks at everything at once."""
        if self.indexes is not None:
            for key in list(self.indexes.services):
                self.queue.add(key)

    async def reconcile(self, key: ServiceKey) -> float | None:
        if not self.leading():
            # Deposed: the key is dropped; the next leader queues every TradingService when elected.
            return None
        indexes = self._indexes()
        body = indexes.body(key)
        if body is None:
            metrics.forget(*key)
            self.queue.forget(key)
            self.routing.forget(key)
            return None
        started = time.perf_counter()
        now = datetime.now(UTC)
        view = View.observe(body, indexes.owned(key), list(indexes.pods.get(key, ())))
        pool = None
        if view.spec is not None and view.needs_preflight():
            pool = await self.pools.snapshot(view.spec.placement.pool)
        verdict = None
        if view.spec is not None and view.analysis_due(now):
            status = view.status
            canary = status.canaryRevision or ""
            stable = status.stableRevision or ""
            verdict = await analysis.measure(
                self.providers,
                view.spec,
                status,
                view.owner.namespace,
                view.owner.name,
                [f"{pod.ip}:{view.spec.metricsPort}" for pod in view.ready_pods(canary)],
                [f"{pod.ip}:{view.spec.metricsPort}" for pod in view.ready_pods(stable)],
                now,
                self._callers(view.owner.namespace, view.spec.component)
                if view.spec.rollout.orderFlow is not None
                else (),
            )
        traffic_object = None
        named = router_for(view.spec).traffic_object(view.spec) if view.spec is not None else None
        if named is not None:
            traffic_object = await self.kube.get(
                named.api_version, named.kind, view.owner.namespace, named.name
            )
        callers = None
        if view.spec is not None and view.spec.rollout.orderFlow is not None:
            stable_names = (view.status.stableRevision or "", STABLE_BEFORE_ROUTING)
            callers = self.routing.report(key, stable_names)
        decision = decide(
            view,
            now=now,
            pool=pool,
            monitoring=await self._monitoring_served(),
            analysis=verdict,
            traffic_object=traffic_object,
            callers=callers,
        )
        if not self.leading():
            # Lost the Lease while measuring: another replica may act already; write nothing.
            return None
        again = await self._execute(view, body, decision, started)
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        self._count_managed()
        return RESYNC_SECONDS if again is None else again

    async def _execute(
        self, view: View, body: Mapping[str, Any], decision: Decision, started: float
    ) -> float | None:
        owner = view.owner
        # Taking the orders off the canary cannot wait for the status write: a zero weight is the state a
        # caller falls back to by itself anyway (its lease), so it is safe even from a view found stale.
        withdraw = decision.routing is not None and decision.routing.weight_basis_points == 0
        if withdraw:
            await self._push_routing(view, decision)
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
            metrics.WRITES.labels("patch", "TradingService/status").inc()
        if not withdraw:
            # Any other table goes out once the status records the step it belongs to.
            await self._push_routing(view, decision)
        for manifest in decision.apply:
            await self.kube.apply(manifest)
            metrics.WRITES.labels("apply", manifest["kind"]).inc()
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
            metrics.WRITES.labels("delete", deletion.kind).inc()
        named = router_for(view.spec).traffic_object(view.spec) if view.spec is not None else None
        if decision.traffic_patch is not None and named is not None:
            await self.kube.patch(
                named.api_version, named.kind, owner.namespace, named.name, decision.traffic_patch
            )
            metrics.WRITES.labels("patch", named.kind).inc()
        for pod in decision.delete_pods:
            await self.kube.delete("v1", "Pod", owner.namespace, pod.name)
            metrics.WRITES.labels("delete", "Pod").inc()
        for note in decision.events:
            await self._post_event(body, note)
        status = view.status if decision.status is None else view.status.model_validate(decision.status)
        metrics.record(owner.namespace, owner.name, status, decision.rollback_reason)
        if decision.requeue_after is None:
            return None
        # The delay counts from the reconcile's start, as `decide`'s clock does: a one-second analysis
        # interval is one second apart, not one second plus the time this reconcile took.
        return max(0.0, decision.requeue_after - (time.perf_counter() - started))

    async def _push_routing(self, view: View, decision: Decision) -> None:
        if decision.routing is None or view.spec is None:
            return
        owner = view.owner
        key = (owner.namespace, owner.name)
        callers = self._callers(owner.namespace, view.spec.component)
        failed = await self.routing.push(key, decision.routing, callers)
        metrics.ROUTING_PUSHES.labels("ok").inc(len(callers) - failed)
        metrics.ROUTING_PUSHES.labels("failed").inc(failed)
        unready = self._callers(owner.namespace, view.spec.component, ready=False)
        await self.routing.withdraw(key, decision.routing, unready)

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
            metrics.WRITES.labels("create", "Event").inc()
        except ApiError as error:
            # An Event is a courtesy: never fail the reconcile for one.
            logger.warning("could not post event %s for %s: %s", note.reason, metadata["name"], error)

    async def _monitoring_served(self) -> bool:
        if self._monitoring is None or time.monotonic() - self._monitoring[0] > MONITORING_CACHE_SECONDS:
            served = await self.kube.served("monitoring.coreos.com/v1", "servicemonitors")
            self._monitoring = (time.monotonic(), served)
        return self._monitoring[1]

    def _callers(self, namespace: str, component: str, ready: bool = True) -> list[str]:
        """HTTP endpoints of the running pods, ready or not as asked, of the services that split their
        orders to `component`."""
        indexes = self._indexes()
        splitting = splitting_callers(component)
        endpoints = []
        for (service_namespace, name), bodies in indexes.services.items():
            for body in bodies:
                spec = body.get("spec") or {}
                if service_namespace != namespace or spec.get("component") not in splitting:
                    continue
                port = spec.get("metricsPort", DEFAULT_METRICS_PORT)
                endpoints += [
                    f"{pod.ip}:{port}"
                    for pod in indexes.pods.get((service_namespace, name), ())
                    if pod.ready == ready and pod.active and pod.ip
                ]
        return sorted(endpoints)

    def _indexes(self) -> Indexes:
        if self.indexes is None:
            # kopf calls no handler before every index is filled, and the first call binds them.
            raise RuntimeError("reconcile before kopf's indexes were bound by a handler call")
        return self.indexes

    def _count_managed(self) -> None:
        indexes = self._indexes()
        for kind, index in indexes.children.items():
            metrics.MANAGED_OBJECTS.labels(kind).set(sum(len(store) for store in index.values()))
        metrics.MANAGED_OBJECTS.labels(KIND).set(len(indexes.services))

    def _failed(self, key: ServiceKey, error: BaseException) -> None:
        reason = f"api{error.status}" if isinstance(error, ApiError) else type(error).__name__
        metrics.RECONCILE_ERRORS.labels(reason).inc()
        logger.error(
            "reconcile of %s/%s failed: %s", key[0], key[1], error, exc_info=not isinstance(error, ApiError)
        )
