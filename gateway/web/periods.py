"""The period a page shows, from its query string: `period`, `since`, `until`, `tz`.

`period` is `this_month` (default), `last_month`, `7d`, `30d`, `90d` or `custom` (with
`since` and `until` as YYYY-MM-DD, both days included). Days are calendar days in `tz` (an
IANA name, default UTC): the window runs from the first day's local midnight to the instant
before the local midnight that follows the last day, so a day on the page is the same day in
an export of the same period. "Last N days" ends today (local), today included.

`rollups_align` says whether every local midnight of the window falls on a whole UTC hour:
then day sums can be read from the hourly rollups; otherwise (zones such as Asia/Kolkata,
+05:30) they are read from raw events. A bad value raises ValueError naming the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIOD_LABELS = {
    "this_month": "This month",
    "last_month": "Last month",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "custom": "Custom range",
}
MAX_CUSTOM_DAYS = 400
_TICK = timedelta(microseconds=1)


def parse_zone(name: str | None) -> ZoneInfo:
    if not name:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"tz: unknown time zone {name!r} (use an IANA name such as Europe/Paris)"
        ) from None


def _day(raw: str | None, name: str) -> date:
    try:
        return date.fromisoformat(raw or "")
    except ValueError:
        raise ValueError(f"{name}: expected a date as YYYY-MM-DD") from None


@dataclass(frozen=True, slots=True)
class ViewPeriod:
    name: str
    tz: ZoneInfo
    first_day: date  # local, included
    last_day: date  # local, included

    @property
    def since(self) -> datetime:
        return self.midnight(self.first_day)

    @property
    def until(self) -> datetime:
        """The window's last instant (reports take [since, until], both included)."""
        return self.midnight(self.last_day + timedelta(days=1)) - _TICK

    @property
    def tz_name(self) -> str:
        return self.tz.key

    @property
    def label(self) -> str:
        span = f"{self.first_day:%d %b %Y} – {self.last_day:%d %b %Y}"
        return f"{PERIOD_LABELS[self.name]} ({span})"

    def midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(0), self.tz).astimezone(UTC)

    def days(self) -> list[date]:
        count = (self.last_day - self.first_day).days + 1
        return [self.first_day + timedelta(days=n) for n in range(count)]

    @property
    def rollups_align(self) -> bool:
        edges = [*self.days(), self.last_day + timedelta(days=1)]
        return all(
            self.midnight(day).minute == 0 and self.midnight(day).second == 0 for day in edges
        )

    def query(self) -> dict[str, str]:
        """The query parameters that select this period again."""
        params = {"period": self.name, "tz": self.tz_name}
        if self.name == "custom":
            params.update(since=self.first_day.isoformat(), until=self.last_day.isoformat())
        return params


def parse_period(query: Mapping[str, str], now: datetime) -> ViewPeriod:
    tz = parse_zone(query.get("tz"))
    name = query.get("period") or "this_month"
    today = now.astimezone(tz).date()
    month_start = today.replace(day=1)
    if name == "this_month":
        next_month = (month_start + timedelta(days=32)).replace(day=1)
        return ViewPeriod(name, tz, month_start, next_month - timedelta(days=1))
    if name == "last_month":
        last_end = month_start - timedelta(days=1)
        return ViewPeriod(name, tz, last_end.replace(day=1), last_end)
    if name in ("7d", "30d", "90d"):
        return ViewPeriod(name, tz, today - timedelta(days=int(name[:-1]) - 1), today)
    if name == "custom":
        first, last = _day(query.get("since"), "since"), _day(query.get("until"), "until")
        if last < first:
            raise ValueError("until: must not be before since")
        if (last - first).days + 1 > MAX_CUSTOM_DAYS:
            raise ValueError(f"until: a range covers at most {MAX_CUSTOM_DAYS} days")
        return ViewPeriod(name, tz, first, last)
    raise ValueError(f"period: expected one of {', '.join(PERIOD_LABELS)}")
