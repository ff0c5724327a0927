"""Run the operator: kopf with the tradeplane handlers, the metrics server, kopf's liveness endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import kopf
import prometheus_client

from tradeplane.controller import Controller
from tradeplane.handlers import build_registry
from tradeplane.kube import Kube
from tradeplane.leadership import Leadership, LeaseSettings


@dataclass(frozen=True)
class Options:
    namespaces: Sequence[str] = ()
    """Watch these namespaces only; empty: every namespace."""
    lease: LeaseSettings | None = None
    """The Lease that elects one acting operator among replicas; None: this one acts alone."""
    liveness: str | None = None
    """kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz."""
    metrics_port: int | None = None
    kubeconfig: str | None = None
    concurrency: int = 16


async def operate(options: Options, stop_flag: asyncio.Event | None = None) -> None:
    kube = Kube.from_environment(options.kubeconfig)
    controller = Controller(kube, tuple(options.namespaces), concurrency=options.concurrency)
    leadership, election = None, None
    if options.lease is not None:
        # Its own connections: renewals never queue behind a burst of reconciles' requests.
        election_kube = Kube.from_environment(options.kubeconfig, max_connections=2)
        leadership = Leadership(election_kube, options.lease, on_elected=controller.reconcile_all)
        controller.leading = leadership.leading
        election = asyncio.create_task(leadership.run(), name="leader election")
    try:
        # Every replica watches and indexes (standalone kopf): a standby is ready the moment it is elected.
        await kopf.operator(
            registry=build_registry(controller),
            clusterwide=not options.namespaces,
            namespaces=list(options.namespaces),
            standalone=True,
            liveness_endpoint=options.liveness,
            stop_flag=stop_flag,
        )
    finally:
        if leadership is not None and election is not None:
            election.cancel()
            await asyncio.gather(election, return_exceptions=True)
            await leadership.kube.close()
        await controller.queue.stop()
        await kube.close()


def run(options: Options, log_format: str = "plain", debug: bool = False) -> int:
    if options.kubeconfig:
        # kopf's login reads it from the environment, like kubectl.
        os.environ["KUBECONFIG"] = options.kubeconfig
    kopf.configure(log_format=kopf.LogFormat[log_format.upper()], debug=debug, verbose=debug)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not debug:
        # kopf logs every handled event at INFO; the reconcile's Events already tell the decisions.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if options.metrics_port:
        prometheus_client.start_http_server(options.metrics_port)
    try:
        import uvloop
    except ImportError:
        asyncio.run(operate(options))
    else:
        uvloop.run(operate(options))
    return 0
