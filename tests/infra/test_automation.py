"""The engine runner's own input: a program named by a reference that is not a function is refused."""

from __future__ import annotations

import pytest

from tradeplane_infra import automation, program


def test_the_default_program_is_the_entry_points() -> None:
    assert automation.load_program(automation.DEFAULT_PROGRAM) is program.main


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("tradeplane_infra.program", "is not of the form module:function"),
        ("tradeplane_infra.program:absent", "has no attribute 'absent'"),
        ("tradeplane_infra.absent:main", "No module named 'tradeplane_infra.absent'"),
    ],
)
def test_a_bad_program_reference_is_refused_naming_the_option(
    reference: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        automation.main(["preview", "--stack", "local", "--program", reference])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"--program: {reference!r}" in error and message in error, error
