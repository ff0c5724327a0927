"""Freeze windows: daily windows in a timezone, and exchange sessions from exchange-calendars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeplane.api import FreezeWindow
from tradeplane.freeze import active_freeze

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def at(text: str, zone: ZoneInfo = NEW_YORK) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def daily(
    start: str, end: str, timezone: str = "America/New_York", days: list[str] | None = None
) -> FreezeWindow:
    return FreezeWindow(start=start, end=end, timezone=timezone, days=days or [])  # type: ignore[arg-type]


# -- daily windows --------------------------------------------------------------------------------------


def test_daily_window_holds_inside_and_names_its_end() -> None:
    freeze = active_freeze([daily("09:30", "16:00")], at("2025-06-03T12:00"))
    assert freeze is not None
    assert freeze.until == at("2025-06-03T16:00")
    assert freeze.description == "daily freeze 09:30-16:00 America/New_York"


@pytest.mark.parametrize("instant", ["2025-06-03T09:29", "2025-06-03T16:00", "2025-06-03T23:00"])
def test_daily_window_is_half_open(instant: str) -> None:
    assert active_freeze([daily("09:30", "16:00")], at(instant)) is None


def test_daily_window_is_evaluated_in_its_timezone() -> None:
    window = daily("08:00", "09:00", timezone="Europe/London")
    # 08:30 in London is 07:30 UTC in summer and 08:30 UTC in winter.
    assert active_freeze([window], datetime(2025, 6, 3, 7, 30, tzinfo=UTC)) is not None
    assert active_freeze([window], datetime(2025, 6, 3, 8, 30, tzinfo=UTC)) is None
    assert active_freeze([window], datetime(2025, 1, 7, 8, 30, tzinfo=UTC)) is not None


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    window = daily("22:00", "02:00", timezone="Europe/London", days=["Fri"])
    friday_night = active_freeze([window], at("2025-06-06T23:30", LONDON))
    saturday_small_hours = active_freeze([window], at("2025-06-07T01:30", LONDON))
    assert friday_night is not None and saturday_small_hours is not None
    assert saturday_small_hours.until == at("2025-06-07T02:00", LONDON)
    assert active_freeze([window], at("2025-06-07T23:30", LONDON)) is None
    assert active_freeze([window], at("2025-06-06T01:30", LONDON)) is None


def test_weekdays_restrict_a_window() -> None:
    window = daily("09:00", "17:00", days=["Mon", "Tue", "Wed", "Thu", "Fri"])
    assert active_freeze([window], at("2025-06-06T10:00")) is not None
    assert active_freeze([window], at("2025-06-07T10:00")) is None


def test_the_longest_of_overlapping_windows_wins() -> None:
    freeze = active_freeze([daily("09:00", "10:00"), daily("09:30", "16:00")], at("2025-06-03T09:45"))
    assert freeze is not None and freeze.until == at("2025-06-03T16:00")


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        active_freeze([daily("09:00", "10:00")], datetime(2025, 6, 3, 9, 30))


@given(
    start=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
    length=st.integers(min_value=1, max_value=24 * 60 - 1),
    instant=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
)
def test_inside_a_daily_window_means_it_started_within_its_length(
    start: datetime, length: int, instant: datetime
) -> None:
    end = (datetime.combine(datetime(2025, 1, 1), start) + timedelta(minutes=length)).time()
    window = daily(start.strftime("%H:%M"), end.strftime("%H:%M"), timezone="UTC")
    freeze = active_freeze([window], instant)
    minutes_since_start = (instant.hour * 60 + instant.minute - (start.hour * 60 + start.minute)) % (
        24 * 60
    ) + (instant.second + instant.microsecond / 1e6) / 60
    assert (freeze is not None) == (minutes_since_start < length)
    if freeze is not None:
        assert instant < freeze.until <= instant + timedelta(minutes=length)


# -- exchange sessions ------------------------------------------------------------------------------------


def test_regular_session_holds_from_bell_to_bell() -> None:
    window = FreezeWindow(calendar="XNYS")
    freeze = active_freeze([window], at("2025-06-03T09:30"))
    assert freeze is not None
    assert freeze.until == at("2025-06-03T16:00")
    assert freeze.description == "XNYS regular session of 2025-06-03"
    assert active_freeze([window], at("2025-06-03T09:29")) is None
    assert active_freeze([window], at("2025-06-03T16:00")) is None


def test_no_session_on_weekends_and_holidays() -> None:
    window = FreezeWindow(calendar="XNYS")
    assert active_freeze([window], at("2025-06-07T12:00")) is None
    assert active_freeze([window], at("2025-07-04T12:00")) is None


def test_early_close_ends_the_session_early() -> None:
    freeze = active_freeze([FreezeWindow(calendar="XNYS")], at("2025-11-28T12:00"))
    assert freeze is not None and freeze.until == at("2025-11-28T13:00")
    assert active_freeze([FreezeWindow(calendar="XNYS")], at("2025-11-28T13:30")) is None


def test_bells_hold_fifteen_minutes_either_side() -> None:
    opening = FreezeWindow(calendar="XNYS", session="open")
    closing = FreezeWindow(calendar="XNYS", session="close")
    assert active_freeze([opening], at("2025-06-03T09:15")) is not None
    assert active_freeze([opening], at("2025-06-03T09:44")) is not None
    assert active_freeze([opening], at("2025-06-03T09:45")) is None
    assert active_freeze([opening], at("2025-06-03T12:00")) is None
    freeze = active_freeze([closing], at("2025-06-03T16:10"))
    assert freeze is not None and freeze.until == at("2025-06-03T16:15")
    assert freeze.description == "XNYS closing bell of 2025-06-03"


# exchange-calendars' Hong Kong calendar uses pandas APIs that pandas deprecates.
@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
def test_a_lunch_break_is_inside_the_regular_session() -> None:
    hong_kong = ZoneInfo("Asia/Hong_Kong")
    assert active_freeze([FreezeWindow(calendar="XHKG")], at("2025-06-03T12:30", hong_kong)) is not None
