"""Read-side usage reports (docs/usage-storage.md): the summary, the daily
breakdown, usage per project.

Each report covers the last `days` days up to `now` (created_at in [now - days, now], UTC),
for one customer or all, optionally narrowed to one project and/or one model
(`UsageFilter`). Every event counts as a request, whatever its status code: provider errors
were forwarded and are recorded (docs/metering-and-pricing.md); `error_requests` says how many had
a status of 400 or more. Token counts are summed as integers and money as NUMERIC, arriving as exact
Decimals; nothing is rounded. An event without a price (`pricing.unknown_model:
allow_unpriced`) adds 0 to the money and is counted in `unpriced_requests`;
`estimated_requests` counts events whose usage the gateway estimated.

The reports read the hourly rollups for the whole hours of the window and raw events only
for the two partial hours at its ends (storage/reports/rollups.py), in one statement: the numbers
equal the raw rows. A window reaching past the raw-event retention still counts the
retained rollups of those hours (the first partial hour then counts nothing).

`to_json()` of each report is its stable JSON shape (docs/usage-storage.md): money as
decimal strings ("0.0123", "0"). Bad arguments raise ValueError; database errors pass
through unchanged (asyncpg's).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, NotRequired, TypedDict, Unpack

import asyncpg

from storage.reports.rollups import (
    ROW_COUNTS,
    ROW_MONEY,
    Params,
    UsageFilter,
    split_window,
    usage_rows_sql,
)

MAX_DAYS = 3660


def decimal_str(value: Decimal) -> str:
    """An exact decimal string without exponent or trailing zeros: "1.5", "0", "0.0000123"."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def report_window(days: int, now: datetime | None) -> tuple[datetime, datetime]:
    """(since, until) of a report over the last `days` days up to `now` (default: now)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}, got {days}")
    until = now if now is not None else datetime.now(UTC)
    if until.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return until - timedelta(days=days), until


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    price_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0
    error_requests: int = 0
    estimated_requests: int = 0

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> UsageTotals:
        return cls(**{name: row[name] for name in ROW_COUNTS + ROW_MONEY})

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            **{name: getattr(self, name) + getattr(other, name) for name in ROW_COUNTS + ROW_MONEY}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": decimal_str(self.cost_usd),
            "price_usd": decimal_str(self.price_usd),
            "unpriced_requests": self.unpriced_requests,
            "error_requests": self.error_requests,
            "estimated_requests": self.estimated_requests,
        }


def _sum(items: list[Any]) -> UsageTotals:
    return sum((item.totals for item in items), UsageTotals())


@dataclass(frozen=True, slots=True)
class Period:
    """The part every report shares: whose usage, over which window, narrowed how."""

    customer_id: str | None
    period_days: int
    since: datetime
    until: datetime
    filters: UsageFilter

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "period_days": self.period_days,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "filters": self.filters.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str
    totals: UsageTotals

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, **self.totals.to_json()}


@dataclass(frozen=True, slots=True)
class UsageSummary:
    customer_id: str | None
    period_days: int
    since: datetime
    until: datetime
    totals: UsageTotals
    by_model: list[ModelUsage]
    filters: UsageFilter = UsageFilter()  # noqa: RUF009 (frozen: safe to share)

    def to_json(self) -> dict[str, Any]:
        """The summary shape of docs/usage-storage.md, plus the other token kinds and counts, the
        window and the filters."""
        return {
            "customer_id": self.customer_id,
            "period_days": self.period_days,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "filters": self.filters.to_json(),
            **self.totals.to_json(),
            "by_model": [model.to_json() for model in self.by_model],
        }


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: date  # a UTC calendar day
    totals: UsageTotals

    def to_json(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), **self.totals.to_json()}


@dataclass(frozen=True, slots=True)
class DailyUsage:
    period: Period
    totals: UsageTotals
    days: list[DayUsage]  # every UTC day the window touches, oldest first, zeros included

    def to_json(self) -> dict[str, Any]:
        return {
            **self.period.to_json(),
            **self.totals.to_json(),
            "days": [day.to_json() for day in self.days],
        }


@dataclass(frozen=True, slots=True)
class ProjectUsage:
    customer_id: str
    project_id: str | None  # None: keys without a project
    totals: UsageTotals

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "project_id": self.project_id,
            **self.totals.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ProjectsUsage:
    period: Period
    totals: UsageTotals
    projects: list[ProjectUsage]  # by customer_id, then project_id (no project first)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.period.to_json(),
            **self.totals.to_json(),
            "projects": [project.to_json() for project in self.projects],
        }


_SUMS = (
    ", ".join(f"sum({name})::bigint AS {name}" for name in ROW_COUNTS)
    + ", "
    + ", ".join(f"sum({name})::numeric AS {name}" for name in ROW_MONEY)
)


async def _grouped(
    pool: asyncpg.Pool, period: Period, keys: tuple[str, ...], order: str
) -> list[asyncpg.Record]:
    """Usage rows of `period` summed per `keys` (SQL over the columns of usage_rows_sql)."""
    params = Params()
    rows = usage_rows_sql(split_window(period.since, period.until), period.filters, params)
    positions = ", ".join(str(n) for n in range(1, len(keys) + 1))
    query = (
        f"SELECT {', '.join(keys)}, {_SUMS} FROM ({rows}) AS u "
        f"GROUP BY {positions} HAVING sum(requests) <> 0 ORDER BY {order}"
    )
    return list(await pool.fetch(query, *params.values))


def report_period(
    days: int,
    customer_id: str | None,
    project_id: str | None = None,
    model: str | None = None,
    now: datetime | None = None,
) -> Period:
    """The window and filters of a report (raises ValueError for a bad `days` or `now`)."""
    since, until = report_window(days, now)
    return Period(customer_id, days, since, until, UsageFilter(customer_id, project_id, model))


class ReportScope(TypedDict):
    """A report's arguments by name, as `report_period` takes them."""

    days: int
    customer_id: str | None
    project_id: NotRequired[str | None]
    model: NotRequired[str | None]
    now: NotRequired[datetime | None]


