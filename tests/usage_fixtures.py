"""Usage events for the storage and reporting tests: built in Python, written the way the
usage writer writes them (binary COPY into a staging table, then INSERT ... ON CONFLICT
(id, created_at) DO NOTHING through usage_events), and summed back independently of the
code under test, straight from the raw rows."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from storage.usage.event import UsageEvent

_COLUMNS = ", ".join(UsageEvent.COLUMNS)


def make_event(
    at: datetime,
    *,
    customer_id: str = "acme",
    project_id: str | None = "web",
    model: str = "gpt-4o",
    input_tokens: int = 100,
    output_tokens: int = 20,
    price_usd: Decimal | None = Decimal("0.0012"),
    cost_usd: Decimal | None = Decimal("0.001"),
    status_code: int = 200,
    usage_source: str = "provider",
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    latency_ms: int = 25,
) -> UsageEvent:
    return UsageEvent(
        id=uuid.uuid4(),
        created_at=at,
        customer_id=customer_id,
        project_id=project_id,
        user_id="u1",
        key_id="key_0123456789abcdef",
        tier="pro",
        provider="openai",
        model=model,
        endpoint="/v1/chat/completions",
        status_code=status_code,
        streamed=False,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_write_tokens=cache_write_tokens,
        reasoning_tokens=reasoning_tokens,
        usage_source=usage_source,
        cost_usd=cost_usd,
        price_usd=price_usd,
        price_version="test-1",
        latency_ms=latency_ms,
        upstream_request_id="chatcmpl-1",
        metadata={"config_hash": "abc"},
    )


def random_events(
    rng: random.Random, now: datetime, count: int, *, span_days: int = 40
) -> list[UsageEvent]:
    """A mix of customers, projects (None included), models, errors, estimates, unpriced
    events and odd money, spread over `span_days` before `now` (and a little after)."""
    events = []
    for _ in range(count):
        at = now - timedelta(seconds=rng.randint(-3600, span_days * 86_400))
        priced = rng.random() > 0.1
        events.append(
            make_event(
                at,
                customer_id=rng.choice(["acme", "beta", "gamma"]),
                project_id=rng.choice(["web", "api", None]),
                model=rng.choice(["gpt-4o", "gpt-4o-mini", "claude-x"]),
                input_tokens=rng.randint(0, 5000),
                output_tokens=rng.randint(0, 900),
                cached_input_tokens=rng.randint(0, 50),
                cache_write_tokens=rng.randint(0, 50),
                reasoning_tokens=rng.randint(0, 30),
                cost_usd=Decimal(rng.randint(0, 10**9)) / 10**10 if priced else None,
                price_usd=Decimal(rng.randint(0, 10**9)) / 10**10 if priced else None,
                status_code=rng.choice([200, 200, 200, 429, 500]),
                usage_source=rng.choice(["provider", "provider", "estimated"]),
            )
        )
    return events


async def insert_events(pool: asyncpg.Pool, events: list[UsageEvent]) -> None:
    """Write `events` as the usage writer does; writing the same events again is a no-op."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS test_staging "
            "(LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(
            "test_staging",
            records=[tuple(getattr(e, c) for c in UsageEvent.COLUMNS) for e in events],
            columns=UsageEvent.COLUMNS,
        )
        await conn.execute(
            f"INSERT INTO usage_events ({_COLUMNS}) SELECT {_COLUMNS} FROM test_staging "
            "ON CONFLICT (id, created_at) DO NOTHING"
        )


_RAW_TOTALS = """
SELECT count(*) AS requests,
       coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(cached_input_tokens), 0)::bigint AS cached_input_tokens,
       coalesce(sum(cache_write_tokens), 0)::bigint AS cache_write_tokens,
       coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
       coalesce(sum(cost_usd), 0) AS cost_usd,
       coalesce(sum(price_usd), 0) AS price_usd,
       count(*) FILTER (WHERE price_usd IS NULL) AS unpriced_requests,
       count(*) FILTER (WHERE status_code >= 400) AS error_requests,
       count(*) FILTER (WHERE usage_source = 'estimated') AS estimated_requests
FROM usage_events
WHERE created_at >= $1 AND created_at <= $2
  AND ($3::text IS NULL OR customer_id = $3)
  AND ($4::text IS NULL OR project_id IS NOT DISTINCT FROM $4)
  AND ($5::text IS NULL OR model = $5)
"""


async def raw_totals(
    pool: asyncpg.Pool,
    since: datetime,
    until: datetime,
    *,
    customer_id: str | None = None,
    project_id: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The totals of the raw rows in [since, until], as plain JSON-like values."""
    row = await pool.fetchrow(_RAW_TOTALS, since, until, customer_id, project_id, model)
    assert row is not None
    return dict(row)
