"""Daily rollups per (customer, model) stay equal to the hourly rollups, and daily rollups
per key equal to the raw events, through inserts, replays, re-rating updates, deletes,
rebuilds and truncation; reads through them equal the reports and the raw rows."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from storage.reports.breakdown import usage_by_key
from storage.reports.daily_rollups import daily_rows_sql, verify_daily_rollups
from storage.reports.dashboard_queries import customers_usage
from storage.reports.key_rollups import verify_key_rollups
from storage.reports.rollups import Params, UsageFilter, rebuild_rollups
from storage.reports.system_queries import models_usage
from storage.reports.usage_queries import UsageTotals, usage_totals
from storage.usage.partitions import ensure_partitions
from tests.usage_fixtures import insert_events, random_events

NOW = datetime(2026, 5, 20, 12, 30, tzinfo=UTC)
SINCE, UNTIL = NOW - timedelta(days=45), NOW + timedelta(days=1)


@pytest.fixture
async def pool(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The shared migrated pool, with partitions from SINCE on."""
    await ensure_partitions(pool, months_ahead=2, now=SINCE)
    return pool


async def _seed(pool: asyncpg.Pool, count: int = 2000) -> None:
    events = random_events(random.Random(11), NOW, count)
    for start in range(0, len(events), 400):
        await insert_events(pool, events[start : start + 400])


async def test_daily_rows_follow_inserts_updates_deletes_rebuilds(pool: asyncpg.Pool) -> None:
    await _seed(pool)
    assert await verify_daily_rollups(pool, since=SINCE, until=UNTIL) == []
    await pool.execute(
        "UPDATE usage_events SET price_usd = price_usd * 3, input_tokens = "
        "input_tokens + 7 WHERE customer_id = 'beta'"
    )
    await pool.execute("DELETE FROM usage_events WHERE model = 'gpt-4o-mini'")
    assert await verify_daily_rollups(pool, since=SINCE, until=UNTIL) == []
    await rebuild_rollups(pool, since=NOW - timedelta(days=3), until=NOW)
    assert await verify_daily_rollups(pool, since=SINCE, until=UNTIL) == []
    await _seed(pool, 300)  # the same ids again: replayed, nothing added
    assert await verify_daily_rollups(pool, since=SINCE, until=UNTIL) == []
    await pool.execute("TRUNCATE usage_events")
    assert await pool.fetchval("SELECT count(*) FROM usage_rollups_daily") == 0


@pytest.mark.parametrize(
    "since, until",
    [
        (
            datetime(2026, 5, 1, tzinfo=UTC),
            datetime(2026, 6, 1, tzinfo=UTC) - timedelta(microseconds=1),
        ),  # a calendar month: whole days only
        (datetime(2026, 4, 9, 7, 13, 5, tzinfo=UTC), NOW),  # partial days and hours at both ends
        (datetime(2026, 3, 31, 23, 30, tzinfo=UTC), NOW),  # a whole month, days, hours, raw
        (NOW - timedelta(hours=5), NOW),  # inside one day
        (datetime(2026, 5, 20, tzinfo=UTC), datetime(2026, 5, 31, tzinfo=UTC)),  # until in future
    ],
)
async def test_reads_across_customers_equal_the_reports(
    pool: asyncpg.Pool, since: datetime, until: datetime
) -> None:
    await _seed(pool)
    want = await usage_totals(pool, since=since, until=until, usage_filter=UsageFilter())
    rows = await customers_usage(pool, since=since, until=until)
    assert sum((row.totals for row in rows), UsageTotals()) == want
    for row in rows:
        assert row.totals == await usage_totals(
            pool, since=since, until=until, usage_filter=UsageFilter(row.customer_id)
        )
    models = await models_usage(pool, since=since, until=until)
    assert sum((m.totals for m in models), UsageTotals()) == want
    prices = [m.totals.price_usd for m in models]
    assert prices == sorted(prices, reverse=True)
    params = Params()
    query = f"SELECT sum(price_usd) FROM ({daily_rows_sql(since, until, params)}) AS d"
    assert (await pool.fetchval(query, *params.values) or Decimal(0)) == want.price_usd


async def test_key_rollups_follow_writes_and_per_key_sums_equal_the_raw_rows(
    pool: asyncpg.Pool,
) -> None:
    await _seed(pool)
    assert await verify_key_rollups(pool, since=SINCE, until=UNTIL) == []
    await pool.execute(
        "UPDATE usage_events SET price_usd = price_usd * 2, key_id = "
        "'key_fedcba9876543210' WHERE customer_id = 'gamma'"
    )
    await pool.execute("DELETE FROM usage_events WHERE model = 'gpt-4o'")
    await _seed(pool, 300)  # replayed: nothing added
    assert await verify_key_rollups(pool, since=SINCE, until=UNTIL) == []
    for since, until in (
        (datetime(2026, 4, 9, 7, 13, 5, tzinfo=UTC), NOW),
        (NOW - timedelta(hours=5), NOW),
    ):
        for usage_filter in (
            UsageFilter("acme"),
            UsageFilter("acme", "web"),
            UsageFilter("beta", None, "gpt-4o-mini"),
        ):
            found = await usage_by_key(pool, since=since, until=until, usage_filter=usage_filter)
            raw = await pool.fetch(
                "SELECT key_id, count(*) AS n, coalesce(sum(price_usd), 0) AS price, "
                "sum(input_tokens) AS input FROM usage_events WHERE created_at >= $1 AND "
                "created_at <= $2 AND customer_id = $3 AND ($4::text IS NULL OR project_id = "
                "$4) AND ($5::text IS NULL OR model = $5) GROUP BY key_id",
                since,
                until,
                usage_filter.customer_id,
                usage_filter.project_id,
                usage_filter.model,
            )
            assert {
                k.key_id: (k.totals.requests, k.totals.price_usd, k.totals.input_tokens)
                for k in found
            } == {r["key_id"]: (r["n"], r["price"], r["input"]) for r in raw}
    await pool.execute("TRUNCATE usage_events")
    assert await pool.fetchval("SELECT count(*) FROM usage_rollups_key_daily") == 0
