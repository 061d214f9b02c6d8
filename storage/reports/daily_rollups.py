"""Daily and monthly usage rollups per (customer, model): how reads across customers use
them, and checks.

`usage_rollups_daily` (storage/schema/060_rollups_daily.sql) sums the hourly rollups of each
UTC day per customer and model, maintained by triggers on `usage_rollups_hourly` in the same
transaction; `usage_rollups_monthly` (062) sums the daily rows of each UTC calendar month,
maintained by triggers on `usage_rollups_daily`. So in any snapshot a month's row equals its
days, a day's its hours, and those the raw events (storage/reports/rollups.py). They make reads over
every customer cheap: a month is customers x models rows, or customers x days x models,
instead of one per customer, hour, project and model.

`daily_rows_sql` reads a window [since, until] (both included, microseconds) as the whole UTC
calendar months inside it from the monthly rollups, the other whole UTC days from the daily
rollups, and the partial days at its edges through `storage.reports.rollups.usage_rows_sql` (hourly
rollups, raw events for partial hours), in one SELECT of `customer_id, model, <ROW_COUNTS>,
<ROW_MONEY>`: its sums over any grouping by customer and/or model equal those of
`usage_rows_sql` over the same window, and so the reports'. A window whose `until` is later
than now reads the current day's and month's rows, which hold every event so far (no event
is ever later than now).

`verify_daily_rollups` compares the daily rows with the hourly rollups, and the monthly rows
with the daily ones, over whole days and months. Database errors are asyncpg's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from storage.reports.rollups import (
    ROW_COUNTS,
    ROW_MONEY,
    Params,
    UsageFilter,
    split_window,
    usage_rows_sql,
)

DAY = timedelta(days=1)
TICK = timedelta(microseconds=1)  # PostgreSQL's timestamp resolution
_COLUMNS = ROW_COUNTS + ROW_MONEY


def _floor_day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil_day(moment: datetime) -> datetime:
    floor = _floor_day(moment)
    return floor if floor == moment else floor + DAY


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _next_month(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


def _table_sql(
    table: str, column: str, first: date, end: date, params: Params, customer_id: str | None
) -> str:
    where = f"{column} >= {params.add(first)} AND {column} < {params.add(end)}"
    if customer_id is not None:
        where += f" AND customer_id = {params.add(customer_id)}"
    return f"SELECT customer_id, model, {', '.join(_COLUMNS)} FROM {table} WHERE {where}"


def _days_sql(first: date, end: date, params: Params, customer_id: str | None) -> list[str]:
    """The whole days [first, end): whole months from the monthly rollups, the rest daily."""
    month, month_end = first, end
    if first.day != 1:
        month = _next_month(first)
    month_end = _month_start(end)
    if month >= month_end:
        return [_table_sql("usage_rollups_daily", "day", first, end, params, customer_id)]
    parts = [_table_sql("usage_rollups_monthly", "month", month, month_end, params, customer_id)]
    if first < month:
        parts.append(_table_sql("usage_rollups_daily", "day", first, month, params, customer_id))
    if month_end < end:
        parts.append(_table_sql("usage_rollups_daily", "day", month_end, end, params, customer_id))
    return parts


def daily_rows_sql(
    since: datetime, until: datetime, params: Params, customer_id: str | None = None
) -> str:
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
    parts = _days_sql(first.date(), end.date(), params, customer_id)
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


_DAILY_BY_MONTH = (
    "SELECT customer_id, date_trunc('month', day::timestamp)::date AS day, model, "
    + ", ".join(f"sum({c}) AS {c}" for c in _COLUMNS)
    + " FROM usage_rollups_daily WHERE day >= $1 AND day < $2 GROUP BY 1, 2, 3"
)


async def verify_daily_rollups(
    pool: asyncpg.Pool, *, since: datetime, until: datetime
) -> list[DailyMismatch]:
    """Differences between daily rows and the hourly rollups over the whole UTC days covering
    [since, until), and between monthly rows and the daily ones over the whole months
    covering those days (a mismatch's `day` is then the month's first day)."""
    start, end = _floor_day(since), _ceil_day(until)
    key = ("day", "customer_id", "model")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        hourly = {tuple(r[k] for k in key): r for r in await conn.fetch(_HOURLY_BY_DAY, start, end)}
        daily = {
            tuple(r[k] for k in key): r
            for r in await conn.fetch(
                "SELECT * FROM usage_rollups_daily WHERE day >= $1 AND day < $2",
                start.date(),
                end.date(),
            )
        }
        first_month = _month_start(start.date())
        month_end = _next_month((end - DAY).date()) if end > start else first_month
        by_month = {
            tuple(r[k] for k in key): r
            for r in await conn.fetch(_DAILY_BY_MONTH, first_month, month_end)
        }
        monthly = {
            tuple(r[k] for k in key): r
            for r in await conn.fetch(
                "SELECT *, month AS day FROM usage_rollups_monthly WHERE month >= $1 AND "
                "month < $2",
                first_month,
                month_end,
            )
        }
    return _compare(daily, hourly) + _compare(monthly, by_month)


def _compare(
    have_rows: dict[tuple[Any, ...], asyncpg.Record],
    want_rows: dict[tuple[Any, ...], asyncpg.Record],
) -> list[DailyMismatch]:
    mismatches = []
    for found in sorted(want_rows.keys() | have_rows.keys()):
        for column in _COLUMNS:
            have = have_rows[found][column] if found in have_rows else 0
            want = want_rows[found][column] if found in want_rows else 0
            if have != want:
                day, customer_id, model = found
                mismatches.append(DailyMismatch(day, customer_id, model, column, have, want))
    return mismatches
