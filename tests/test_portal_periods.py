"""The portal's periods: calendar days in a time zone, and when hourly rollups can serve them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.web.periods import parse_period

NOW = datetime(2026, 3, 1, 0, 30, tzinfo=UTC)  # half an hour into a month, UTC


def test_this_month_is_the_calendar_month_of_the_zone() -> None:
    utc = parse_period({}, NOW)
    assert (utc.first_day, utc.last_day) == (date(2026, 3, 1), date(2026, 3, 31))
    assert utc.since == datetime(2026, 3, 1, tzinfo=UTC)
    assert utc.until == datetime(2026, 4, 1, tzinfo=UTC) - timedelta(microseconds=1)
    # 00:30 UTC on March 1st is still February 28th in New York.
    ny = parse_period({"tz": "America/New_York"}, NOW)
    assert (ny.first_day, ny.last_day) == (date(2026, 2, 1), date(2026, 2, 28))
    assert ny.since == datetime(2026, 2, 1, 5, tzinfo=UTC)
    last = parse_period({"period": "last_month"}, NOW)
    assert (last.first_day, last.last_day) == (date(2026, 2, 1), date(2026, 2, 28))


def test_last_days_end_today_and_custom_ranges_include_both_days() -> None:
    week = parse_period({"period": "7d"}, NOW)
    assert (week.first_day, week.last_day) == (date(2026, 2, 23), date(2026, 3, 1))
    assert len(week.days()) == 7
    custom = parse_period(
        {"period": "custom", "since": "2025-10-05", "until": "2025-10-26", "tz": "Europe/Paris"},
        NOW,
    )
    assert custom.since == datetime(2025, 10, 4, 22, tzinfo=UTC)  # CEST, UTC+2
    assert custom.until == datetime(2025, 10, 26, 23, tzinfo=UTC) - timedelta(microseconds=1)
    assert len(custom.days()) == 22  # the day clocks go back has 25 hours, still one day
    assert custom.query() == {
        "period": "custom",
        "tz": "Europe/Paris",
        "since": "2025-10-05",
        "until": "2025-10-26",
    }


def test_rollups_serve_whole_hour_zones_only() -> None:
    assert parse_period({"tz": "Europe/Paris"}, NOW).rollups_align
    assert parse_period({"tz": "UTC"}, NOW).rollups_align
    assert not parse_period({"tz": "Asia/Kolkata"}, NOW).rollups_align  # +05:30
    assert not parse_period({"tz": "Australia/Adelaide"}, NOW).rollups_align


@pytest.mark.parametrize(
    "query, name",
    [
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"tz": "../../etc/passwd"}, "tz"),
        ({"period": "forever"}, "period"),
        ({"period": "custom", "since": "2025-10-05"}, "until"),
        ({"period": "custom", "since": "2025-10-05", "until": "2025-10-01"}, "until"),
        ({"period": "custom", "since": "2020-01-01", "until": "2025-01-01"}, "until"),
    ],
)
def test_bad_parameters_are_named(query: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}:"):
        parse_period(query, NOW)
