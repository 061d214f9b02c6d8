"""The monthly partitions of `usage_events`: created ahead, emptied out of the default, expired.

`usage_events` is partitioned by RANGE on created_at (storage/schema/030_partitions.sql): one
partition per UTC calendar month, named `usage_events_yYYYYmMM`, plus `usage_events_default`,
which catches any row no month partition holds, so an insert never fails for a missing month.
Only partitions named that way are managed here; anything else attached is left alone.

`ensure_partitions` creates the current month and `months_ahead` after it, and, for every
month that has rows in the default partition, creates that month's partition and moves the
rows into it (the default partition is meant to stay empty; rows found there are reported).
`apply_retention` drops every month partition that ends at or before `now - days`, and
deletes default-partition rows older than that: raw events are removed, the hourly rollups
are kept (neither operation goes through the rollup triggers). In the same transaction as
each drop or delete it raises the retention horizon (`usage_retention_horizon`,
storage/schema/051_retention.sql): the instant before which raw events may be gone, the
dropped month's end, or the hour after the newest default row deleted. Only what was
actually removed moves it: a fresh database has no horizon, whatever its first partition.
`retention_horizon` reads it; storage/reports/rollups.py checks and rebuilds rollups only after it.
It also records, per customer and month, the last removed event and its tier
(`usage_expired_month_tiers`), which invoices are billed under and rollups do not hold.
`maintain_partitions` runs both at once and then once a day, for `serve`; `tollbooth
maintenance` runs them by hand. All of it is idempotent: a second run finds nothing to do.

`ensure_partitions`, `apply_retention` and `run_maintenance` take `now` (default: the wall
clock), so what they do on any day of a month can be run, and tested, as of that day.

Failure semantics: each month is created, moved or dropped in its own transaction, under an
advisory lock (so two processes maintaining at once serialize) and a `lock_timeout` of
LOCK_TIMEOUT_S: DDL on a partitioned table waits for every query on it, and writers queue
behind the waiting DDL, so it gives up rather than stall the usage writer behind a long
report. A timeout or any database error propagates (asyncpg's, unchanged) with the months
already done kept; `maintain_partitions` logs it at ERROR and tries again after
RETRY_INTERVAL_S. Meanwhile inserts keep landing in the default partition.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

PARENT = "usage_events"
DEFAULT_PARTITION = "usage_events_default"
_NAME = re.compile(r"usage_events_y(\d{4})m(\d{2})")
# Arbitrary but fixed; distinct from storage.postgres.MIGRATION_LOCK_KEY.
MAINTENANCE_LOCK_KEY = 0x7B_0071_2030
LOCK_TIMEOUT_S = 10
DAY_S = 86_400.0
RETRY_INTERVAL_S = 300.0


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the calendar month holding `moment`."""
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware")
    utc = moment.astimezone(UTC)
    return datetime(utc.year, utc.month, 1, tzinfo=UTC)


def add_months(start: datetime, months: int) -> datetime:
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, order=True)
class MonthPartition:
    start: datetime
    end: datetime
    name: str

    @classmethod
    def of(cls, moment: datetime) -> MonthPartition:
        start = month_start(moment)
        return cls(start, add_months(start, 1), f"{PARENT}_y{start:%Y}m{start:%m}")

    @classmethod
    def from_name(cls, name: str) -> MonthPartition | None:
        found = _NAME.fullmatch(name)
        if found is None or not 1 <= int(found[2]) <= 12:
            return None
        return cls.of(datetime(int(found[1]), int(found[2]), 1, tzinfo=UTC))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(slots=True)
class PartitionReport:
    dry_run: bool
    default_rows: int = 0  # rows found in the default partition before this run
    created: list[MonthPartition] = field(default_factory=list)
    moved_rows: int = 0  # rows moved out of the default partition into their month
    partitions: list[MonthPartition] = field(default_factory=list)  # after the run

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "default_rows": self.default_rows,
            "created": [p.to_json() for p in self.created],
            "moved_rows": self.moved_rows,
            "partitions": [p.to_json() for p in self.partitions],
        }


@dataclass(slots=True)
class RetentionReport:
    days: int
    cutoff: datetime
    dry_run: bool
    dropped: list[MonthPartition] = field(default_factory=list)
    default_rows_deleted: int = 0
    # After the run (a dry run: what it would be): raw events before it may be gone.
    horizon: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "dropped": [p.to_json() for p in self.dropped],
            "default_rows_deleted": self.default_rows_deleted,
            "horizon": self.horizon.isoformat() if self.horizon else None,
        }


