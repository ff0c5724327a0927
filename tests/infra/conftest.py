"""Runs the Pulumi program under pulumi's mock monitor and records what it declares.

The mock engine returns each resource's inputs as its outputs, plus the few outputs a cloud computes
that the program reads back (a launch template's version, a cluster's endpoint and kubeconfig).
"""

from __future__ import annotations

import asyncio
import json
import runpy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from tradeplane_infra.program import deploy
from tradeplane_infra.settings import NAMESPACE, Settings, parse_settings, read_config

INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"

COMPUTED_OUTPUTS: dict[str, dict[str, Any]] = {
    "eks:index:Cluster": {
        "kubeconfigJson": json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": []})
    },
    "aws:iam/role:Role": {"arn": "arn:aws:iam::123456789012:role/tradeplane-node"},
    "aws:ec2/launchTemplate:LaunchTemplate": {"latestVersion": 3},
    "aws:ec2/placementGroup:PlacementGroup": {"name": "tradeplane-trading-4f2a"},
    "gcp:container/cluster:Cluster": {
        "endpoint": "203.0.113.10",
        "masterAuth": {"clusterCaCertificate": "Q0E="},
    },
}


@dataclass(frozen=True)
class Declared:
    type: str
    name: str
    inputs: dict[str, Any]


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.declared: list[Declared] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.declared.append(Declared(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", {**args.inputs, **COMPUTED_OUTPUTS.get(args.typ, {})}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        raise AssertionError(f"the program should not invoke {args.token}")


@dataclass
class Graph:
    """Everything one run of the program declared, and its stack outputs."""

    declared: list[Declared]
    exports: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Declared]:
        return [d for d in self.declared if d.type == type_]

    def one(self, type_: str, name: str) -> Declared:
        matches = [d for d in self.declared if d.type == type_ and d.name == name]
        assert len(matches) == 1, f"{type_} {name}: declared {len(matches)} times; all: {self.names()}"
        return matches[0]

    def names(self) -> list[tuple[str, str]]:
        return [(d.type, d.name) for d in self.declared]


@pytest.fixture(autouse=True)
def event_loop_for_pulumi() -> Iterator[None]:
    """pulumi's mock engine runs on the thread's current event loop; an earlier asyncio.run() leaves none."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def declare(settings: Settings) -> Graph:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=NAMESPACE, stack="test", preview=False)
    graph = Graph(mocks.declared)

    def program() -> pulumi.Output[None]:
        return pulumi.Output.from_input(deploy(settings)).apply(graph.exports.update)

    pulumi.runtime.test(program)()
    return graph


def stack_config(stack: str) -> dict[str, str]:
    """An example stack file's `tradeplane:*` values as Pulumi hands them over: strings, objects as JSON."""
    document = yaml.safe_load((INFRA_DIR / f"Pulumi.{stack}.yaml").read_text())
    prefix = f"{NAMESPACE}:"
    return {
        key.removeprefix(prefix): value if isinstance(value, str) else json.dumps(value)
        for key, value in document["config"].items()
        if key.startswith(prefix)
    }


def stack_settings(stack: str, **overrides: Any) -> Settings:
    raw = read_config(stack_config(stack).get)
    return parse_settings({**raw, **overrides})


def run_entry_point(config: dict[str, str]) -> list[Declared]:
    """Runs infra/__main__.py as `pulumi up` would, with `config` as the stack's `tradeplane:*` values."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=NAMESPACE, stack="test", preview=False)
    pulumi.runtime.set_all_config({f"{NAMESPACE}:{key}": value for key, value in config.items()})
    try:
        pulumi.runtime.test(lambda: runpy.run_path(str(INFRA_DIR / "__main__.py")))()
    finally:
        pulumi.runtime.set_all_config({})
    return mocks.declared


@pytest.fixture(name="run_entry_point")
def run_entry_point_fixture() -> Callable[[dict[str, str]], list[Declared]]:
    return run_entry_point


@pytest.fixture(name="stack_config")
def stack_config_fixture() -> Callable[[str], dict[str, str]]:
    return stack_config


@pytest.fixture(name="stack_settings")
def stack_settings_fixture() -> Callable[..., Settings]:
    return stack_settings


@pytest.fixture(name="declare")
def declare_fixture() -> Callable[[Settings], Graph]:
    return declare


@pytest.fixture(scope="module")
def declared() -> Callable[[str], Graph]:
    """Graph of an example stack (local, aws, gcp), declared once per test module."""
    cache: dict[str, Graph] = {}

    def graph(stack: str) -> Graph:
        if stack not in cache:
            cache[stack] = declare(stack_settings(stack))
        return cache[stack]

    return graph
