from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg

from storage.postgres import create_pool, load_migrations, migrate
from storage.usage.event import UsageEvent


async def test_migrate_applies_each_file_once(empty_pool: asyncpg.Pool) -> None:
    versions = [m.version for m in load_migrations()]
    assert versions[0] == "001_init"
    assert await migrate(empty_pool) == versions
    assert await migrate(empty_pool) == []
    recorded = await empty_pool.fetch("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in recorded] == versions


async def test_concurrent_migrations_serialize(fresh_database_url: str) -> None:
    pools = [await create_pool(fresh_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(p) for p in pools))
    finally:
        for p in pools:
            await p.close()
    applied = [version for result in results for version in result]
    assert sorted(applied) == [m.version for m in load_migrations()]


async def test_usage_events_columns_are_exactly_usage_event_columns(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        """
        SELECT column_name, data_type, numeric_precision, numeric_scale, is_nullable
        FROM information_schema.columns
        WHERE table_name = 'usage_events' ORDER BY ordinal_position
        """
    )
    assert tuple(r["column_name"] for r in rows) == UsageEvent.COLUMNS
    by_name = {r["column_name"]: r for r in rows}
    assert by_name["id"]["data_type"] == "uuid"
    assert by_name["created_at"]["data_type"] == "timestamp with time zone"
    for money in ("cost_usd", "price_usd"):
        assert by_name[money]["data_type"] == "numeric"
        assert (by_name[money]["numeric_precision"], by_name[money]["numeric_scale"]) == (20, 10)
    assert by_name["metadata"]["data_type"] == "jsonb"
    assert by_name["metadata"]["is_nullable"] == "NO"
    primary = await pool.fetchval(
        """
        SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = 'usage_events'::regclass AND i.indisprimary
        """
    )
    assert primary == ["created_at", "id"]  # partitioned by month: the key holds created_at


async def test_usage_events_indexed_for_reports(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch("SELECT indexdef FROM pg_indexes WHERE tablename = 'usage_events'")
    definitions = {r["indexdef"].split(" USING btree ")[1] for r in rows}
    assert "(customer_id, created_at)" in definitions
    assert "(created_at)" in definitions


async def test_jsonb_round_trips_dicts(pool: asyncpg.Pool) -> None:
    value = {"a": [1, "two", None, True], "nested": {"k": "v"}}
    assert await pool.fetchval("SELECT $1::jsonb", value) == value
    # A Decimal inside metadata is stored as its exact string, never a float.
    assert await pool.fetchval("SELECT $1::jsonb", {"x": Decimal("0.1")}) == {"x": "0.1"}
