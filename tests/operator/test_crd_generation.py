"""The committed CRD files are exactly what the generator writes from the models."""

from __future__ import annotations

import pytest
import yaml

from tradeplane import crd


@pytest.mark.parametrize("path", crd.CRD_PATHS, ids=lambda path: str(path.relative_to(crd.REPO_ROOT)))
def test_committed_crd_is_current(path: object) -> None:
    assert path.read_text() == crd.render_yaml(), (  # type: ignore[attr-defined]
        f"{path} is stale: run `python -m tradeplane.crd` and commit the result"
    )


def test_committed_names_match_the_installed_tzdata_and_exchange_calendars() -> None:
    assert crd.NAMES_PATH.read_text() == crd.render_names(), (
        f"{crd.NAMES_PATH} is stale: run `python -m tradeplane.crd` and commit the result"
    )


def test_exclusive_bounds_take_the_openapi_v3_0_form_kubernetes_accepts() -> None:
    """pydantic writes gt/lt as JSON Schema's numbers; the API server only takes booleans there."""

    def bounds(node: object) -> list[object]:
        if isinstance(node, dict):
            found = [value for key, value in node.items() if key in ("exclusiveMinimum", "exclusiveMaximum")]
            return found + [bound for child in node.values() for bound in bounds(child)]
        if isinstance(node, list):
            return [bound for child in node for bound in bounds(child)]
        return []

    found = bounds(yaml.safe_load(crd.render_yaml()))
    assert found and all(value is True for value in found)