_LIST = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'usage_events'::regclass
"""
_DEFAULT_MONTHS = f"""
SELECT date_trunc('month', created_at, 'UTC') AS month, count(*) AS n
FROM {DEFAULT_PARTITION} GROUP BY 1 ORDER BY 1
"""


_HORIZON = "SELECT horizon FROM usage_retention_horizon"
_RAISE_HORIZON = """
INSERT INTO usage_retention_horizon AS h (horizon) VALUES ($1)
ON CONFLICT (singleton) DO UPDATE SET horizon = excluded.horizon, updated_at = now()
WHERE excluded.horizon > h.horizon
"""
# The last event per (customer, month) among the rows of `gone`, kept where it is later
# than the one already recorded (storage/reports/invoice_queries.py `billing_tier` reads them).
_KEEP_TIERS = """
INSERT INTO usage_expired_month_tiers AS t
    (customer_id, month, last_event_at, last_event_id, tier)
SELECT DISTINCT ON (customer_id, month) customer_id, month, created_at, id, tier
FROM (SELECT *, date_trunc('month', created_at, 'UTC') AS month FROM gone) AS g
ORDER BY customer_id, month, created_at DESC, id DESC
ON CONFLICT (customer_id, month) DO UPDATE
SET last_event_at = excluded.last_event_at, last_event_id = excluded.last_event_id,
    tier = excluded.tier
WHERE (excluded.last_event_at, excluded.last_event_id) > (t.last_event_at, t.last_event_id)
"""
_GONE_SUMMARY = """
SELECT count(*) AS n, date_trunc('hour', max(created_at), 'UTC') + interval '1 hour' AS horizon
FROM gone
"""
# Count of the default partition's rows older than $1 and the hour after the newest of them.
_DEFAULT_HORIZON = f"""
WITH gone AS (SELECT created_at FROM {DEFAULT_PARTITION} WHERE created_at < $1)
{_GONE_SUMMARY}
"""
_DELETE_DEFAULT = f"""
WITH gone AS (
    DELETE FROM {DEFAULT_PARTITION} WHERE created_at < $1
    RETURNING id, created_at, customer_id, tier
), kept AS ({_KEEP_TIERS})
{_GONE_SUMMARY}
"""


def _drop_sql(partition: MonthPartition) -> tuple[str, str]:
    """Record the partition's last event per customer, then drop it."""
    keep = f"WITH gone AS (SELECT id, created_at, customer_id, tier FROM {partition.name})"
    return keep + _KEEP_TIERS, f"DROP TABLE {partition.name}"


async def retention_horizon(conn: asyncpg.Connection | asyncpg.Pool) -> datetime | None:
    """The instant before which retention may have removed raw events; None: it never
    removed any. From it on, every raw event is still stored."""
    horizon: datetime | None = await conn.fetchval(_HORIZON)
    return horizon


def _later(first: datetime | None, second: datetime | None) -> datetime | None:
    return max((m for m in (first, second) if m is not None), default=None)


async def list_partitions(conn: asyncpg.Connection | asyncpg.Pool) -> list[MonthPartition]:
    """The managed month partitions attached to usage_events, oldest first."""
    found = (MonthPartition.from_name(row["relname"]) for row in await conn.fetch(_LIST))
    return sorted(p for p in found if p is not None)


def _bounds(partition: MonthPartition) -> str:
    # Literal UTC timestamps: the bound is the same instant whatever the session's TimeZone.
    return (
        f"FOR VALUES FROM ('{partition.start:%Y-%m-%d} 00:00:00+00') "
        f"TO ('{partition.end:%Y-%m-%d} 00:00:00+00')"
    )


