"""The `tradeplane` command (also `kubectl tradeplane`): each command group registers its own subparsers."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module exposes `register(subparsers)` and sets `handler` defaults on its parsers.
COMMAND_MODULES = (
    "tradeplane.cluster.commands",
    "tradeplane.operator_cli",
    "tradeplane.rollout_cli",
    "tradeplane.sessions_cli",
    "tradeplane.demo",
)
# Development-only packages: the operator image ships without them (operator/Dockerfile.dockerignore).
OPTIONAL_PACKAGES = frozenset({"tradeplane.cluster", "tradeplane.demo"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeplane", description="Control plane for latency-critical trading services."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            name = missing.name or ""
            if not any(name == package or name.startswith(package + ".") for package in OPTIONAL_PACKAGES):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
