"""Settings and environment: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tradeplane_services.config import ConfigError, load_settings, read_environment
from tradeplane_services.protocol import KillSwitchState
from tradeplane_services.settings import RiskSettings
from tradeplane_services.stack import load_stack_config


def test_a_missing_file_means_defaults(tmp_path: Path) -> None:
    settings = load_settings("risk", tmp_path / "absent.yaml")
    assert settings == RiskSettings()


def test_keys_and_values_are_checked_and_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"maxOrderQuantity": 0, "priceColar": 5, "killSwitch": "PAUSED"}))
    with pytest.raises(ConfigError) as caught:
        load_settings("risk", path)
    message = str(caught.value)
    assert str(path) in message
    assert "maxOrderQuantity" in message and "priceColar" in message and "killSwitch" in message


def test_the_kill_switch_is_written_by_name(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("killSwitch: reducing\n")
    assert load_settings("risk", path).killSwitch is KillSwitchState.REDUCING  # type: ignore[attr-defined]


def test_bad_symbols_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"symbols": {"aapl": 190.0}}))
    with pytest.raises(ConfigError, match="symbols"):
        load_settings("order", path)


def test_latency_injection_from_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("latencyInjectionMicros: 10\n")
    monkeypatch.setenv("TRADEPLANE_INJECT_LATENCY_US", "250")
    assert load_settings("execution", path).latencyInjectionMicros == 250


def test_environment_addresses_and_defaults() -> None:
    environment = read_environment(
        "order",
        None,
        {
            "TRADEPLANE_CONFIG": "/etc/x.yaml",
            "TRADEPLANE_REVISION": "abc123",
            "TRADEPLANE_BIND": "127.1.0.5",
            "TRADEPLANE_RISK_ADDR": "risk.trading.svc:7002",
            "TRADEPLANE_MARKET_DATA_GROUP": "239.1.2.3:17003",
        },
    )
    assert (environment.port, environment.metrics_port, environment.revision) == (7001, 9100, "abc123")
    assert str(environment.peer("risk")) == "risk.trading.svc:7002"
    assert environment.peer("execution") is None
    assert str(environment.market_data_group) == "239.1.2.3:17003"
    assert read_environment("position", None, {}).port == 7005


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TRADEPLANE_PORT", "70000"), ("TRADEPLANE_RISK_ADDR", "risk"), ("TRADEPLANE_METRICS_PORT", "x")],
)
def test_bad_environment_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        read_environment("order", None, {variable: value})


def test_stack_config_sections_are_validated_per_component(tmp_path: Path) -> None:
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump({"risk": {"maxOrderQuantity": 5}, "order": {"riskTimeoutMillis": 50}}))
    sections = load_stack_config(path)
    assert sections["risk"] == {"maxOrderQuantity": 5} and sections["position"] == {}
    path.write_text(yaml.safe_dump({"risky": {}}))
    with pytest.raises(ConfigError, match="risky"):
        load_stack_config(path)
    path.write_text(yaml.safe_dump({"position": {"snapshotEveryEvents": 0}}))
    with pytest.raises(ConfigError, match="position: snapshotEveryEvents"):
        load_stack_config(path)


def test_order_without_its_peers_says_which_variable_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tradeplane_services", "order", "--config", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TRADEPLANE_BIND": "127.77.0.1", "TRADEPLANE_KEYS_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "TRADEPLANE_RISK_ADDR" in result.stderr


def test_a_service_without_session_keys_refuses_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "keys"
    result = subprocess.run(
        [sys.executable, "-m", "tradeplane_services", "risk", "--config", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "TRADEPLANE_BIND": "127.77.0.1", "TRADEPLANE_KEYS_DIR": str(missing)},
    )
    assert result.returncode == 2
    assert f"TRADEPLANE_KEYS_DIR={missing}: no such directory" in result.stderr
