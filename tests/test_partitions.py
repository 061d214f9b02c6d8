"""Monthly partitions of usage_events: the migration that converts an existing table, months
created ahead and idempotently, the default partition as a safety net, and retention that
drops raw months while the hourly rollups keep counting them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

import storage.postgres
from storage.partitions import (
    DEFAULT_PARTITION,
    MonthPartition,
    apply_retention,
    ensure_partitions,
    list_partitions,
    maintain_partitions,
    run_maintenance,
)
from storage.postgres import create_pool, load_migrations, migrate
from storage.usage_queries import usage_summary
from tests.usage_fixtures import insert_events, make_event

NOW = datetime(2026, 5, 20, 12, 30, tzinfo=UTC)


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database_url)
    await migrate(pool)
    try:
        yield pool
    finally:
        await pool.close()


async def where(pool: asyncpg.Pool) -> dict[str, int]:
    """How many events each partition holds."""
    rows = await pool.fetch("SELECT tableoid::regclass::text AS p, count(*) FROM usage_events "
                            "GROUP BY 1")
    return {row["p"]: row["count"] for row in rows}


async def rollup_requests(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(sum(requests), 0) FROM usage_rollups_hourly"))


async def test_migration_moves_existing_rows_into_month_partitions(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = load_migrations()
    monkeypatch.setattr(storage.postgres, "load_migrations",
                        lambda: [m for m in everything if m.version < "030"])
    pool = await create_pool(fresh_database_url)
    try:
        await migrate(pool)
        old = [make_event(datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)),
               make_event(datetime(2026, 1, 1, tzinfo=UTC), project_id=None),
               make_event(datetime(2026, 1, 15, tzinfo=UTC), price_usd=None)]
        for event in old:  # the pre-030 writer: a primary key on id alone
            await pool.execute(
                "INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider,"
                " model, endpoint, status_code, streamed, usage_source, price_usd, latency_ms)"
                " VALUES ($1, $2, 'acme', 'k', 'pro', 'openai', 'gpt-4o', '/v1/x', 200, false,"
                " 'provider', $3, 5)", event.id, event.created_at, event.price_usd)
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
            "WHERE i.indrelid = 'usage_events'::regclass AND i.indisprimary")
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
        "usage_events_y2031m11", "usage_events_y2031m12", "usage_events_y2032m01"
    ]
    assert report.created[-1].start == datetime(2032, 1, 1, tzinfo=UTC)
    assert report.created[-1].end == datetime(2032, 2, 1, tzinfo=UTC)
    again = await ensure_partitions(pool, months_ahead=2, now=later)
    assert again.created == [] and again.default_rows == 0
    assert set(report.created) <= set(again.partitions)


async def test_concurrent_maintainers_create_each_month_once(fresh_database_url: str,
                                                             pool: asyncpg.Pool) -> None:
    pools = [await create_pool(fresh_database_url) for _ in range(4)]
    try:
        reports = await asyncio.gather(*(
            ensure_partitions(p, months_ahead=5, now=datetime(2030, 1, 10, tzinfo=UTC))
            for p in pools
        ))
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

    with caplog.at_level(logging.WARNING, logger="storage.partitions"):
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
    task = asyncio.create_task(maintain_partitions(pool, months_ahead=1, raw_events_days=90,
                                                   interval_s=3600))
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


def test_maintenance_commands(tmp_path: Path, fresh_database_url: str, redis_url: str) -> None:
    (tmp_path / "config.yaml").write_text(
        "providers: {openai: {kind: openai, base_url: https://api.openai.com/v1}}\n"
        "retention: {raw_events_days: 30, partitions_ahead_months: 3}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")} | {
        "TOLLBOOTH_DATABASE_URL": fresh_database_url, "TOLLBOOTH_REDIS_URL": redis_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli.main", "maintenance", *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    done = cli("partitions", "--format", "json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    current = MonthPartition.of(datetime.now(UTC))
    ahead = {p["name"] for p in body["partitions"]}
    assert current.name in ahead and len(ahead) >= 4 and body["default_rows"] == 0

    done = cli("retention", "--dry-run", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["days"], report["dry_run"], report["dropped"]) == (30, True, [])
    assert "dropped" in cli("retention", "--days", "400").stdout
    assert cli("retention", "--days", "0").returncode == 2
    done = cli("rollups")
    assert done.returncode == 0 and "match" in done.stdout
