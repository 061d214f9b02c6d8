"""Hourly rollups stay equal to the raw events through inserts, replays, re-rating updates,
deletes and concurrent writers; a write that bypasses them is found and repaired; reports
read them for whole hours and raw rows for the edges."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from storage.partitions import apply_retention, ensure_partitions
from storage.postgres import create_pool, migrate
from storage.rollups import WindowSplit, rebuild_rollups, split_window, verify_rollups
from tests.usage_fixtures import insert_events, make_event, random_events

NOW = datetime(2026, 5, 20, 12, 30, tzinfo=UTC)
SINCE, UNTIL = NOW - timedelta(days=60), NOW + timedelta(days=1)


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database_url, max_size=12)
    await migrate(pool)
    await ensure_partitions(pool, months_ahead=1, now=SINCE)
    await ensure_partitions(pool, months_ahead=1, now=NOW)
    try:
        yield pool
    finally:
        await pool.close()


async def test_inserted_batches_are_rolled_up_exactly(pool: asyncpg.Pool) -> None:
    rng = random.Random(5)
    events = random_events(rng, NOW, 3000)
    for start in range(0, len(events), 500):
        await insert_events(pool, events[start:start + 500])
    assert await verify_rollups(pool, since=SINCE, until=UNTIL) == []
    row = await pool.fetchrow(
        "SELECT sum(requests) AS n, sum(price_usd) AS price, sum(unpriced_requests) AS unpriced,"
        " sum(error_requests) AS errors, sum(estimated_requests) AS estimated,"
        " sum(compute_ms) AS compute FROM usage_rollups_hourly")
    assert row is not None
    assert row["n"] == 3000
    assert row["price"] == sum((e.price_usd or Decimal(0) for e in events), Decimal(0))
    assert row["unpriced"] == sum(e.price_usd is None for e in events)
    assert row["errors"] == sum(e.status_code >= 400 for e in events)
    assert row["estimated"] == sum(e.usage_source == "estimated" for e in events)
    assert row["compute"] == sum(e.latency_ms for e in events if e.status_code < 400)
    # One row per (customer, hour, project, model); keys without a project are one group.
    keys = {(e.customer_id, e.created_at.replace(minute=0, second=0, microsecond=0),
             e.project_id, e.model) for e in events}
    assert await pool.fetchval("SELECT count(*) FROM usage_rollups_hourly") == len(keys)


async def test_a_replayed_batch_is_rolled_up_once(pool: asyncpg.Pool) -> None:
    events = [make_event(NOW - timedelta(minutes=i)) for i in range(20)]
    await insert_events(pool, events)
    await insert_events(pool, events)
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 20
    assert await verify_rollups(pool, since=SINCE, until=UNTIL) == []


async def test_rerating_updates_move_the_money(pool: asyncpg.Pool) -> None:
    events = [make_event(NOW - timedelta(hours=i), price_usd=None if i % 2 else Decimal("1"))
              for i in range(10)]
    await insert_events(pool, events)
    await pool.execute("UPDATE usage_events SET price_usd = 0.25, price_version = 'v2' "
                       "WHERE price_usd IS NULL")
    await pool.execute("UPDATE usage_events SET customer_id = 'beta' WHERE id = $1",
                       events[0].id)
    assert await verify_rollups(pool, since=SINCE, until=UNTIL) == []
    total = await pool.fetchval("SELECT sum(price_usd) FROM usage_rollups_hourly")
    assert total == Decimal("6.25")
    assert await pool.fetchval("SELECT sum(unpriced_requests) FROM usage_rollups_hourly") == 0


async def test_deletes_subtract_and_truncate_empties(pool: asyncpg.Pool) -> None:
    await insert_events(pool, [make_event(NOW, model=m) for m in ("a", "b", "b")])
    await pool.execute("DELETE FROM usage_events WHERE model = 'b'")
    assert await verify_rollups(pool, since=SINCE, until=UNTIL) == []
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
    assert await verify_rollups(pool, since=SINCE, until=UNTIL) == []


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
        " FROM usage_events")
    found = await verify_rollups(pool, since=SINCE, until=UNTIL)
    assert {m.column for m in found} >= {"requests", "price_usd", "input_tokens"}
    assert next(m for m in found if m.column == "requests").raw == 2
    assert await rebuild_rollups(pool, since=SINCE, until=UNTIL) == 1
    assert await verify_rollups(pool, since=SINCE, until=UNTIL) == []
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 2


async def test_repair_refuses_hours_whose_raw_events_are_gone(pool: asyncpg.Pool) -> None:
    await insert_events(pool, [make_event(SINCE)])
    await apply_retention(pool, days=30, now=NOW)
    with pytest.raises(ValueError, match="no longer retained"):
        await rebuild_rollups(pool, since=SINCE, until=NOW)
    assert await pool.fetchval("SELECT sum(requests) FROM usage_rollups_hourly") == 1


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
