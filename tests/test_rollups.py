"""Hourly rollups stay equal to the raw events through inserts, replays, re-rating updates,
deletes and concurrent writers; a write that bypasses them is found and repaired; reports
read them for whole hours and raw rows for the edges."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from storage.reports.rollups import (
    RollupMismatch,
    RollupWindow,
    WindowSplit,
    rebuild_rollups,
    split_window,
    verify_rollups,
)
from storage.usage.partitions import apply_retention, ensure_partitions
from tests.usage_fixtures import insert_events, make_event, random_events

NOW = datetime(2026, 5, 20, 12, 30, tzinfo=UTC)
SINCE, UNTIL = NOW - timedelta(days=60), NOW + timedelta(days=1)


async def mismatches(pool: asyncpg.Pool) -> list[RollupMismatch]:
    check = await verify_rollups(pool, since=SINCE, until=UNTIL)
    assert check.window == RollupWindow(
        SINCE.replace(minute=0),
        SINCE.replace(minute=0),
        UNTIL.replace(minute=0) + timedelta(hours=1),
        None,
    )
    return check.mismatches


@pytest.fixture
def pool_size() -> int:
    return 12  # one connection for each concurrent writer


@pytest.fixture
async def pool(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The shared migrated pool, with partitions around SINCE and NOW."""
    await ensure_partitions(pool, months_ahead=1, now=SINCE)
    await ensure_partitions(pool, months_ahead=1, now=NOW)
    return pool


async def test_inserted_batches_are_rolled_up_exactly(pool: asyncpg.Pool) -> None:
    rng = random.Random(5)
    events = random_events(rng, NOW, 3000)
    for start in range(0, len(events), 500):
        await insert_events(pool, events[start : start + 500])
    assert await mismatches(pool) == []
    row = await pool.fetchrow(
        "SELECT sum(requests) AS n, sum(price_usd) AS price, sum(unpriced_requests) AS unpriced,"
        " sum(error_requests) AS errors, sum(estimated_requests) AS estimated,"
        " sum(compute_ms) AS compute FROM usage_rollups_hourly"
    )
    assert row is not None
    assert row["n"] == 3000
    assert row["price"] == sum((e.price_usd or Decimal(0) for e in events), Decimal(0))
    assert row["unpriced"] == sum(e.price_usd is None for e in events)
    assert row["errors"] == sum(e.status_code >= 400 for e in events)
    assert row["estimated"] == sum(e.usage_source == "estimated" for e in events)
    assert row["compute"] == sum(e.latency_ms for e in events if e.status_code < 400)
    # One row per (customer, hour, project, model); keys without a project are one group.
    keys = {
        (
            e.customer_id,
            e.created_at.replace(minute=0, second=0, microsecond=0),
            e.project_id,
            e.model,
        )
        for e in events
    }
    assert await pool.fetchval("SELECT count(*) FROM usage_rollups_hourly") == len(keys)


async def test_a_replayed_batch_is_rolled_up_once(pool: asyncpg.Pool) -> None:
    events = [make_event(NOW - timedelta(minutes=i)) for i in range(20)]
    await insert_events(pool, events)
    await insert_events(pool, events)
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 20
    assert await mismatches(pool) == []


async def test_rerating_updates_move_the_money(pool: asyncpg.Pool) -> None:
    events = [
        make_event(NOW - timedelta(hours=i), price_usd=None if i % 2 else Decimal("1"))
        for i in range(10)
    ]
    await insert_events(pool, events)
    await pool.execute(
        "UPDATE usage_events SET price_usd = 0.25, price_version = 'v2' WHERE price_usd IS NULL"
    )
    await pool.execute("UPDATE usage_events SET customer_id = 'beta' WHERE id = $1", events[0].id)
    assert await mismatches(pool) == []
    total = await pool.fetchval("SELECT sum(price_usd) FROM usage_rollups_hourly")
    assert total == Decimal("6.25")
    assert await pool.fetchval("SELECT sum(unpriced_requests) FROM usage_rollups_hourly") == 0


async def test_deletes_subtract_and_truncate_empties(pool: asyncpg.Pool) -> None:
    await insert_events(pool, [make_event(NOW, model=m) for m in ("a", "b", "b")])
    await pool.execute("DELETE FROM usage_events WHERE model = 'b'")
    assert await mismatches(pool) == []
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 1
    await pool.execute("TRUNCATE usage_events")
    assert await pool.fetchval("SELECT count(*) FROM usage_rollups_hourly") == 0


