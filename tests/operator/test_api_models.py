"""The API models: the invalid corpus is refused in Python at the same field, with the same rule message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tradeplane import api, crd, quantity

CORPUS = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expected_error(path: Path) -> str:
    """The message the API server must return, from the file's `# error:` line."""
    for line in path.read_text().splitlines():
        if line.startswith("# error: "):
            return line.removeprefix("# error: ")
    raise AssertionError(f"{path.name} has no '# error:' line")


def field_of(message: str) -> str:
    """The field an API server message names: `spec.x[1].y: ...`, or an unknown field's quoted path."""
    if message.startswith("strict decoding error: unknown field "):
        return message.split('"')[1]
    return message.split(": ", 1)[0]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=[path.stem for path in CORPUS])
def test_invalid_manifest_is_refused_at_the_same_field(path: Path) -> None:
    message = expected_error(path)
    with pytest.raises(ValidationError) as refused:
        api.TradingService.model_validate(yaml.safe_load(path.read_text()))
    errors = refused.value.errors()
    assert field_of(message) in [api.field_path(error["loc"]) for error in errors]
    rule_messages = [error["msg"] for error in errors if error["type"] == "rule"]
    for rule_message in rule_messages:
        assert message.endswith(rule_message)


def test_every_rule_of_the_crd_is_exercised_by_the_corpus() -> None:
    """Each CEL rule in the CRD has a corpus manifest that the API server must refuse with its message."""
    messages = [expected_error(path) for path in CORPUS]
    rule_messages = list(_validation_messages(crd.crd()))
    assert len(rule_messages) >= 10
    for rule_message in rule_messages:
        assert any(message.endswith(rule_message) for message in messages), rule_message


def _validation_messages(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for validation in node.get("x-kubernetes-validations", []):
            yield validation["message"]
        for value in node.values():
            yield from _validation_messages(value)
    elif isinstance(node, list):
        for item in node:
            yield from _validation_messages(item)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("8Gi", "8Gi"),
        ("8192Mi", "8Gi"),
        ("1536Mi", "1536Mi"),
        ("1024Ki", "1Mi"),
        ("1000M", "1G"),
        ("1500", "1500"),
        ("8000", "8k"),
        ("0", "0"),
        ("0Gi", "0"),
        ("2048Gi", "2Ti"),
    ],
)
def test_canonical_quantity_matches_the_api_server_form(text: str, canonical: str) -> None:
    assert quantity.canonical_quantity(text) == canonical
    assert quantity.integer_quantity(canonical) == quantity.integer_quantity(text)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1m30s", 90), ("250ms", 0.25), ("2h", 7200)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert api.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "1.5s", "s", "30 s", "-1s"])
def test_parse_duration_refuses_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        api.parse_duration(text)


def test_defaults_fill_a_minimal_spec() -> None:
    spec = api.TradingServiceSpec.model_validate(
        {"component": "risk", "image": "svc:1", "resources": {"cpus": 2, "memory": "4Gi"}}
    )
    assert spec.wire_port == 7002
    assert spec.placement.pool == "trading"
    assert [step.weight for step in spec.rollout.steps] == [5, 25, 50]


def test_config_keeps_arbitrary_settings() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    config = schema["properties"]["spec"]["properties"]["config"]
    assert config["type"] == "object"
    assert config["x-kubernetes-preserve-unknown-fields"] is True
