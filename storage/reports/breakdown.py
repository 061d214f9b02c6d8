"""Usage broken down for the web pages: per local day and model or project, per key, and
the events list with the filters the pages offer (status and key besides project and model).

Day sums read `storage.reports.rollups.usage_rows_sql` (hourly rollups plus the raw partial hours,
the
same rows the CLI's reports and /usage/* read), grouped by the day of each row's hour in the
page's time zone. That is exact only when every local midnight of the window is a whole UTC
hour (`from_rollups=True`, the caller decides: gateway.web.periods.ViewPeriod.rollups_align);
otherwise the rows come from raw events alone (`from_rollups=False`), which is exact for any
zone and costs a scan of the window's raw rows (and counts nothing older than the raw-event
retention). Per-key sums read the daily key rollups for whole UTC days and raw events for
the edges (storage.reports.key_rollups): the hourly rollups have no key_id. Per (day, key), the key
rollups serve windows of whole UTC days shown in UTC; other zones read raw events.

`events_page` pages newest first by (created_at, id) with `EventCursor`, as
`usage_event_queries.usage_events_page` does, using the (customer_id, created_at) index;
`export_rows` streams the same selection oldest first. Both return every column of
`UsageEvent.COLUMNS`. Database errors are asyncpg's, unchanged; a bad cursor is ValueError.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import asyncpg

from storage.reports.event_queries import events_oldest_first, newest_events
from storage.reports.key_rollups import key_rows_sql
from storage.reports.rollups import (
    ROW_COUNTS,
    ROW_MONEY,
    Params,
    UsageFilter,
    WindowSplit,
    filter_sql,
    split_window,
    usage_rows_sql,
)
from storage.reports.usage_queries import UsageTotals

StatusFilter = Literal["ok", "error"] | None
GroupBy = Literal["model", "project_id"]

_SUMS = ", ".join(
    [f"sum({name})::bigint AS {name}" for name in ROW_COUNTS]
    + [f"sum({name})::numeric AS {name}" for name in ROW_MONEY]
)


@dataclass(frozen=True, slots=True)
class DayGroupUsage:
    day: date  # a calendar day in the page's time zone
    group: str | None  # the model, or the project (None: keys without a project)
    totals: UsageTotals


@dataclass(frozen=True, slots=True)
class KeyUsage:
    key_id: str
    totals: UsageTotals


async def usage_by_day(
    pool: asyncpg.Pool,
    *,
    since: datetime,
    until: datetime,
    usage_filter: UsageFilter,
    tz_name: str,
    group_by: GroupBy,
    from_rollups: bool,
) -> list[DayGroupUsage]:
    """Sums of [since, until] per (local day, model or project), by day then group."""
    params = Params()
    split = split_window(since, until) if from_rollups else WindowSplit(since, until, until, until)
    rows_sql = usage_rows_sql(split, usage_filter, params)
    tz = params.add(tz_name)
    query = (
        f"SELECT (at AT TIME ZONE {tz})::date AS day, {group_by} AS grp, {_SUMS} "
        f"FROM ({rows_sql}) AS u GROUP BY 1, 2 HAVING sum(requests) <> 0 "
        "ORDER BY 1, 2 NULLS FIRST"
    )
    rows = await pool.fetch(query, *params.values)
    return [DayGroupUsage(row["day"], row["grp"], UsageTotals.from_row(row)) for row in rows]


def _where(
    since: datetime,
    until: datetime,
    usage_filter: UsageFilter,
    params: Params,
    status: StatusFilter = None,
    key_id: str | None = None,
) -> str:
    where = f"created_at >= {params.add(since)} AND created_at <= {params.add(until)}" + filter_sql(
        usage_filter, params
    )
    if status == "ok":
        where += " AND status_code < 400"
    elif status == "error":
        where += " AND status_code >= 400"
    if key_id is not None:
        where += f" AND key_id = {params.add(key_id)}"
    return where


_RAW_KEY_ROW = (
    "1::bigint AS requests, (status_code >= 400)::int::bigint AS error_requests, "
    "(usage_source = 'estimated')::int::bigint AS estimated_requests, "
    "(price_usd IS NULL)::int::bigint AS unpriced_requests, input_tokens, output_tokens, "
    "cached_input_tokens, cache_write_tokens, reasoning_tokens, "
    "coalesce(cost_usd, 0)::numeric AS cost_usd, coalesce(price_usd, 0)::numeric AS price_usd"
)
_TICK = timedelta(microseconds=1)


def _whole_utc_days(since: datetime, until: datetime, tz_name: str) -> bool:
    """Whether [since, until] is whole UTC days and `tz_name` is UTC all along (its days are
    UTC days), so the daily key rollups hold exactly its days."""
    start, end = since.astimezone(UTC), (until + _TICK).astimezone(UTC)
    if start.time() != time(0) or end.time() != time(0):
        return False
    zone = ZoneInfo(tz_name)
    return all(
        (start + timedelta(days=n)).astimezone(zone).utcoffset() == timedelta(0)
        for n in range((end - start).days + 1)
    )


async def usage_by_day_and_key(
    pool: asyncpg.Pool, *, since: datetime, until: datetime, usage_filter: UsageFilter, tz_name: str
) -> list[DayGroupUsage]:
    """Sums of [since, until] per (local day, key_id), by day then key. A window of whole UTC
    days (UTC and its aliases) without a model filter reads the daily key rollups; any other
    reads raw events, grouped by the day in `tz_name`."""
    params = Params()
    if usage_filter.model is None and _whole_utc_days(since, until, tz_name):
        where = (
            f"day >= {params.add(since.astimezone(UTC).date())} "
            f"AND day <= {params.add(until.astimezone(UTC).date())}"
        )
        for column, value in (
            ("customer_id", usage_filter.customer_id),
            ("project_id", usage_filter.project_id),
        ):
            if value is not None:
                where += f" AND {column} = {params.add(value)}"
        query = (
            f"SELECT day, key_id AS grp, {_SUMS} FROM usage_rollups_key_daily "
            f"WHERE {where} GROUP BY 1, 2 HAVING sum(requests) <> 0 ORDER BY 1, 2"
        )
    else:
        tz = params.add(tz_name)
        rows_sql = (
            f"SELECT (created_at AT TIME ZONE {tz})::date AS day, key_id, "
            f"{_RAW_KEY_ROW} FROM usage_events "
            f"WHERE {_where(since, until, usage_filter, params)}"
        )
        query = (
            f"SELECT day, key_id AS grp, {_SUMS} FROM ({rows_sql}) AS e GROUP BY 1, 2 ORDER BY 1, 2"
        )
    rows = await pool.fetch(query, *params.values)
    return [DayGroupUsage(row["day"], row["grp"], UsageTotals.from_row(row)) for row in rows]


async def usage_by_key(
    pool: asyncpg.Pool, *, since: datetime, until: datetime, usage_filter: UsageFilter
) -> list[KeyUsage]:
    """Sums of [since, until] per key (largest spend first): the daily key rollups for whole
    UTC days, raw events for the edges (storage.reports.key_rollups)."""
    params = Params()
    rows_sql = key_rows_sql(since, until, usage_filter, params)
    query = (
        f"SELECT key_id, {_SUMS} FROM ({rows_sql}) AS k "
        "GROUP BY key_id HAVING sum(requests) <> 0 ORDER BY price_usd DESC, key_id"
    )
    rows = await pool.fetch(query, *params.values)
    return [KeyUsage(row["key_id"], UsageTotals.from_row(row)) for row in rows]


async def events_page(
    pool: asyncpg.Pool,
    *,
    since: datetime,
    until: datetime,
    usage_filter: UsageFilter,
    status: StatusFilter = None,
    key_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[asyncpg.Record], str | None]:
    """The newest `limit` events of the selection after `cursor`, and the next cursor."""
    params = Params()
    where = _where(since, until, usage_filter, params, status, key_id)
    return await newest_events(pool, where, params, limit, cursor)


async def export_rows(
    pool: asyncpg.Pool,
    *,
    since: datetime,
    until: datetime,
    usage_filter: UsageFilter,
    status: StatusFilter = None,
    key_id: str | None = None,
) -> AsyncGenerator[asyncpg.Record, None]:
    """Every event of the selection, oldest first, streamed through a server-side cursor."""
    params = Params()
    where = _where(since, until, usage_filter, params, status, key_id)
    async for row in events_oldest_first(pool, where, params):
        yield row
