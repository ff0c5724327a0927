"""`tradeplane cluster up|down|status|kubeconfig`: the local control plane."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tradeplane.cluster import local, toolchain


def _up(args: argparse.Namespace) -> int:
    try:
        path = local.up(args.nodes, log=lambda message: print(message, file=sys.stderr, flush=True))
    except (local.ClusterError, toolchain.ToolchainError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(local.status())
    print(f"\nexport KUBECONFIG={path}")
    return 0


def _down(args: argparse.Namespace) -> int:
    local.down(log=lambda message: print(message, file=sys.stderr))
    return 0


def _status(args: argparse.Namespace) -> int:
    print(local.status())
    return 0 if all(local.running_components().values()) else 1


def _kubeconfig(args: argparse.Namespace) -> int:
    print(local.kubeconfig_path())
    return 0


def register(subparsers: Any) -> None:
    cluster = subparsers.add_parser("cluster", help="the local Kubernetes control plane (no Docker needed)")
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser(
        "up", help="build (first time) and start etcd, apiserver, controllers, kwok nodes"
    )
    up.add_argument("--nodes", type=Path, help="YAML file describing the simulated node pools")
    up.set_defaults(handler=_up)
    actions.add_parser("down", help="stop what `up` started and remove its state").set_defaults(handler=_down)
    actions.add_parser("status", help="which components run, and the nodes").set_defaults(handler=_status)
    actions.add_parser("kubeconfig", help="print the kubeconfig path").set_defaults(handler=_kubeconfig)
