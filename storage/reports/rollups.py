"""Hourly usage rollups: how reports read them, check them and repair them.

`usage_rollups_hourly` (storage/schema/031_rollups.sql) holds one row per (customer_id,
hour, project_id, model) with the request counts, token sums and exact money sums of that
UTC hour's events. It is maintained by statement-level triggers on `usage_events`, in the
same transaction as the write: an insert batch adds its rows (one upsert per distinct key in
the batch, not per event), an UPDATE (re-rating) moves the difference, a DELETE through
`usage_events` subtracts, TRUNCATE empties. Guarantee: in any snapshot, the rollups equal
the aggregate of the raw rows, except for raw rows removed by retention (dropped partitions,
old rows deleted from the default partition), which stay counted in the rollups on purpose.
A trigger was chosen over a watermark job because it needs no insertion-order column and
leaves no lag: a report is exact the moment an event is committed. Its price is paid by the
writer, measured at +12-22% per 500-event batch (COPY + INSERT + commit), depending on how
many distinct (customer, project, model, hour) keys a batch touches (README, "Storage").

Reports read a window [since, until] as three parts (`split_window`): raw rows from `since`
to the first whole hour, rollups for the whole hours, and raw rows from the last whole hour
to `until`; `usage_rows_sql` is that union as one SELECT, so it runs in one snapshot and
its sums equal the raw rows exactly while at most two hours are read raw.

`verify_rollups` compares rollups with the raw rows over whole hours; `rebuild_rollups`
recomputes a range from the raw rows (after something wrote to a partition by name, which
bypasses the triggers). Both work only where every raw row is still stored, from the
retention horizon on (storage/usage/partitions.py `retention_horizon`: what retention actually
removed, not the first partition, which on a fresh database is just the month it was
created): a range reaching further back is cut to start at the horizon, and the result says
which hours were covered (`RollupWindow`). So a rebuild never erases the rollup history of
hours whose raw events are gone, which is the only record left of them. Database errors
are asyncpg's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from storage.usage.partitions import MAINTENANCE_LOCK_KEY, retention_horizon

HOUR = timedelta(hours=1)

# Columns of a usage row, raw or rolled up, in the order `usage_rows_sql` selects them.
ROW_COUNTS = (
    "requests",
    "error_requests",
    "estimated_requests",
    "unpriced_requests",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
ROW_MONEY = ("cost_usd", "price_usd")


def floor_hour(moment: datetime) -> datetime:
    utc = moment.astimezone(UTC)
    return utc.replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


@dataclass(frozen=True, slots=True)
class WindowSplit:
    """[since, until] read as raw [since, rollup_start), rollups [rollup_start, rollup_end)
    and raw [rollup_end, until]. An empty rollup part has rollup_start == rollup_end."""

    since: datetime
    until: datetime
    rollup_start: datetime
    rollup_end: datetime


def split_window(since: datetime, until: datetime) -> WindowSplit:
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    if until < since:
        raise ValueError("until must not be before since")
    first, last = ceil_hour(since), floor_hour(until)
    if first >= last:
        return WindowSplit(since, until, until, until)
    return WindowSplit(since, until, first, last)


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """What a report is narrowed to; None means every value."""

    customer_id: str | None = None
    project_id: str | None = None
    model: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "model": self.model}


class Params:
    """Positional query parameters, numbered as they are added."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def filter_sql(usage_filter: UsageFilter, params: Params) -> str:
    """`AND ...` conditions for the filters that are set (none for those that are not)."""
    conditions = [
        f"{column} = {params.add(value)}"
        for column, value in (
            ("customer_id", usage_filter.customer_id),
            ("project_id", usage_filter.project_id),
            ("model", usage_filter.model),
        )
        if value is not None
    ]
    return "".join(f" AND {condition}" for condition in conditions)


def usage_rows_sql(split: WindowSplit, usage_filter: UsageFilter, params: Params) -> str:
    """One SELECT of `at, customer_id, project_id, model, <ROW_COUNTS>, <ROW_MONEY>` rows whose
    sums over any grouping coarser than an hour equal those of the raw rows in the window."""
    rollup_where = (
        f"hour >= {params.add(split.rollup_start)} AND hour < {params.add(split.rollup_end)}"
        + filter_sql(usage_filter, params)
    )
    raw_where = (
        f"((created_at >= {params.add(split.since)} AND created_at < "
        f"{params.add(split.rollup_start)}) OR (created_at >= {params.add(split.rollup_end)} "
        f"AND created_at <= {params.add(split.until)}))" + filter_sql(usage_filter, params)
    )
    columns = ", ".join(ROW_COUNTS + ROW_MONEY)
    return f"""
        SELECT hour AS at, customer_id, project_id, model, {columns}
        FROM usage_rollups_hourly WHERE {rollup_where}
        UNION ALL
        SELECT created_at, customer_id, project_id, model, 1::bigint,
               (status_code >= 400)::int::bigint, (usage_source = 'estimated')::int::bigint,
               (price_usd IS NULL)::int::bigint, input_tokens, output_tokens,
               cached_input_tokens, cache_write_tokens, reasoning_tokens,
               coalesce(cost_usd, 0)::numeric, coalesce(price_usd, 0)::numeric
        FROM usage_events WHERE {raw_where}
    """


# ------------------------------------------------------------------ verification and repair