async def _locked(conn: asyncpg.Connection) -> None:
    """Inside a transaction: serialize with other maintainers and bound lock waits."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MAINTENANCE_LOCK_KEY)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")


async def _create(pool: asyncpg.Pool, partition: MonthPartition) -> int | None:
    """Create one month's partition, moving its rows out of the default partition.

    Returns the number of rows moved, or None when the partition already existed.
    """
    async with pool.acquire() as conn, conn.transaction():
        await _locked(conn)
        if partition in await list_partitions(conn):
            return None
        waiting: int = await conn.fetchval(
            f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE created_at >= $1 AND created_at < $2",
            partition.start,
            partition.end,
        )
        if not waiting:
            await conn.execute(
                f"CREATE TABLE {partition.name} PARTITION OF {PARENT} {_bounds(partition)}"
            )
            return 0
        # Creating the partition while the default holds rows of its range is refused, so
        # the rows move first: into a plain table, which is then attached. Deleting from the
        # default partition by name and inserting into the new table bypass the rollup
        # triggers (declared on usage_events only): the rows are already counted there.
        await conn.execute(
            f"CREATE TABLE {partition.name} "
            f"(LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        moved = await conn.execute(
            f"""
            WITH moved AS (
                DELETE FROM {DEFAULT_PARTITION}
                WHERE created_at >= $1 AND created_at < $2 RETURNING *
            )
            INSERT INTO {partition.name} SELECT * FROM moved
            """,
            partition.start,
            partition.end,
        )
        await conn.execute(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {partition.name} {_bounds(partition)}"
        )
        return int(moved.rsplit(" ", 1)[1])


async def ensure_partitions(
    pool: asyncpg.Pool,
    *,
    months_ahead: int = 2,
    now: datetime | None = None,
    dry_run: bool = False,
) -> PartitionReport:
    """Create the current month's partition and `months_ahead` more, and a partition for
    every month with rows in the default partition (moving them there)."""
    if months_ahead < 0:
        raise ValueError(f"months_ahead must be >= 0, got {months_ahead}")
    current = month_start(now or datetime.now(UTC))
    report = PartitionReport(dry_run=dry_run)
    stray = await pool.fetch(_DEFAULT_MONTHS)
    report.default_rows = sum(row["n"] for row in stray)
    wanted = {MonthPartition.of(add_months(current, k)) for k in range(months_ahead + 1)}
    wanted |= {MonthPartition.of(row["month"]) for row in stray}
    existing = set(await list_partitions(pool))
    for partition in sorted(wanted - existing):
        if dry_run:
            report.created.append(partition)
            report.moved_rows += sum(
                row["n"] for row in stray if MonthPartition.of(row["month"]) == partition
            )
            continue
        moved = await _create(pool, partition)
        if moved is not None:
            report.created.append(partition)
            report.moved_rows += moved
    report.partitions = sorted(existing | set(report.created))
    return report


async def ensure_months(pool: asyncpg.Pool, moments: Iterable[datetime]) -> list[MonthPartition]:
    """Create the partitions of the months holding `moments` that do not exist yet (for
    backfilled history), moving any of their rows out of the default partition; return the
    partitions this call created."""
    wanted = {MonthPartition.of(moment) for moment in moments}
    created = []
    for partition in sorted(wanted - set(await list_partitions(pool))):
        if await _create(pool, partition) is not None:
            created.append(partition)
    return created


async def apply_retention(
    pool: asyncpg.Pool,
    *,
    days: int = 90,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionReport:
    """Drop the month partitions ending at or before `now - days`; delete older default rows;
    raise the retention horizon past what was removed (see the module docstring)."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    report = RetentionReport(days=days, cutoff=cutoff, dry_run=dry_run)
    expired = [p for p in await list_partitions(pool) if p.end <= cutoff]
    if dry_run:
        report.dropped = expired
        stale = await pool.fetchrow(_DEFAULT_HORIZON, cutoff)
        report.default_rows_deleted = stale["n"]
        report.horizon = _later(await retention_horizon(pool), stale["horizon"])
        if expired:
            report.horizon = _later(report.horizon, expired[-1].end)
        return report
    for partition in expired:
        async with pool.acquire() as conn, conn.transaction():
            await _locked(conn)
            if partition in await list_partitions(conn):
                for statement in _drop_sql(partition):
                    await conn.execute(statement)
                await conn.execute(_RAISE_HORIZON, partition.end)
                report.dropped.append(partition)
    async with pool.acquire() as conn, conn.transaction():
        await _locked(conn)
        gone = await conn.fetchrow(_DELETE_DEFAULT, cutoff)
        report.default_rows_deleted = gone["n"]
        if gone["n"]:
            await conn.execute(_RAISE_HORIZON, gone["horizon"])
        report.horizon = await retention_horizon(conn)
    return report


async def run_maintenance(
    pool: asyncpg.Pool,
    *,
    months_ahead: int,
    raw_events_days: int | None,
    now: datetime | None = None,
) -> tuple[PartitionReport, RetentionReport | None]:
    """One round: partitions first (so stray rows find their month), then retention
    (skipped when `raw_events_days` is None: raw events kept forever)."""
    partitions = await ensure_partitions(pool, months_ahead=months_ahead, now=now)
    if partitions.default_rows:
        log.warning(
            "%d usage events were in the default partition (a month without its partition); "
            "moved %d into month partitions",
            partitions.default_rows,
            partitions.moved_rows,
        )
    if partitions.created:
        log.info(
            "created usage_events partitions: %s", ", ".join(p.name for p in partitions.created)
        )
    retention = None
    if raw_events_days is not None:
        retention = await apply_retention(pool, days=raw_events_days, now=now)
        if retention.dropped or retention.default_rows_deleted:
            log.info(
                "retention (%d days): dropped %s; deleted %d old rows from the default partition",
                raw_events_days,
                ", ".join(p.name for p in retention.dropped) or "no partition",
                retention.default_rows_deleted,
            )
    return partitions, retention


async def maintain_partitions(
    pool: asyncpg.Pool,
    *,
    months_ahead: int = 2,
    raw_events_days: int | None = 90,
    interval_s: float = DAY_S,
    retry_s: float = RETRY_INTERVAL_S,
) -> None:
    """Run `run_maintenance` now and every `interval_s` until cancelled (a background task
    of `serve`). A failed round is logged at ERROR and retried after `retry_s`."""
    while True:
        try:
            await run_maintenance(pool, months_ahead=months_ahead, raw_events_days=raw_events_days)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.error(
                "usage_events partition maintenance failed (%s: %s); retrying in %.0fs",
                type(exc).__name__,
                exc,
                retry_s,
            )
            await asyncio.sleep(retry_s)
            continue
        await asyncio.sleep(interval_s)
