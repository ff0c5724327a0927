"""Fixtures for the services: real processes on a loopback address of their own per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tradeplane_services.natsserver import NatsServers
from tradeplane_services.stack import Stack

# 127.77.0.0/16 is ours: the local cluster hands pods 127.1/16, 127.2/16 and kwok 127.3/16.
_hosts = itertools.count(1)
_BLOCK = 1 + os.getpid() % 250


def fresh_host() -> str:
    return f"127.77.{_BLOCK}.{next(_hosts)}"


StackFactory = Callable[..., Stack]


@pytest.fixture
def make_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StackFactory]:
    """Start a stack (optionally a subset, with settings per component); everything is stopped after.

    The test's stacks share one set of session keys, which the test's own clients log on with."""
    stacks: list[Stack] = []
    keys = tmp_path / "keys"
    monkeypatch.setenv("TRADEPLANE_KEYS_DIR", str(keys))

    def start(
        settings: dict[str, dict[str, Any]] | None = None,
        components: tuple[str, ...] | None = None,
        **options: Any,
    ) -> Stack:
        options.setdefault("keys_dir", keys)
        stack = Stack(fresh_host(), tmp_path / f"stack-{len(stacks)}", settings or {}, **options)
        stacks.append(stack)
        if components is None:
            stack.start()
            stack.wait_ready()
        else:
            stack.start(components)
            stack.wait_ready(components=components)
        return stack

    yield start
    for stack in stacks:
        stack.stop()


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    return make_stack()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServers]:
    """One real nats-server with JetStream (sync_interval: always) on a loopback address of its own."""
    servers = NatsServers(fresh_host(), tmp_path / "eventlog")
    servers.start()
    servers.wait_ready()
    yield servers
    servers.stop()
