"""`tradeplane pause|resume|promote|abort|retry NAME`: manual control of a canary rollout.

The commands record intent on the resource; the operator acts on it. pause and resume set `spec.paused`.
promote and abort annotate the resource with the canary revision they mean and the spec generation it
was seen in, so a request never applies to another revision, nor to a later attempt of the same one; the
operator acts on it at once (abort mid-analysis included) rather than at its next analysis tick. retry
asks for the rolled-back revision (`status.failedRevision`) to be canaried again without a spec change;
each retry request is honoured once.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from tradeplane.api import GROUP, PLURAL, VERSION
from tradeplane.labels import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION
from tradeplane.rollout import request, retry_request


class CommandError(Exception):
    """A request that cannot be made, with the message to show."""


def _kubeconfig(args: argparse.Namespace) -> str | None:
    # Read at call time: the client library reads $KUBECONFIG once, when it is imported.
    return args.kubeconfig or os.environ.get("KUBECONFIG")


def _api(args: argparse.Namespace) -> client.CustomObjectsApi:
    try:
        config.load_kube_config(config_file=_kubeconfig(args), context=args.context)  # type: ignore[no-untyped-call]
    except ConfigException as error:
        raise CommandError(f"no usable kubeconfig: {error}") from error
    return client.CustomObjectsApi()


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    try:
        contexts, active = config.list_kube_config_contexts(config_file=_kubeconfig(args))  # type: ignore[no-untyped-call]
    except ConfigException:
        return "default"
    chosen = next((c for c in contexts if c["name"] == args.context), active) if args.context else active
    return str((chosen or {}).get("context", {}).get("namespace") or "default")


def _get(api: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    try:
        found: Any = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status == 404:
            raise CommandError(f"tradingservice {namespace}/{name} not found") from error
        raise CommandError(f"reading tradingservice {namespace}/{name}: {error.reason}") from error
    return dict(found)


def _patch(api: client.CustomObjectsApi, namespace: str, name: str, body: dict[str, Any]) -> None:
    try:
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)
    except ApiException as error:
        raise CommandError(f"updating tradingservice {namespace}/{name}: {error.reason}") from error


def _set_paused(args: argparse.Namespace, paused: bool) -> str:
    api, namespace = _api(args), _namespace(args)
    _get(api, namespace, args.name)
    _patch(api, namespace, args.name, {"spec": {"paused": paused}})
    return f"tradingservice {namespace}/{args.name} {'paused' if paused else 'resumed'}"


def _annotate_revision(
    args: argparse.Namespace,
    annotation: str,
    status_field: str,
    missing: str,
    value_for: Callable[[str, int], str],
) -> tuple[str, dict[str, Any]]:
    """Annotate the resource with the revision its `status_field` names, bound to this spec generation;
    return that revision and the status it was read from."""
    api, namespace = _api(args), _namespace(args)
    found = _get(api, namespace, args.name)
    status = found.get("status") or {}
    revision = status.get(status_field)
    if not revision:
        phase = status.get("phase", "Pending")
        raise CommandError(f"tradingservice {namespace}/{args.name} has {missing} (phase {phase})")
    value = value_for(revision, found["metadata"]["generation"])
    _patch(api, namespace, args.name, {"metadata": {"annotations": {annotation: value}}})
    return revision, status


def _request(args: argparse.Namespace, annotation: str, verb: str) -> str:
    canary, _ = _annotate_revision(args, annotation, "canaryRevision", f"no canary to {verb}", request)
    return f"tradingservice {_namespace(args)}/{args.name}: {verb} canary revision {canary} requested"


def _retry(args: argparse.Namespace) -> str:
    failed, status = _annotate_revision(
        args,
        RETRY_ANNOTATION,
        "failedRevision",
        "no rolled-back revision",
        lambda revision, generation: retry_request(revision, generation, secrets.token_hex(4)),
    )
    outcome = status.get("rollbackOutcome") or "Failed"
    return f"tradingservice {_namespace(args)}/{args.name}: retry of revision {failed} ({outcome}) requested"


def _pause(args: argparse.Namespace) -> str:
    return _set_paused(args, True)


def _resume(args: argparse.Namespace) -> str:
    return _set_paused(args, False)


def _promote(args: argparse.Namespace) -> str:
    return _request(args, PROMOTE_ANNOTATION, "promote")


def _abort(args: argparse.Namespace) -> str:
    return _request(args, ABORT_ANNOTATION, "abort")


ACTIONS: dict[str, tuple[str, Callable[[argparse.Namespace], str]]] = {
    "pause": ("hold the rollout at its current step (analysis and rollback go on)", _pause),
    "resume": ("continue a paused rollout", _resume),
    "promote": (
        "make the canary stable now, skipping the remaining steps (not inside a freeze window)",
        _promote,
    ),
    "abort": ("roll the canary back now; the revision is not retried until its pod template changes", _abort),
    "retry": ("canary the rolled-back revision again, without changing the spec", _retry),
}


def _run(args: argparse.Namespace) -> int:
    try:
        print(ACTIONS[args.command][1](args))
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    for action, (help_text, _) in ACTIONS.items():
        parser = subparsers.add_parser(action, help=help_text, description=help_text)
        parser.add_argument("name", help="the TradingService")
        parser.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's)")
        parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
        parser.add_argument("--context", help="kubeconfig context (default: the current one)")
        parser.set_defaults(handler=_run)
