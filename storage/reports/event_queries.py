"""Raw usage events read back: a page of the newest events, and a streamed export.

Both read `usage_events` itself (per-event detail has no rollup), over a report window
(`storage.reports.usage_queries.report_period`: the last `days` days up to `now`) narrowed by
`UsageFilter`, so the month partitions outside the window are never scanned.

`usage_events_page` returns at most `limit` events (1..MAX_EVENTS_LIMIT), newest first,
ordered by (created_at, id) descending, and `next_cursor`, an opaque string that continues
the listing after the last event (None when nothing is left). Pages never repeat or skip
an event, even with equal timestamps. `export_events` yields every event of the window,
oldest first, through a server-side cursor: memory stays bounded whatever the window holds.

`event_json` / `event_csv_values` are the documented per-event shapes: every column of
`usage_events` (`storage.usage.event.UsageEvent`), money as decimal strings (null when
unpriced), times in ISO 8601 UTC. A malformed cursor raises ValueError; database errors are
asyncpg's, unchanged.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from storage.reports.rollups import Params, filter_sql
from storage.reports.usage_queries import Period, decimal_str
from storage.usage.event import UsageEvent

MAX_EVENTS_LIMIT = 1000
DEFAULT_EVENTS_LIMIT = 50
EXPORT_PREFETCH = 2000
_COLUMNS = ", ".join(UsageEvent.COLUMNS)


@dataclass(frozen=True, slots=True)
class EventCursor:
    """Where a page stopped: the (created_at, id) of its last event."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> EventCursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            moment, _, event_id = raw.partition("|")
            created_at = datetime.fromisoformat(moment)
            cursor = cls(created_at, uuid.UUID(event_id))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError("cursor is not one this gateway issued") from None
        if created_at.tzinfo is None:
            raise ValueError("cursor is not one this gateway issued")
        return cursor


def _text(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def event_json(row: asyncpg.Record, *, with_metadata: bool = True) -> dict[str, Any]:
    """One event as JSON: every `usage_events` column; `metadata` only `with_metadata`."""
    return {
        column: _text(row[column])
        for column in UsageEvent.COLUMNS
        if with_metadata or column != "metadata"
    }


def event_csv_values(row: asyncpg.Record) -> list[str]:
    """One event as CSV cells, in UsageEvent.COLUMNS order: "" for null, true/false, JSON
    metadata."""
    cells = []
    for column in UsageEvent.COLUMNS:
        value = row[column]
        if value is None:
            cells.append("")
        elif isinstance(value, bool):
            cells.append("true" if value else "false")
        elif column == "metadata":
            cells.append(orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())
        else:
            cells.append(str(_text(value)))
    return cells


@dataclass(frozen=True, slots=True)
class EventsPage:
    period: Period
    limit: int
    events: list[asyncpg.Record]
    next_cursor: str | None

    def to_json(self, *, with_metadata: bool = True) -> dict[str, Any]:
        return {
            **self.period.to_json(),
            "limit": self.limit,
            "events": [event_json(row, with_metadata=with_metadata) for row in self.events],
            "next_cursor": self.next_cursor,
        }


def _window_sql(period: Period, params: Params) -> str:
    return (
        f"created_at >= {params.add(period.since)} AND created_at <= {params.add(period.until)}"
        + filter_sql(period.filters, params)
    )


async def usage_events_page(
    pool: asyncpg.Pool,
    period: Period,
    *,
    limit: int = DEFAULT_EVENTS_LIMIT,
    cursor: str | None = None,
) -> EventsPage:
    """The newest `limit` events of `period`, after `cursor` when given."""
    if not 1 <= limit <= MAX_EVENTS_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}, got {limit}")
    params = Params()
    rows, following = await newest_events(pool, _window_sql(period, params), params, limit, cursor)
    return EventsPage(period=period, limit=limit, events=rows, next_cursor=following)


async def export_events(pool: asyncpg.Pool, period: Period) -> AsyncGenerator[asyncpg.Record, None]:
    """Every event of `period`, oldest first, streamed (close the iterator when done early)."""
    params = Params()
    async for row in events_oldest_first(pool, _window_sql(period, params), params):
        yield row


async def newest_events(
    pool: asyncpg.Pool, where: str, params: Params, limit: int, cursor: str | None
) -> tuple[list[asyncpg.Record], str | None]:
    """The newest `limit` events matching `where` (its values in `params`) after `cursor`,
    and the cursor of the page after them (None on the last page)."""
    if cursor is not None:
        after = EventCursor.decode(cursor)
        at, event_id = params.add(after.created_at), params.add(after.id)
        # The plain bound lets the (customer_id, created_at) index stop early; the row
        # comparison breaks ties between equal timestamps.
        where += f" AND created_at <= {at} AND (created_at, id) < ({at}, {event_id})"
    query = (
        f"SELECT {_COLUMNS} FROM usage_events WHERE {where} "
        f"ORDER BY created_at DESC, id DESC LIMIT {params.add(limit + 1)}"
    )
    rows = list(await pool.fetch(query, *params.values))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, EventCursor(rows[-1]["created_at"], rows[-1]["id"]).encode()


async def events_oldest_first(
    pool: asyncpg.Pool, where: str, params: Params
) -> AsyncGenerator[asyncpg.Record, None]:
    """Every event matching `where`, oldest first, through a server-side cursor."""
    query = f"SELECT {_COLUMNS} FROM usage_events WHERE {where} ORDER BY created_at, id"
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        async for row in conn.cursor(query, *params.values, prefetch=EXPORT_PREFETCH):
            yield row
