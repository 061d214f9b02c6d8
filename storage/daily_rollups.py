"""Daily usage rollups per (customer, model): how reads across customers use them, and a check.

`usage_rollups_daily` (storage/schema/060_rollups_daily.sql) sums the hourly rollups of each
UTC day per customer and model, maintained by triggers on `usage_rollups_hourly` in the same
transaction, so in any snapshot a day's row equals its hours, which equal the raw events
(storage/rollups.py). It makes reads over every customer cheap: a month is at most
customers x days x models rows instead of one per customer, hour, project and model.

`daily_rows_sql` reads a window [since, until] (both included, microseconds) as the whole
UTC days inside it from the daily rollups, plus the partial days at its edges through
`storage.rollups.usage_rows_sql` (hourly rollups, raw events for partial hours), in one
SELECT of `customer_id, model, <ROW_COUNTS>, <ROW_MONEY>`: its sums over any grouping by
customer and/or model equal those of `usage_rows_sql` over the same window, and so the
reports'. A window whose `until` is later than now reads today's daily row, which holds
every event so far (no event is ever later than now).

`verify_daily_rollups` compares the daily rows with the hourly rollups over whole days.
Database errors are asyncpg's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg

from storage.rollups import ROW_COUNTS, ROW_MONEY, Params, UsageFilter, split_window, usage_rows_sql

DAY = timedelta(days=1)
TICK = timedelta(microseconds=1)  # PostgreSQL's timestamp resolution
_COLUMNS = ROW_COUNTS + ROW_MONEY


def _floor_day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil_day(moment: datetime) -> datetime:
    floor = _floor_day(moment)
    return floor if floor == moment else floor + DAY


def daily_rows_sql(since: datetime, until: datetime, params: Params,
                   customer_id: str | None = None) -> str:
    """One SELECT of `customer_id, model, <counts>, <money>` rows for [since, until]."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    if until < since:
        raise ValueError("until must not be before since")
    first, end = _ceil_day(since), _floor_day(until + TICK)
    columns = ", ".join(_COLUMNS)
    usage_filter = UsageFilter(customer_id)
    if first >= end:
        rows = usage_rows_sql(split_window(since, until), usage_filter, params)
        return f"SELECT customer_id, model, {columns} FROM ({rows}) AS edge"
    where = f"day >= {params.add(first.date())} AND day < {params.add(end.date())}"
    if customer_id is not None:
        where += f" AND customer_id = {params.add(customer_id)}"
    parts = [f"SELECT customer_id, model, {columns} FROM usage_rollups_daily WHERE {where}"]
    if since < first:
        head = usage_rows_sql(split_window(since, first - TICK), usage_filter, params)
        parts.append(f"SELECT customer_id, model, {columns} FROM ({head}) AS head")
    if end <= until:
        tail = usage_rows_sql(split_window(end, until), usage_filter, params)
        parts.append(f"SELECT customer_id, model, {columns} FROM ({tail}) AS tail")
    return "\nUNION ALL\n".join(parts)


@dataclass(frozen=True, slots=True)
class DailyMismatch:
    day: date
    customer_id: str
    model: str
    column: str
    daily: int | Decimal
    hourly: int | Decimal


_HOURLY_BY_DAY = (
    "SELECT customer_id, (hour AT TIME ZONE 'UTC')::date AS day, model, "
    + ", ".join(f"sum({c}) AS {c}" for c in _COLUMNS)
    + " FROM usage_rollups_hourly WHERE hour >= $1 AND hour < $2 GROUP BY 1, 2, 3"
)


async def verify_daily_rollups(
    pool: asyncpg.Pool, *, since: datetime, until: datetime
) -> list[DailyMismatch]:
    """Differences between daily rows and the hourly rollups, whole UTC days covering
    [since, until)."""
    start, end = _floor_day(since), _ceil_day(until)
    key = ("day", "customer_id", "model")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        hourly = {tuple(r[k] for k in key): r
                  for r in await conn.fetch(_HOURLY_BY_DAY, start, end)}
        daily = {tuple(r[k] for k in key): r for r in await conn.fetch(
            "SELECT * FROM usage_rollups_daily WHERE day >= $1 AND day < $2",
            start.date(), end.date())}
    mismatches = []
    for found in sorted(hourly.keys() | daily.keys()):
        for column in _COLUMNS:
            have = daily[found][column] if found in daily else 0
            want = hourly[found][column] if found in hourly else 0
            if have != want:
                day, customer_id, model = found
                mismatches.append(DailyMismatch(day, customer_id, model, column, have, want))
    return mismatches