async def usage_summary(pool: asyncpg.Pool, **scope: Unpack[ReportScope]) -> UsageSummary:
    """Totals and per-model usage of the last `days` days up to `now` (default: now, UTC)."""
    return await summary_of(pool, report_period(**scope))


async def usage_daily(pool: asyncpg.Pool, **scope: Unpack[ReportScope]) -> DailyUsage:
    """Usage per UTC day over the window; its days add up to the summary of the same window."""
    return await daily_of(pool, report_period(**scope))


async def usage_projects(pool: asyncpg.Pool, **scope: Unpack[ReportScope]) -> ProjectsUsage:
    """Usage per (customer, project) over the window."""
    return await projects_of(pool, report_period(**scope))


async def summary_of(pool: asyncpg.Pool, period: Period) -> UsageSummary:
    """The summary of one period."""
    rows = await _grouped(pool, period, ("model",), "model")
    by_model = [ModelUsage(row["model"], UsageTotals.from_row(row)) for row in rows]
    return UsageSummary(
        customer_id=period.customer_id,
        period_days=period.period_days,
        since=period.since,
        until=period.until,
        totals=_sum(by_model),
        by_model=by_model,
        filters=period.filters,
    )


async def daily_of(pool: asyncpg.Pool, period: Period) -> DailyUsage:
    """Usage per UTC day of one period."""
    rows = await _grouped(pool, period, ("date_trunc('day', at, 'UTC') AS day",), "day")
    found = {row["day"].astimezone(UTC).date(): UsageTotals.from_row(row) for row in rows}
    first, last = period.since.astimezone(UTC).date(), period.until.astimezone(UTC).date()
    daily = [
        DayUsage(day, found.get(day, UsageTotals()))
        for day in (first + timedelta(days=n) for n in range((last - first).days + 1))
    ]
    return DailyUsage(period=period, totals=_sum(daily), days=daily)


async def projects_of(pool: asyncpg.Pool, period: Period) -> ProjectsUsage:
    """Usage per (customer, project) of one period."""
    rows = await _grouped(
        pool, period, ("customer_id", "project_id"), "customer_id, project_id NULLS FIRST"
    )
    projects = [
        ProjectUsage(row["customer_id"], row["project_id"], UsageTotals.from_row(row))
        for row in rows
    ]
    return ProjectsUsage(period=period, totals=_sum(projects), projects=projects)


async def usage_totals(
    pool: asyncpg.Pool,
    *,
    since: datetime,
    until: datetime,
    usage_filter: UsageFilter,
) -> UsageTotals:
    """Totals of [since, until] for anything that needs one number per window, e.g. quota
    reseeding from the month's start: a `since` on an hour boundary reads rollups only,
    except for the hour holding `until`."""
    period = Period(usage_filter.customer_id, 0, since, until, usage_filter)
    rows = await _grouped(pool, period, ("1 AS all_rows",), "1")
    return UsageTotals.from_row(rows[0]) if rows else UsageTotals()
