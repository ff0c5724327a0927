"""`tradeplane render -f FILE`, `tradeplane status`, `tradeplane operator run`."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from tradeplane import api, naming, rendering
from tradeplane.kube import ApiError, Kube
from tradeplane.labels import MANAGED_BY_LABEL, MANAGER, POOL_LABEL, REVISION_LABEL
from tradeplane.leadership import LeaseSettings
from tradeplane.revision import template_revision


class InputError(Exception):
    """A manifest that cannot be rendered; the message names the file, document and field."""


def _documents(path: str) -> Iterator[tuple[str, Any]]:
    stream: TextIO = sys.stdin if path == "-" else Path(path).open()  # noqa: SIM115 - closed below
    source = "stdin" if path == "-" else path
    try:
        for number, document in enumerate(yaml.safe_load_all(stream), start=1):
            if document is not None:
                yield f"{source}, document {number}", document
    except yaml.YAMLError as error:
        raise InputError(f"{source}: not valid YAML: {error}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def render_documents(path: str, namespace: str, monitoring: bool) -> list[dict[str, Any]]:
    children: list[dict[str, Any]] = []
    for where, document in _documents(path):
        if not isinstance(document, dict) or document.get("kind") != api.KIND:
            continue
        try:
            service = api.TradingService.model_validate(document)
        except ValidationError as error:
            problems = "; ".join(
                f"{api.field_path(issue['loc'])}: {issue['msg']}" for issue in error.errors()
            )
            raise InputError(f"{where}: {problems}") from None
        owner = naming.Owner(service.metadata.name, service.metadata.namespace or namespace)
        children += rendering.stable_children(
            owner, service.spec, template_revision(service.spec), monitoring=monitoring
        )
    if not children:
        raise InputError(f"{path}: no {api.KIND} found")
    return children


def _render(args: argparse.Namespace) -> int:
    try:
        children = render_documents(args.filename, args.namespace, args.service_monitor)
    except (InputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(children, sys.stdout, sort_keys=False)
    return 0


def _condition(service: dict[str, Any], kind: str) -> str:
    for condition in service.get("status", {}).get("conditions", []):
        if condition.get("type") == kind:
            state = condition.get("status")
            return str(state) if state == "True" else f"{state} ({condition.get('reason')})"
    return "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


async def status_report(namespace: str | None, pods: bool, kubeconfig: str | None = None) -> str:
    kube = Kube.from_environment(kubeconfig)
    try:
        services = await kube.list(api.API_VERSION, api.KIND, namespace)
        rows = [["NAMESPACE", "NAME", "COMPONENT", "PHASE", "READY", "PLACED", "DEGRADED", "NODES", "STABLE"]]
        for service in services:
            status = service.get("status", {})
            rows.append(
                [
                    service["metadata"]["namespace"],
                    service["metadata"]["name"],
                    service["spec"]["component"],
                    status.get("phase", "-"),
                    f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)}",
                    _condition(service, "Placed"),
                    _condition(service, "Degraded"),
                    ",".join(status.get("nodes", [])) or "-",
                    status.get("stableRevision") or "-",
                ]
            )
        report = _table(rows) if services else "no TradingServices found"
        if pods and services:
            report += "\n\n" + await _pod_report(kube, namespace)
        return report
    finally:
        await kube.close()


async def _pod_report(kube: Kube, namespace: str | None) -> str:
    pods = await kube.list("v1", "Pod", namespace, label_selector=f"{MANAGED_BY_LABEL}={MANAGER}")
    nodes = {node["metadata"]["name"]: node for node in await kube.list("v1", "Node")}
    rows = [["NAMESPACE", "POD", "PHASE", "QOS", "NODE", "POOL", "REVISION"]]
    for pod in sorted(pods, key=lambda pod: (pod["metadata"]["namespace"], pod["metadata"]["name"])):
        node = pod.get("spec", {}).get("nodeName") or ""
        labels = nodes.get(node, {}).get("metadata", {}).get("labels", {})
        rows.append(
            [
                pod["metadata"]["namespace"],
                pod["metadata"]["name"],
                pod.get("status", {}).get("phase", "-"),
                pod.get("status", {}).get("qosClass", "-"),
                node or "-",
                labels.get(POOL_LABEL, "-"),
                pod["metadata"].get("labels", {}).get(REVISION_LABEL, "-"),
            ]
        )
    return _table(rows)


def _status(args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else args.namespace
    try:
        print(asyncio.run(status_report(namespace, args.pods, args.kubeconfig)))
    except (ApiError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    # Imported here: the operator's dependencies (kopf, the rollout's calendars) slow every other command.
    from tradeplane import runner

    lease = None
    if args.lease:
        try:
            lease = LeaseSettings(
                name=args.lease,
                namespace=args.lease_namespace,
                identity=args.identity,
                lease_seconds=args.lease_seconds,
                renew_deadline_seconds=args.lease_renew_deadline,
                retry_seconds=args.lease_retry,
            )
        except ValueError as error:
            print(f"error: --lease-*: {error}", file=sys.stderr)
            return 2
    options = runner.Options(
        namespaces=() if args.all_namespaces else tuple(args.namespace or ()),
        lease=lease,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        kubeconfig=args.kubeconfig,
    )
    return runner.run(options, log_format=args.log_format, debug=args.debug)


def register(subparsers: Any) -> None:
    render = subparsers.add_parser("render", help="print the child objects a TradingService manifest makes")
    render.add_argument("-f", "--filename", required=True, help="manifest file, or - for stdin")
    render.add_argument("-n", "--namespace", default="default", help="namespace when the manifest names none")
    render.add_argument("--service-monitor", action="store_true", help="include the ServiceMonitor")
    render.set_defaults(handler=_render)

    status = subparsers.add_parser("status", help="TradingServices with phase, conditions and nodes")
    scope = status.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", default="default")
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    status.add_argument("--pods", action="store_true", help="also list each pod with its node and pool")
    status.add_argument("--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, ~/.kube/config)")
    status.set_defaults(handler=_status)

    operator = subparsers.add_parser("operator", help="the TradingService operator")
    actions = operator.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run the operator until interrupted")
    watched = run.add_mutually_exclusive_group()
    watched.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeatable)")
    watched.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    election = run.add_mutually_exclusive_group()
    election.add_argument("--lease", help="Lease that elects the one acting operator among replicas")
    election.add_argument("--standalone", action="store_true", help="no leader election (the default)")
    run.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the Lease (default: $POD_NAMESPACE, else default)",
    )
    run.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        help="this replica's name in the Lease (default: $POD_NAME, else host-pid)",
    )
    run.add_argument("--lease-seconds", type=int, default=4, help="a silent holder's Lease lapses after this")
    run.add_argument(
        "--lease-renew-deadline",
        type=float,
        default=3.0,
        help="the holder stops acting this long after its last renewal (below --lease-seconds)",
    )
    run.add_argument("--lease-retry", type=float, default=0.5, help="seconds between renewals and tries")
    run.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    run.add_argument("--log-format", choices=["plain", "full", "json"], default="plain")
    run.add_argument("--debug", action="store_true")
    run.add_argument(
        "--kubeconfig", help="kubeconfig path (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    run.set_defaults(handler=_run)
