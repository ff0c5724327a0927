"""The component catalog: every entry resolves to a real service, and unknown names are refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tradeplane.api import TradingServiceSpec
from tradeplane_services.catalog import BUNDLED, IDENTITIES, callees, start_order
from tradeplane_services.cli import main
from tradeplane_services.config import ConfigError, parse_settings, read_environment
from tradeplane_services.runtime import Service


@pytest.mark.parametrize("name", list(BUNDLED))
def test_every_entry_names_a_service_class_and_its_settings(name: str) -> None:
    entry = BUNDLED[name]
    assert issubclass(entry.service_class(), Service)
    # The operator's rendered defaults are settings the service itself accepts.
    parse_settings(name, dict(entry.rendered_defaults), f"{name} defaults")


def test_callers_are_known_identities_and_every_callee_starts_first() -> None:
    order = start_order()
    assert sorted(order) == sorted(BUNDLED)
    for name, entry in BUNDLED.items():
        assert set(entry.callers) <= set(IDENTITIES)
        for callee in callees(name):
            assert order.index(callee) < order.index(name), f"{callee} must start before {name}"


def test_an_unknown_component_is_refused_by_name_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="unknown component 'pricing': expected one of order, risk"):
        read_environment("pricing", None, {})
    with pytest.raises(ConfigError, match="unknown component 'pricing'"):
        parse_settings("pricing", {}, "stack.yaml")
    with pytest.raises(ValidationError, match=r"component\n.*unknown component 'pricing'"):
        TradingServiceSpec.model_validate(
            {"component": "pricing", "image": "x", "resources": {"cpus": 2, "memory": "1Gi"}}
        )
    with pytest.raises(SystemExit):
        main(["pricing"])
    assert "invalid choice: 'pricing'" in capsys.readouterr().err
