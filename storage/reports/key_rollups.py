"""Daily usage rollups per key: how per-key sums read them, and a check against raw events.

`usage_rollups_key_daily` (storage/schema/061_rollups_key_daily.sql) holds one row per
(customer, UTC day, key, the key's project), maintained by statement triggers on
`usage_events` in the same transaction as each write, so in any snapshot it equals the raw
events (retention aside: expired raw events stay counted, as in the hourly rollups).

`key_rows_sql` reads a window [since, until] (both included) as the whole UTC days inside it
from the rollups and the partial days at its edges from raw events, in one SELECT of
`key_id, <ROW_COUNTS>, <ROW_MONEY>`: sums per key equal those of the raw events of the window.
The rollups know customer and project but not model: with a model filter, every row is read
raw. `verify_key_rollups` compares the rollups with the raw rows over whole days. Database
errors are asyncpg's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg

from storage.reports.rollups import ROW_COUNTS, ROW_MONEY, Params, UsageFilter, filter_sql

DAY = timedelta(days=1)
TICK = timedelta(microseconds=1)
_COLUMNS = ROW_COUNTS + ROW_MONEY
_RAW_ROW = (
    "key_id, 1::bigint AS requests, (status_code >= 400)::int::bigint AS error_requests, "
    "(usage_source = 'estimated')::int::bigint AS estimated_requests, "
    "(price_usd IS NULL)::int::bigint AS unpriced_requests, input_tokens, output_tokens, "
    "cached_input_tokens, cache_write_tokens, reasoning_tokens, "
    "coalesce(cost_usd, 0)::numeric AS cost_usd, coalesce(price_usd, 0)::numeric AS price_usd"
)


def _floor_day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _ceil_day(moment: datetime) -> datetime:
    floor = _floor_day(moment)
    return floor if floor == moment else floor + DAY


def _raw(since: datetime, until: datetime, usage_filter: UsageFilter, params: Params) -> str:
    return (
        f"SELECT {_RAW_ROW} FROM usage_events WHERE created_at >= {params.add(since)} "
        f"AND created_at <= {params.add(until)}" + filter_sql(usage_filter, params)
    )


def key_rows_sql(
    since: datetime, until: datetime, usage_filter: UsageFilter, params: Params
) -> str:
    """One SELECT of `key_id, <counts>, <money>` rows for [since, until]."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    first, end = _ceil_day(since), _floor_day(until + TICK)
    if first >= end or usage_filter.model is not None:
        return _raw(since, until, usage_filter, params)
    where = f"day >= {params.add(first.date())} AND day < {params.add(end.date())}"
    for column, value in (
        ("customer_id", usage_filter.customer_id),
        ("project_id", usage_filter.project_id),
    ):
        if value is not None:
            where += f" AND {column} = {params.add(value)}"
    columns = ", ".join(_COLUMNS)
    parts = [f"SELECT key_id, {columns} FROM usage_rollups_key_daily WHERE {where}"]
    if since < first:
        parts.append(_raw(since, first - TICK, usage_filter, params))
    if end <= until:
        parts.append(_raw(end, until, usage_filter, params))
    return "\nUNION ALL\n".join(parts)


@dataclass(frozen=True, slots=True)
class KeyMismatch:
    day: date
    customer_id: str
    key_id: str
    project_id: str | None
    column: str
    rollup: int | Decimal
    raw: int | Decimal


_RAW_BY_KEY = (
    "SELECT customer_id, (created_at AT TIME ZONE 'UTC')::date AS day, key_id, project_id, "
    + ", ".join(f"sum({c}) AS {c}" for c in _COLUMNS)
    + f" FROM (SELECT customer_id, created_at, project_id, {_RAW_ROW} FROM usage_events "
    "WHERE created_at >= $1 AND created_at < $2) AS e GROUP BY 1, 2, 3, 4"
)


async def verify_key_rollups(
    pool: asyncpg.Pool, *, since: datetime, until: datetime
) -> list[KeyMismatch]:
    """Differences between the key rollups and the raw rows, whole UTC days covering
    [since, until) (where raw rows are still retained)."""
    start, end = _floor_day(since), _ceil_day(until)
    key = ("day", "customer_id", "key_id", "project_id")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        raw = {tuple(r[k] for k in key): r for r in await conn.fetch(_RAW_BY_KEY, start, end)}
        rolled = {
            tuple(r[k] for k in key): r
            for r in await conn.fetch(
                "SELECT * FROM usage_rollups_key_daily WHERE day >= $1 AND day < $2",
                start.date(),
                end.date(),
            )
        }
    mismatches = []
    for found in sorted(raw.keys() | rolled.keys(), key=lambda k: (k[0], k[1], k[2], k[3] or "")):
        for column in _COLUMNS:
            have = rolled[found][column] if found in rolled else 0
            want = raw[found][column] if found in raw else 0
            if have != want:
                day, customer_id, key_id, project_id = found
                mismatches.append(
                    KeyMismatch(day, customer_id, key_id, project_id, column, have, want)
                )
    return mismatches
