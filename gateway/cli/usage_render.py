"""How `tollbooth usage` prints its reports: a table for people, JSON and CSV for programs.

JSON is each report's `to_json()` (storage.reports.usage_queries, storage.reports.event_queries),
indented. CSV has one header row, then one row per model (summary), UTC day (daily),
(customer, project) (projects) or event (events, export); the report's totals are the
column sums, never an extra row. Cells: integers, money as exact decimal strings, "" for
null. `export` is streamed (`write_export`): it never holds the whole window in memory.
Nothing here touches the database or fails except on a closed output.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, TextIO

import asyncpg
import orjson

from gateway.cli.runtime import render_table, short_time
from storage.reports.event_queries import EventsPage, event_csv_values, event_json
from storage.reports.usage_queries import (
    DailyUsage,
    Period,
    ProjectsUsage,
    UsageSummary,
    UsageTotals,
    decimal_str,
)
from storage.usage.event import UsageEvent

TOTAL_COLUMNS = tuple(UsageTotals().to_json())
SUMMARY_CSV_COLUMNS = ("model", *TOTAL_COLUMNS)
DAILY_CSV_COLUMNS = ("date", *TOTAL_COLUMNS)
PROJECTS_CSV_COLUMNS = ("customer_id", "project_id", *TOTAL_COLUMNS)
EVENTS_CSV_COLUMNS = UsageEvent.COLUMNS
_TOTAL_HEADERS = (
    "REQUESTS",
    "INPUT",
    "OUTPUT",
    "CACHED IN",
    "CACHE WRITE",
    "REASONING",
    "COST USD",
    "PRICE USD",
    "UNPRICED",
    "ERRORS",
    "ESTIMATED",
)


def _cells(totals: UsageTotals) -> list[Any]:
    return [
        decimal_str(value) if name in ("cost_usd", "price_usd") else value
        for name, value in ((n, getattr(totals, n)) for n in TOTAL_COLUMNS)
    ]


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if cell is None else cell for cell in row] for row in rows)
    return buffer.getvalue()


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2) + "\n"


def _heading(period: Period, what: str) -> str:
    who = f"customer {period.customer_id}" if period.customer_id else "all customers"
    narrowed = [
        f"{name} {value}"
        for name, value in (("project", period.filters.project_id), ("model", period.filters.model))
        if value
    ]
    where = f" ({', '.join(narrowed)})" if narrowed else ""
    return (
        f"{what} of {who}{where}, last {period.period_days} days "
        f"({period.since:%Y-%m-%d %H:%M}Z to {period.until:%Y-%m-%d %H:%M}Z)\n\n"
    )


def _summary_period(summary: UsageSummary) -> Period:
    return Period(
        summary.customer_id, summary.period_days, summary.since, summary.until, summary.filters
    )


def render_summary(summary: UsageSummary, fmt: str) -> str:
    if fmt == "json":
        return _json(summary.to_json())
    rows = [[m.model, *_cells(m.totals)] for m in summary.by_model]
    if fmt == "csv":
        return _csv(SUMMARY_CSV_COLUMNS, rows)
    rows.append(["TOTAL", *_cells(summary.totals)])
    return _heading(_summary_period(summary), "usage") + render_table(
        ["MODEL", *_TOTAL_HEADERS], rows
    )


def render_daily(daily: DailyUsage, fmt: str) -> str:
    if fmt == "json":
        return _json(daily.to_json())
    rows = [[day.day.isoformat(), *_cells(day.totals)] for day in daily.days]
    if fmt == "csv":
        return _csv(DAILY_CSV_COLUMNS, rows)
    rows.append(["TOTAL", *_cells(daily.totals)])
    return _heading(daily.period, "daily usage") + render_table(["DATE", *_TOTAL_HEADERS], rows)


def render_projects(report: ProjectsUsage, fmt: str) -> str:
    if fmt == "json":
        return _json(report.to_json())
    rows = [[p.customer_id, p.project_id, *_cells(p.totals)] for p in report.projects]
    if fmt == "csv":
        return _csv(PROJECTS_CSV_COLUMNS, rows)
    rows.append(["TOTAL", None, *_cells(report.totals)])
    return _heading(report.period, "usage per project") + render_table(
        ["CUSTOMER", "PROJECT", *_TOTAL_HEADERS], rows
    )


def render_events(page: EventsPage, fmt: str) -> str:
    if fmt == "json":
        return _json(page.to_json())
    if fmt == "csv":
        return _csv(EVENTS_CSV_COLUMNS, [event_csv_values(row) for row in page.events])
    rows = [
        [
            short_time(row["created_at"]),
            str(row["id"]),
            row["customer_id"],
            row["project_id"],
            row["model"],
            row["status_code"],
            row["input_tokens"],
            row["output_tokens"],
            None if row["price_usd"] is None else decimal_str(row["price_usd"]),
            row["usage_source"],
        ]
        for row in page.events
    ]
    table = render_table(
        [
            "TIME",
            "ID",
            "CUSTOMER",
            "PROJECT",
            "MODEL",
            "STATUS",
            "INPUT",
            "OUTPUT",
            "PRICE USD",
            "USAGE",
        ],
        rows,
    )
    more = f"\nmore: --cursor {page.next_cursor}\n" if page.next_cursor else ""
    return _heading(page.period, f"newest {page.limit} events") + table + more


async def write_export(
    out: TextIO, period: Period, events: AsyncIterator[asyncpg.Record], fmt: str
) -> int:
    """Write every event from `events` to `out` as CSV or JSON; returns how many."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(EVENTS_CSV_COLUMNS)
        async for row in events:
            writer.writerow(event_csv_values(row))
            count += 1
        return count
    # One JSON object, streamed: the period's fields, then "events" one per line.
    head = orjson.dumps(period.to_json()).decode()
    out.write(head[:-1] + ',"events":[')
    async for row in events:
        out.write(("\n" if count == 0 else ",\n") + orjson.dumps(event_json(row)).decode())
        count += 1
    out.write("\n]}\n")
    return count
