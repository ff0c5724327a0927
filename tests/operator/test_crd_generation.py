"""The committed CRD files are exactly what the generator writes from the models."""

from __future__ import annotations

import pytest

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