_RAW_BY_KEY = """
SELECT date_trunc('hour', created_at, 'UTC') AS hour, customer_id, project_id, model,
       count(*) AS requests,
       count(*) FILTER (WHERE status_code >= 400) AS error_requests,
       count(*) FILTER (WHERE usage_source = 'estimated') AS estimated_requests,
       count(*) FILTER (WHERE price_usd IS NULL) AS unpriced_requests,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cached_input_tokens) AS cached_input_tokens,
       sum(cache_write_tokens) AS cache_write_tokens, sum(reasoning_tokens) AS reasoning_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(price_usd), 0) AS price_usd,
       coalesce(sum(latency_ms) FILTER (WHERE status_code < 400), 0) AS compute_ms
FROM usage_events WHERE created_at >= $1 AND created_at < $2
GROUP BY 1, 2, 3, 4
"""
_ROLLUP_COLUMNS = ROW_COUNTS + ROW_MONEY + ("compute_ms",)
_KEY = ("hour", "customer_id", "project_id", "model")


@dataclass(frozen=True, slots=True)
class RollupMismatch:
    hour: datetime
    customer_id: str
    project_id: str | None
    model: str
    column: str
    rollup: int | Decimal
    raw: int | Decimal


@dataclass(frozen=True, slots=True)
class RollupWindow:
    """The whole hours [start, end) a check or rebuild covered: those asked for
    ([requested_start, end)), from the retention horizon on. start == end: no hour asked
    for still has its raw events."""

    requested_start: datetime
    start: datetime
    end: datetime
    horizon: datetime | None  # see storage.usage.partitions.retention_horizon

    @classmethod
    def retained(cls, since: datetime, until: datetime, horizon: datetime | None) -> RollupWindow:
        start, end = floor_hour(since), ceil_hour(until)
        if end < start:
            raise ValueError("until must not be before since")
        if horizon is None or horizon <= start:
            return cls(start, start, end, horizon)
        return cls(start, min(ceil_hour(horizon), end), end, horizon)

    @property
    def clamped(self) -> bool:
        """Whether hours asked for were left out, their raw events removed by retention."""
        return self.start > self.requested_start

    def to_json(self) -> dict[str, Any]:
        return {
            "requested_start": self.requested_start.isoformat(),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "horizon": self.horizon.isoformat() if self.horizon else None,
            "clamped": self.clamped,
        }


@dataclass(frozen=True, slots=True)
class RollupCheck:
    window: RollupWindow
    mismatches: list[RollupMismatch]


@dataclass(frozen=True, slots=True)
class RollupRebuild:
    window: RollupWindow
    rows: int  # rollup rows written


async def verify_rollups(pool: asyncpg.Pool, *, since: datetime, until: datetime) -> RollupCheck:
    """Differences between rollups and raw rows for the whole hours covering [since, until),
    from the retention horizon on."""
    async with pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read"):
            window = RollupWindow.retained(since, until, await retention_horizon(conn))
            raw = {
                tuple(r[k] for k in _KEY): r
                for r in await conn.fetch(_RAW_BY_KEY, window.start, window.end)
            }
            rolled = {
                tuple(r[k] for k in _KEY): r
                for r in await conn.fetch(
                    "SELECT * FROM usage_rollups_hourly WHERE hour >= $1 AND hour < $2",
                    window.start,
                    window.end,
                )
            }
        # A partition dropped by retention after this snapshot was taken is missing from the
        # raw rows read above; the horizon it raised, read now, leaves its hours out.
        horizon = await retention_horizon(conn)
    if horizon != window.horizon:
        window = RollupWindow.retained(since, until, horizon)
    mismatches = []
    for key in sorted(raw.keys() | rolled.keys(), key=lambda k: (k[0], k[1], k[2] or "", k[3])):
        if key[0] < window.start:
            continue
        for column in _ROLLUP_COLUMNS:
            have = rolled[key][column] if key in rolled else 0
            want = raw[key][column] if key in raw else 0
            if have != want:
                hour, customer_id, project_id, model = key
                mismatches.append(
                    RollupMismatch(hour, customer_id, project_id, model, column, have, want)
                )
    return RollupCheck(window, mismatches)


async def rebuild_rollups(pool: asyncpg.Pool, *, since: datetime, until: datetime) -> RollupRebuild:
    """Recompute the rollups of the whole hours covering [since, until) from the raw rows,
    from the retention horizon on; the rollups of older hours are left as they are. Writers
    wait for it (table lock), briefly."""
    columns = ", ".join(_KEY + _ROLLUP_COLUMNS)
    async with pool.acquire() as conn, conn.transaction():
        # Retention drops partitions under this lock, raising the horizon in the same
        # transaction: holding it, the horizon read here stays true until the rebuild commits.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MAINTENANCE_LOCK_KEY)
        window = RollupWindow.retained(since, until, await retention_horizon(conn))
        if window.start == window.end:
            return RollupRebuild(window, 0)
        # SHARE ROW EXCLUSIVE blocks the triggers' upserts, so no writer commits rows this
        # statement cannot see while their rollup delta lands on rows deleted here.
        await conn.execute("LOCK TABLE usage_rollups_hourly IN SHARE ROW EXCLUSIVE MODE")
        await conn.execute(
            "DELETE FROM usage_rollups_hourly WHERE hour >= $1 AND hour < $2",
            window.start,
            window.end,
        )
        status = await conn.execute(
            f"INSERT INTO usage_rollups_hourly ({columns}) "
            f"SELECT {columns} FROM ({_RAW_BY_KEY}) AS raw",
            window.start,
            window.end,
        )
    return RollupRebuild(window, int(status.rsplit(" ", 1)[1]))
