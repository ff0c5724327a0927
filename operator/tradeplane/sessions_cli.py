"""`tradeplane session-keys create` and `tradeplane kill-switch`: the keys the services log on with, and
the one command an admin identity exists for.

Session keys live in one Secret per namespace (`spec.network.sessionKeys`, default
tradeplane-session-keys) with a key per identity; each bundled pod mounts only its own and its callers'.
Whoever may read that Secret may act as any identity, the kill switch's admin included: Kubernetes RBAC on
the Secret (`get`) is what decides who may run `tradeplane kill-switch`.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tradeplane.api import Network
from tradeplane.labels import COMPONENT_LABEL
from tradeplane.rollout_cli import CommandError, _api, _namespace
from tradeplane_services.catalog import ADMIN, IDENTITIES
from tradeplane_services.sessions import Credentials, Keyring

DEFAULT_SECRET = Network().sessionKeys
KEY_BYTES = 32


def new_key() -> str:
    return secrets.token_hex(KEY_BYTES) + "\n"


def ensure_secret(api: client.CoreV1Api, namespace: str, name: str = DEFAULT_SECRET) -> list[str]:
    """Create the Secret, or add a fresh key for each identity it lacks; the identities added."""
    try:
        found: Any = api.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise
        found = None
    existing = set((found.data or {}) if found is not None else {})
    missing = [identity for identity in IDENTITIES if identity not in existing]
    data: dict[str, bytes | str] = {i: base64.b64encode(new_key().encode()).decode() for i in missing}
    if found is None:
        metadata = client.V1ObjectMeta(name=name, labels={"app.kubernetes.io/part-of": "tradeplane"})
        api.create_namespaced_secret(namespace, client.V1Secret(metadata=metadata, type="Opaque", data=data))
    elif data:
        api.patch_namespaced_secret(name, namespace, {"data": data})
    return missing


def secret_credentials(
    api: client.CoreV1Api, namespace: str, identity: str, directory: Path, name: str = DEFAULT_SECRET
) -> Credentials:
    """Log-on credentials of `identity`: its key file, from the Secret, written into `directory`."""
    try:
        found: Any = api.read_namespaced_secret(name, namespace)
    except ApiException as error:
        raise CommandError(f"reading secret {namespace}/{name}: {error.reason}") from error
    encoded = (found.data or {}).get(identity)
    if encoded is None:
        raise CommandError(f"secret {namespace}/{name} has no key for {identity!r}")
    path = directory / identity
    path.write_bytes(base64.b64decode(encoded))
    path.chmod(0o600)
    return Credentials(identity, Keyring(directory))


def _core(args: argparse.Namespace) -> client.CoreV1Api:
    _api(args)  # loads the kubeconfig
    return client.CoreV1Api()


def _create(args: argparse.Namespace) -> str:
    namespace = _namespace(args)
    try:
        added = ensure_secret(_core(args), namespace, args.secret)
    except ApiException as error:
        raise CommandError(f"secret {namespace}/{args.secret}: {error.reason}") from error
    if not added:
        return f"secret {namespace}/{args.secret} already holds a key for every identity"
    return f"secret {namespace}/{args.secret}: new keys for {', '.join(added)}"


def _kill_switch(args: argparse.Namespace) -> str:
    from tradeplane_services.client import set_kill_switch
    from tradeplane_services.config import Address
    from tradeplane_services.protocol import KillSwitchState

    api, namespace = _core(args), _namespace(args)
    selector = f"app.kubernetes.io/name={args.name},{COMPONENT_LABEL}=risk"
    pods: list[Any] = api.list_namespaced_pod(namespace, label_selector=selector).items
    running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
    if not running:
        raise CommandError(f"no running risk pod of {namespace}/{args.name}")
    lines = []
    with tempfile.TemporaryDirectory(prefix="tradeplane-admin-") as scratch:
        creds = secret_credentials(api, namespace, ADMIN, Path(scratch), args.secret)
        for pod in running:
            port = next(p.container_port for p in pod.spec.containers[0].ports or [] if p.name == "wire")
            try:
                state = set_kill_switch(
                    Address(pod.status.pod_ip, port), KillSwitchState[args.state], creds=creds
                )
            except (OSError, TimeoutError) as error:
                raise CommandError(f"pod {pod.metadata.name}: {error}") from error
            lines.append(f"pod {pod.metadata.name}: kill switch {state.name}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    try:
        print(args.action(args))
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="the namespace (default: the kubeconfig context's)")
    parser.add_argument(
        "--secret", default=DEFAULT_SECRET, help=f"the session keys Secret ({DEFAULT_SECRET})"
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.set_defaults(handler=_run)


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser("session-keys", help="the Secret of session keys the services log on with")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create it, or add keys for identities it lacks")
    _common(create)
    create.set_defaults(action=_create)
    help_text = "move the kill switch of every risk pod (as the admin identity, whose key RBAC guards)"
    kill = subparsers.add_parser("kill-switch", help=help_text, description=help_text)
    kill.add_argument("state", choices=["ACTIVE", "REDUCING", "HALTED"])
    kill.add_argument("name", nargs="?", default="risk", help="the risk TradingService (default risk)")
    _common(kill)
    kill.set_defaults(action=_kill_switch)
