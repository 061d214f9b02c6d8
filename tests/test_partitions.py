"""Monthly partitions of usage_events: the migration that converts an existing table, months
created ahead and idempotently, the default partition as a safety net, and retention that
drops raw months while the hourly rollups keep counting them. The maintenance tasks are run
as of chosen days (the 1st, 4th and 28th of a month, New Year), never the real date."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import storage.postgres
from storage.postgres import create_pool, load_migrations, migrate
from storage.reports.rollups import (
    RollupWindow,
    ceil_hour,
    floor_hour,
    rebuild_rollups,
    verify_rollups,
)
from storage.reports.usage_queries import report_window, usage_summary
from storage.usage.partitions import (
    DEFAULT_PARTITION,
    MonthPartition,
    add_months,
    apply_retention,
    ensure_partitions,
    list_partitions,
    maintain_partitions,
    retention_horizon,
    run_maintenance,
)
from tests.usage_fixtures import insert_events, make_event

NOW = datetime(2026, 5, 20, 12, 30, tzinfo=UTC)


async def where(pool: asyncpg.Pool) -> dict[str, int]:
    """How many events each partition holds."""
    rows = await pool.fetch(
        "SELECT tableoid::regclass::text AS p, count(*) FROM usage_events GROUP BY 1"
    )
    return {row["p"]: row["count"] for row in rows}


async def rollup_requests(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(sum(requests), 0) FROM usage_rollups_hourly"))


async def test_migration_moves_existing_rows_into_month_partitions(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = load_migrations()
    monkeypatch.setattr(
        storage.postgres, "load_migrations", lambda: [m for m in everything if m.version < "030"]
    )
    pool = await create_pool(fresh_database_url)
    try:
        await migrate(pool)
        old = [
            make_event(datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
            make_event(datetime(2026, 1, 1, tzinfo=UTC), project_id=None),
            make_event(datetime(2026, 1, 15, tzinfo=UTC), price_usd=None),
        ]
        for event in old:  # the pre-030 writer: a primary key on id alone
            await pool.execute(
                "INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider,"
                " model, endpoint, status_code, streamed, usage_source, price_usd, latency_ms)"
                " VALUES ($1, $2, 'acme', 'k', 'pro', 'openai', 'gpt-4o', '/v1/x', 200, false,"
                " 'provider', $3, 5)",
                event.id,
                event.created_at,
                event.price_usd,
            )
        monkeypatch.setattr(storage.postgres, "load_migrations", lambda: everything)
        assert "030_partitions" in await migrate(pool)

        assert await where(pool) == {"usage_events_y2025m12": 1, "usage_events_y2026m01": 2}
        current = MonthPartition.of(datetime.now(UTC))
        names = {p.name for p in await list_partitions(pool)}
        assert {"usage_events_y2025m12", "usage_events_y2026m01", current.name} <= names
        assert await rollup_requests(pool) == 3  # rollups backfilled from the copied rows
        price = await pool.fetchval("SELECT sum(price_usd) FROM usage_rollups_hourly")
        assert price == Decimal("0.0024")
        assert await pool.fetchval("SELECT to_regclass('usage_events_unpartitioned')") is None
        key = await pool.fetchval(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = 'usage_events'::regclass AND i.indisprimary"
        )
        assert key == ["created_at", "id"]
    finally:
        await pool.close()


async def test_a_replayed_batch_is_stored_once(pool: asyncpg.Pool) -> None:
    events = [make_event(NOW - timedelta(minutes=i)) for i in range(50)]
    await insert_events(pool, events)
    await insert_events(pool, events[10:30])  # a retried batch, same ids and created_at
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 50
    assert await rollup_requests(pool) == 50


async def test_partitions_are_created_ahead_once(pool: asyncpg.Pool) -> None:
    later = datetime(2031, 11, 3, tzinfo=UTC)
    report = await ensure_partitions(pool, months_ahead=2, now=later)
    assert [p.name for p in report.created] == [
        "usage_events_y2031m11",
        "usage_events_y2031m12",
        "usage_events_y2032m01",
    ]
    assert report.created[-1].start == datetime(2032, 1, 1, tzinfo=UTC)
    assert report.created[-1].end == datetime(2032, 2, 1, tzinfo=UTC)
    again = await ensure_partitions(pool, months_ahead=2, now=later)
    assert again.created == [] and again.default_rows == 0
    assert set(report.created) <= set(again.partitions)


async def test_concurrent_maintainers_create_each_month_once(
    fresh_database_url: str, pool: asyncpg.Pool
) -> None:
    pools = [await create_pool(fresh_database_url) for _ in range(4)]
    try:
        reports = await asyncio.gather(
            *(
                ensure_partitions(p, months_ahead=5, now=datetime(2030, 1, 10, tzinfo=UTC))
                for p in pools
            )
        )
    finally:
        for p in pools:
            await p.close()
    created = [p.name for r in reports for p in r.created]
    assert sorted(created) == [f"usage_events_y2030m{m:02d}" for m in range(1, 7)]


async def test_month_boundaries_are_utc(pool: asyncpg.Pool) -> None:
    await ensure_partitions(pool, months_ahead=1, now=datetime(2030, 3, 5, tzinfo=UTC))
    last = datetime(2030, 3, 31, 23, 59, 59, 999999, tzinfo=UTC)
    first = datetime(2030, 4, 1, tzinfo=UTC)
    await insert_events(pool, [make_event(last), make_event(first)])
    assert await where(pool) == {"usage_events_y2030m03": 1, "usage_events_y2030m04": 1}


async def test_rows_without_a_month_land_in_default_and_are_moved(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    stray = [make_event(datetime(2033, 7, 9, tzinfo=UTC)) for _ in range(3)]
    await insert_events(pool, stray)  # no partition that far ahead: not refused
    assert await where(pool) == {DEFAULT_PARTITION: 3}
    assert await rollup_requests(pool) == 3

    dry = await ensure_partitions(pool, months_ahead=0, now=NOW, dry_run=True)
    assert (dry.default_rows, dry.moved_rows) == (3, 3)
    assert "usage_events_y2033m07" in {p.name for p in dry.created}
    assert await where(pool) == {DEFAULT_PARTITION: 3}

    with caplog.at_level(logging.WARNING, logger="storage.usage.partitions"):
        report, _ = await run_maintenance(pool, months_ahead=0, raw_events_days=None, now=NOW)
    assert (report.default_rows, report.moved_rows) == (3, 3)
    assert any("default partition" in r.getMessage() for r in caplog.records)
    assert await where(pool) == {"usage_events_y2033m07": 3}
    assert await rollup_requests(pool) == 3  # moving rows never counts them twice
    await insert_events(pool, stray)
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 3


async def test_retention_drops_old_months_and_keeps_rollups(pool: asyncpg.Pool) -> None:
    ages = [200, 120, 95, 60, 1]
    events = [make_event(NOW - timedelta(days=age), price_usd=Decimal("0.5")) for age in ages]
    await ensure_partitions(pool, months_ahead=0, now=NOW - timedelta(days=200))
    await insert_events(pool, events)
    await ensure_partitions(pool, months_ahead=0, now=NOW)
    before = await where(pool)

    # 90 days before 2026-05-20 12:30 is 2026-02-19: January and older end before it.
    dry = await apply_retention(pool, days=90, now=NOW, dry_run=True)
    assert [p.name for p in dry.dropped] == ["usage_events_y2025m11", "usage_events_y2026m01"]
    assert await where(pool) == before

    report = await apply_retention(pool, days=90, now=NOW)
    assert [p.name for p in report.dropped] == ["usage_events_y2025m11", "usage_events_y2026m01"]
    left = await pool.fetch("SELECT created_at FROM usage_events ORDER BY created_at")
    # The February event (95 days old) stays: its partition ends after the cutoff.
    assert [row["created_at"] for row in left] == [e.created_at for e in events[2:]]
    assert await rollup_requests(pool) == 5
    summary = await usage_summary(pool, days=365, customer_id="acme", now=NOW)
    assert (summary.totals.requests, summary.totals.price_usd) == (5, Decimal("2.5"))
    assert (await apply_retention(pool, days=90, now=NOW)).dropped == []


async def test_retention_deletes_old_rows_of_the_default_partition(pool: asyncpg.Pool) -> None:
    old, recent = datetime(2019, 1, 5, tzinfo=UTC), datetime(2040, 1, 5, tzinfo=UTC)
    await insert_events(pool, [make_event(old), make_event(recent)])
    assert await where(pool) == {DEFAULT_PARTITION: 2}
    report = await apply_retention(pool, days=90, now=NOW)
    assert report.default_rows_deleted == 1
    assert await where(pool) == {DEFAULT_PARTITION: 1}
    assert await rollup_requests(pool) == 2


async def test_maintain_partitions_runs_at_once_then_on_schedule(pool: asyncpg.Pool) -> None:
    await insert_events(pool, [make_event(datetime(2033, 2, 1, tzinfo=UTC))])
    task = asyncio.create_task(
        maintain_partitions(pool, months_ahead=1, raw_events_days=90, interval_s=3600)
    )
    try:
        for _ in range(100):
            if DEFAULT_PARTITION not in await where(pool):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert await where(pool) == {"usage_events_y2033m02": 1}
    names = {p.name for p in await list_partitions(pool)}
    assert MonthPartition.of(datetime.now(UTC)).name in names


# ------------------------------------------------------- maintenance as of a given day

# Minutes into the 1st (a fresh database's first partition is today's month), the 4th (a
# 7-day window still reaches into last month), the 28th (it does not; February's last
# minutes), New Year at midnight, minutes into March after a short February.
TODAYS = [
    datetime(2026, 12, 1, 0, 3, tzinfo=UTC),
    datetime(2026, 12, 4, 14, 30, tzinfo=UTC),
    datetime(2027, 2, 28, 23, 58, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, tzinfo=UTC),
    datetime(2027, 3, 1, 0, 10, tzinfo=UTC),
]


async def created_on(pool: asyncpg.Pool, today: datetime) -> None:
    """Make the (empty) migrated database look as if created on `today`: 030 made the
    server's current month and two after it; replace them with today's."""
    for partition in await list_partitions(pool):
        await pool.execute(f"DROP TABLE {partition.name}")
    await ensure_partitions(pool, months_ahead=2, now=today)


def month_names(first: datetime, count: int) -> list[str]:
    return [
        MonthPartition.of(add_months(MonthPartition.of(first).start, k)).name for k in range(count)
    ]


@pytest.mark.parametrize("today", TODAYS, ids=lambda t: f"{t:%Y-%m-%dT%H:%M}")
async def test_maintenance_on_a_fresh_database(pool: asyncpg.Pool, today: datetime) -> None:
    await created_on(pool, today)
    # Events of the last week: on the 1st and the 4th some are last month's, which has no
    # partition yet (they wait in the default partition).
    ages = [
        timedelta(minutes=1),
        timedelta(hours=1),
        timedelta(days=3, hours=2),
        timedelta(days=6, hours=23),
    ]
    events = [make_event(today - age, price_usd=Decimal("0.25")) for age in ages]
    await insert_events(pool, events)
    last_month = {e.created_at for e in events} - {
        e.created_at for e in events if e.created_at >= MonthPartition.of(today).start
    }

    # rollups, then rollups --rebuild: the first partition is no horizon.
    since, until = report_window(7, today)
    window = RollupWindow(floor_hour(since), floor_hour(since), ceil_hour(until), None)
    check = await verify_rollups(pool, since=since, until=until)
    assert (check.window, check.mismatches, check.window.clamped) == (window, [], False)
    rebuilt = await rebuild_rollups(pool, since=since, until=until)
    assert (rebuilt.window, rebuilt.rows) == (
        window,
        len({floor_hour(e.created_at) for e in events}),
    )
    assert (await verify_rollups(pool, since=since, until=until)).mismatches == []

    # retention (30 days): nothing is old enough; no horizon.
    for dry_run in (True, False):
        kept = await apply_retention(pool, days=30, now=today, dry_run=dry_run)
        assert (kept.dropped, kept.default_rows_deleted, kept.horizon) == ([], 0, None)
    assert await retention_horizon(pool) is None

    # partitions (3 ahead): last month gets its partition if it has events.
    report = await ensure_partitions(pool, months_ahead=3, now=today)
    assert report.default_rows == len(last_month) == report.moved_rows
    first = today - timedelta(days=7) if last_month else today
    assert [p.name for p in report.partitions] == month_names(first, 5 if last_month else 4)
    assert DEFAULT_PARTITION not in await where(pool)

    check = await verify_rollups(pool, since=since, until=until)
    assert (check.window, check.mismatches) == (window, [])
    summary = await usage_summary(pool, days=7, customer_id="acme", now=today)
    assert (summary.totals.requests, summary.totals.price_usd) == (4, Decimal("1.00"))


@pytest.mark.parametrize("today", TODAYS, ids=lambda t: f"{t:%Y-%m-%dT%H:%M}")
async def test_maintenance_after_retention(pool: asyncpg.Pool, today: datetime) -> None:
    await created_on(pool, today)
    ages = [
        timedelta(days=75),
        timedelta(days=45),
        timedelta(days=29, hours=23),
        timedelta(minutes=1),
    ]
    events = [make_event(today - age) for age in ages]
    await insert_events(pool, events)
    await ensure_partitions(pool, months_ahead=3, now=today)
    cutoff = today - timedelta(days=30)
    gone = sorted(
        {
            MonthPartition.of(e.created_at)
            for e in events
            if MonthPartition.of(e.created_at).end <= cutoff
        }
    )
    assert gone  # 75 days back is always two months or more before the cutoff's month end

    dry = await apply_retention(pool, days=30, now=today, dry_run=True)
    assert (dry.dropped, dry.horizon) == (gone, gone[-1].end)
    assert await retention_horizon(pool) is None
    report = await apply_retention(pool, days=30, now=today)
    assert (report.dropped, report.horizon) == (gone, gone[-1].end)
    assert await retention_horizon(pool) == gone[-1].end

    # rollups over 90 days: from the horizon on, where every raw event is still stored.
    since, until = report_window(90, today)
    check = await verify_rollups(pool, since=since, until=until)
    assert check.window == RollupWindow(
        floor_hour(since), gone[-1].end, ceil_hour(until), gone[-1].end
    )
    assert check.window.clamped and check.mismatches == []
    rebuilt = await rebuild_rollups(pool, since=since, until=until)
    assert rebuilt.window == check.window
    assert rebuilt.rows == sum(e.created_at >= gone[-1].end for e in events)
    # The rollups of the dropped months are kept: all four events are still counted.
    assert await rollup_requests(pool) == 4
    summary = await usage_summary(pool, days=90, customer_id="acme", now=today)
    assert summary.totals.requests == 4
    again = await apply_retention(pool, days=30, now=today)
    assert (again.dropped, again.horizon) == ([], gone[-1].end)


async def test_retention_of_default_rows_sets_the_horizon_at_the_next_hour(
    pool: asyncpg.Pool,
) -> None:
    rows = [
        datetime(2019, 1, 5, 10, 20, tzinfo=UTC),
        datetime(2019, 3, 2, 7, 59, tzinfo=UTC),
        datetime(2040, 1, 5, tzinfo=UTC),
    ]
    await insert_events(pool, [make_event(at) for at in rows])
    dry = await apply_retention(pool, days=90, now=NOW, dry_run=True)
    assert (dry.default_rows_deleted, dry.horizon) == (2, datetime(2019, 3, 2, 8, tzinfo=UTC))
    report = await apply_retention(pool, days=90, now=NOW)
    assert (report.default_rows_deleted, report.horizon) == (2, dry.horizon)
    # The horizon only moves forward.
    await insert_events(pool, [make_event(datetime(2018, 1, 1, tzinfo=UTC))])
    assert (await apply_retention(pool, days=90, now=NOW)).horizon == dry.horizon


async def test_an_upgraded_database_finds_the_horizon_of_earlier_retention(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = load_migrations()
    monkeypatch.setattr(
        storage.postgres, "load_migrations", lambda: [m for m in everything if m.version < "051"]
    )
    pool = await create_pool(fresh_database_url)
    try:
        await migrate(pool)
        await ensure_partitions(pool, months_ahead=0, now=datetime(2026, 1, 10, tzinfo=UTC))
        await insert_events(
            pool, [make_event(datetime(2026, 1, 10, 5, 30, tzinfo=UTC)), make_event(NOW)]
        )
        await ensure_partitions(pool, months_ahead=0, now=NOW)
        await pool.execute("DROP TABLE usage_events_y2026m01")  # retention, before 051
        monkeypatch.setattr(storage.postgres, "load_migrations", lambda: everything)
        await migrate(pool)
        assert await retention_horizon(pool) == datetime(2026, 1, 10, 6, tzinfo=UTC)
    finally:
        await pool.close()


async def test_a_fresh_or_unexpired_database_has_no_horizon(pool: asyncpg.Pool) -> None:
    assert await retention_horizon(pool) is None


@pytest.mark.slow
def test_maintenance_commands(tmp_path: Path, fresh_database_url: str, redis_url: str) -> None:
    """The CLI once, on the wall clock: whatever the date, a fresh database is maintained and
    checked, and after retention the check starts at the horizon (events of 2020 expire)."""
    (tmp_path / "config.yaml").write_text(
        "providers: {openai: {kind: openai, base_url: https://api.openai.com/v1}}\n"
        "retention: {raw_events_days: 30, partitions_ahead_months: 3}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")} | {
        "TOLLBOOTH_DATABASE_URL": fresh_database_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli.main", "maintenance", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    async def database(work: Callable[[asyncpg.Pool], Awaitable[Any]]) -> Any:
        pool = await create_pool(fresh_database_url)
        try:
            return await work(pool)
        finally:
            await pool.close()

    before = datetime.now(UTC)
    done = cli("partitions", "--format", "json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    ahead = {p["name"] for p in body["partitions"]}
    assert {MonthPartition.of(at).name for at in (before, datetime.now(UTC))} <= ahead
    assert len(ahead) >= 4 and body["default_rows"] == 0

    expired = datetime(2020, 1, 15, 8, 30, tzinfo=UTC)
    asyncio.run(
        database(
            lambda pool: insert_events(
                pool, [make_event(expired), make_event(datetime.now(UTC) - timedelta(minutes=1))]
            )
        )
    )
    done = cli("partitions")
    assert done.returncode == 0 and "usage_events_y2020m01" in done.stdout, done.stderr

    done = cli("retention", "--dry-run", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["days"], report["dry_run"]) == (30, True)
    assert [p["name"] for p in report["dropped"]] == ["usage_events_y2020m01"]
    assert report["horizon"] == "2020-02-01T00:00:00+00:00"
    assert cli("retention", "--days", "0").returncode == 2
    done = cli("retention")
    assert done.returncode == 0, done.stderr
    assert "dropped usage_events_y2020m01" in done.stdout
    assert "retention horizon: 2020-02-01 00:00:00Z" in done.stdout
    assert "dropped no partition" in cli("retention", "--days", "400").stdout

    done = cli("rollups")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked the hours from" in done.stdout and "match" in done.stdout
    assert "removed by retention" not in done.stdout
    done = cli("rollups", "--days", "3660", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert body["mismatches"] == []
    assert body["window"]["start"] == body["window"]["horizon"] == "2020-02-01T00:00:00+00:00"
    assert body["window"]["clamped"] is True
    done = cli("rollups", "--days", "3660", "--rebuild")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rebuilt the hours from 2020-02-01 00:00:00Z to ")
    assert "removed by retention" in done.stdout
    assert "1 rollup rows written" in done.stdout
    assert asyncio.run(database(rollup_requests)) == 2  # 2020's hour is still counted
