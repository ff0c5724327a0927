"""Freeze windows: times when a rollout holds its weight and never promotes. Rollback is always allowed.

Two kinds, both evaluated at a given instant with no I/O:

- a daily window, `start`-`end` (HH:MM) in an IANA timezone, optionally on some weekdays only; a window
  whose end is not after its start runs over midnight, and `days` names the day it starts on;
- an exchange session from `exchange-calendars` (holidays and early closes included): `regular` is the
  whole session from the opening to the closing bell (a lunch break included: trading resumes within
  it), `open` and `close` are the 15 minutes either side of that bell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from tradeplane.api import FreezeWindow

BELL_MARGIN = timedelta(minutes=15)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class Freeze:
    """The window in force at an instant, and when it ends."""

    description: str
    until: datetime


def active_freeze(windows: Sequence[FreezeWindow], now: datetime) -> Freeze | None:
    """The freeze in force at `now` (the one lasting longest when several overlap), or None.

    Timezones and calendars are known ones (the models accept no others, see tradeplane/names.py).
    Raises ValueError naming the field when a calendar has no sessions around `now`.
    """
    if now.tzinfo is None:
        raise ValueError("freeze windows are evaluated at an aware instant, got a naive datetime")
    freezes = [
        freeze
        for index, window in enumerate(windows)
        if (freeze := _window_freeze(window, f"freezeWindows[{index}]", now)) is not None
    ]
    return max(freezes, key=lambda freeze: freeze.until, default=None)


def _window_freeze(window: FreezeWindow, path: str, now: datetime) -> Freeze | None:
    if window.calendar is not None:
        return _session_freeze(window.calendar, window.session, path, now)
    if window.start is None or window.end is None:
        raise ValueError(f"{path}: a freeze window names either a calendar or both start and end")
    return _daily_freeze(window, window.start, window.end, now)


def _daily_freeze(window: FreezeWindow, start_text: str, end_text: str, now: datetime) -> Freeze | None:
    """`start_text` and `end_text` are the window's, known to be set."""
    zone = ZoneInfo(window.timezone)
    start, end = _clock(start_text), _clock(end_text)
    overnight = end <= start
    today = now.astimezone(zone).date()
    for day in (today - timedelta(days=1), today):
        if window.days and WEEKDAYS[day.weekday()] not in window.days:
            continue
        opens = _local(day, start, zone)
        closes = _local(day + timedelta(days=1) if overnight else day, end, zone)
        if opens <= now < closes:
            days = f" on {','.join(window.days)}" if window.days else ""
            return Freeze(f"daily freeze {window.start}-{window.end} {window.timezone}{days}", closes)
    return None


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _local(day: date, clock: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=zone)


def _session_freeze(code: str, session: str, path: str, now: datetime) -> Freeze | None:
    # Imported on first use: exchange-calendars brings pandas (~50 MiB, ~0.7 s), which only exchange
    # sessions need, not every `tradeplane` command nor an operator without calendar freezes.
    import exchange_calendars
    import pandas as pd

    calendar = exchange_calendars.get_calendar(code)
    day = pd.Timestamp(now).tz_convert("UTC").tz_localize(None).normalize()
    if not calendar.first_session <= day <= calendar.last_session:
        raise ValueError(f"{path}.calendar: {code} has no sessions around {now.isoformat()}")
    around = calendar.sessions_in_range(
        max(day - pd.Timedelta(days=3), calendar.first_session),
        min(day + pd.Timedelta(days=3), calendar.last_session),
    )
    for label in around:
        opens = calendar.session_open(label).to_pydatetime()
        closes = calendar.session_close(label).to_pydatetime()
        if session == "regular":
            start, end = opens, closes
        else:
            bell = opens if session == "open" else closes
            start, end = bell - BELL_MARGIN, bell + BELL_MARGIN
        if start <= now < end:
            what = {"regular": "regular session", "open": "opening bell", "close": "closing bell"}[session]
            return Freeze(f"{code} {what} of {label.date().isoformat()}", end)
    return None
