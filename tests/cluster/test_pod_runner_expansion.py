"""The pod runner's `$(VAR)` expansion of command and args, as the kubelet does it."""

from __future__ import annotations

import pytest

from tradeplane.cluster.podrunner import expand_references

ENV = {"POD_IP": "127.1.0.7", "POD_NAME": "nats-1", "EMPTY": ""}


@pytest.mark.parametrize(
    ("written", "expanded"),
    [
        ("$(POD_IP)", "127.1.0.7"),
        ("nats://$(POD_IP):6222", "nats://127.1.0.7:6222"),
        ("$(POD_NAME)-$(POD_IP)", "nats-1-127.1.0.7"),
        ("[$(EMPTY)]", "[]"),
        ("$(UNDEFINED)", "$(UNDEFINED)"),  # an undefined reference stays as written
        ("$$(POD_IP)", "$(POD_IP)"),  # escaped
        ("cost: $$5", "cost: $5"),
        ("$POD_IP and $(POD_IP", "$POD_IP and $(POD_IP"),  # not references
    ],
)
def test_references_expand_from_the_container_env(written: str, expanded: str) -> None:
    assert expand_references(written, ENV) == expanded