async def test_concurrent_writers_on_the_same_keys_neither_deadlock_nor_lose(
    pool: asyncpg.Pool,
) -> None:
    rng = random.Random(9)
    # Overlapping keys in every batch: unless every upsert locks its rollup rows in one
    # order (the trigger sorts by key), two of these transactions deadlock.
    batches = [random_events(rng, NOW, 300, span_days=1) for _ in range(24)]
    await asyncio.gather(*(insert_events(pool, batch) for batch in batches))
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 24 * 300
    assert await mismatches(pool) == []


async def test_a_write_that_bypasses_the_triggers_is_found_and_repaired(
    pool: asyncpg.Pool,
) -> None:
    await insert_events(pool, [make_event(NOW)])
    partition = await pool.fetchval("SELECT tableoid::regclass::text FROM usage_events")
    # Written to the partition by name: the triggers on usage_events never see it.
    await pool.execute(
        f"INSERT INTO {partition} SELECT gen_random_uuid(), created_at, customer_id, project_id,"
        " user_id, key_id, tier, provider, model, endpoint, status_code, streamed, input_tokens,"
        " output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, usage_source,"
        " cost_usd, price_usd, price_version, latency_ms, upstream_request_id, metadata"
        " FROM usage_events"
    )
    found = await mismatches(pool)
    assert {m.column for m in found} >= {"requests", "price_usd", "input_tokens"}
    assert next(m for m in found if m.column == "requests").raw == 2
    assert (await rebuild_rollups(pool, since=SINCE, until=UNTIL)).rows == 1
    assert await mismatches(pool) == []
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 2


async def test_check_and_repair_start_at_the_retention_horizon(pool: asyncpg.Pool) -> None:
    await insert_events(pool, [make_event(SINCE), make_event(NOW)])
    # 30 days before NOW is 2026-04-20: the March partition (SINCE's month) is dropped.
    await apply_retention(pool, days=30, now=NOW)
    april = datetime(2026, 4, 1, tzinfo=UTC)
    rebuilt = await rebuild_rollups(pool, since=SINCE, until=NOW)
    assert (rebuilt.window.start, rebuilt.window.horizon, rebuilt.window.clamped) == (
        april,
        april,
        True,
    )
    assert rebuilt.rows == 1  # NOW's hour; March's rollups are the only record, left alone
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 2
    check = await verify_rollups(pool, since=SINCE, until=NOW)
    assert (check.window.start, check.mismatches) == (april, [])
    # Nothing of a window before the horizon is retained: nothing is covered or erased.
    old = await rebuild_rollups(pool, since=SINCE, until=SINCE + timedelta(days=2))
    assert old.window.start == old.window.end and old.rows == 0
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 2


async def test_a_check_ignores_a_month_dropped_while_it_ran(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await insert_events(pool, [make_event(SINCE), make_event(NOW)])
    real_fetch = asyncpg.Connection.fetch
    dropped = False

    async def fetch_then_drop(
        self: asyncpg.Connection, query: str, *args: object, **kwargs: object
    ) -> object:
        nonlocal dropped
        # Retention commits between the check's snapshot and its read of the raw rows.
        if not dropped and "GROUP BY 1, 2, 3, 4" in query:
            dropped = True
            await apply_retention(pool, days=30, now=NOW)
        return await real_fetch(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "fetch", fetch_then_drop)
    check = await verify_rollups(pool, since=SINCE, until=NOW)
    assert dropped and check.mismatches == []
    assert check.window.start == check.window.horizon == datetime(2026, 4, 1, tzinfo=UTC)


def test_windows_split_into_raw_edges_and_whole_hours() -> None:
    since = datetime(2026, 5, 1, 10, 15, tzinfo=UTC)
    until = datetime(2026, 5, 1, 14, 40, tzinfo=UTC)
    assert split_window(since, until) == WindowSplit(
        since, until, datetime(2026, 5, 1, 11, tzinfo=UTC), datetime(2026, 5, 1, 14, tzinfo=UTC)
    )
    aligned = datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert split_window(aligned, until).rollup_start == aligned
    inside = split_window(since, since + timedelta(minutes=30))  # no whole hour: all raw
    assert inside.rollup_start == inside.rollup_end == inside.until
    with pytest.raises(ValueError):
        split_window(until, since)
