from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from storage.reports.usage_queries import decimal_str, usage_summary

NOW = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)


async def insert_event(
    pool: asyncpg.Pool,
    *,
    customer_id: str,
    model: str,
    at: datetime,
    input_tokens: int,
    output_tokens: int,
    cost_usd: Decimal | None,
    price_usd: Decimal | None,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    status_code: int = 200,
) -> None:
    await pool.execute(
        """
        INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider, model,
            endpoint, status_code, streamed, input_tokens, output_tokens, cached_input_tokens,
            cache_write_tokens, reasoning_tokens, usage_source, cost_usd, price_usd, latency_ms)
        VALUES ($1, $2, $3, 'key_0123456789abcdef', 'pro', 'openai', $4, '/v1/chat/completions',
            $5, false, $6, $7, $8, $9, $10, 'provider', $11, $12, 10)
        """,
        uuid.uuid4(),
        at,
        customer_id,
        model,
        status_code,
        input_tokens,
        output_tokens,
        cached_input_tokens,
        cache_write_tokens,
        reasoning_tokens,
        cost_usd,
        price_usd,
    )


@pytest.fixture
async def pool(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The shared migrated pool, with acme's events around NOW and one of another customer."""
    recent = NOW - timedelta(hours=1)
    await insert_event(
        pool,
        customer_id="acme",
        model="gpt-4o",
        at=recent,
        input_tokens=100,
        output_tokens=50,
        cost_usd=Decimal("0.0010000001"),
        price_usd=Decimal("0.0012000001"),
        cached_input_tokens=40,
        reasoning_tokens=7,
    )
    await insert_event(
        pool,
        customer_id="acme",
        model="gpt-4o",
        at=NOW - timedelta(days=6),
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal("0.0000000009"),
        price_usd=Decimal("0.0000000011"),
        status_code=500,
    )
    await insert_event(
        pool,
        customer_id="acme",
        model="claude-x",
        at=recent,
        input_tokens=30,
        output_tokens=3,
        cost_usd=Decimal("0.25"),
        price_usd=Decimal("0.3"),
        cache_write_tokens=20,
    )
    await insert_event(
        pool,
        customer_id="acme",
        model="local-llm",
        at=recent,
        input_tokens=8,
        output_tokens=8,
        cost_usd=None,
        price_usd=None,
    )
    # Outside the window, and another customer: neither counts for acme over 7 days.
    await insert_event(
        pool,
        customer_id="acme",
        model="gpt-4o",
        at=NOW - timedelta(days=8),
        input_tokens=1000,
        output_tokens=1000,
        cost_usd=Decimal(1),
        price_usd=Decimal(1),
    )
    await insert_event(
        pool,
        customer_id="other",
        model="gpt-4o",
        at=recent,
        input_tokens=1,
        output_tokens=1,
        cost_usd=Decimal("0.5"),
        price_usd=Decimal("0.6"),
    )
    return pool


async def test_summary_of_one_customer_has_the_spec_shape_and_exact_sums(
    pool: asyncpg.Pool,
) -> None:
    summary = await usage_summary(pool, days=7, customer_id="acme", now=NOW)
    body = summary.to_json()
    assert body["customer_id"] == "acme"
    assert body["period_days"] == 7
    assert (body["requests"], body["input_tokens"], body["output_tokens"]) == (4, 148, 66)
    assert (body["cached_input_tokens"], body["cache_write_tokens"], body["reasoning_tokens"]) == (
        40,
        20,
        7,
    )
    assert body["cost_usd"] == "0.251000001"
    assert body["price_usd"] == "0.3012000012"
    assert body["unpriced_requests"] == 1
    models = {m["model"]: m for m in body["by_model"]}
    assert list(models) == ["claude-x", "gpt-4o", "local-llm"]
    assert models["gpt-4o"] == {
        "model": "gpt-4o",
        "requests": 2,
        "input_tokens": 110,
        "output_tokens": 55,
        "cached_input_tokens": 40,
        "cache_write_tokens": 0,
        "reasoning_tokens": 7,
        "cost_usd": "0.001000001",
        "price_usd": "0.0012000012",
        "unpriced_requests": 0,
        "error_requests": 1,
        "estimated_requests": 0,
    }
    assert models["local-llm"]["cost_usd"] == "0"
    assert models["local-llm"]["unpriced_requests"] == 1
    spec_fields = {"model", "requests", "input_tokens", "output_tokens", "cost_usd", "price_usd"}
    assert all(spec_fields <= set(m) for m in body["by_model"])
    assert isinstance(summary.totals.price_usd, Decimal)


async def test_summary_of_all_customers_and_window(pool: asyncpg.Pool) -> None:
    everyone = await usage_summary(pool, days=7, customer_id=None, now=NOW)
    assert everyone.to_json()["customer_id"] is None
    assert everyone.totals.requests == 5
    assert everyone.totals.price_usd == Decimal("0.9012000012")
    wider = await usage_summary(pool, days=30, customer_id="acme", now=NOW)
    assert wider.totals.requests == 5
    narrow = await usage_summary(pool, days=1, customer_id="acme", now=NOW)
    assert narrow.totals.requests == 3


async def test_summary_without_events_is_zero(pool: asyncpg.Pool) -> None:
    body = (await usage_summary(pool, days=7, customer_id="nobody", now=NOW)).to_json()
    assert (body["requests"], body["cost_usd"], body["price_usd"], body["by_model"]) == (
        0,
        "0",
        "0",
        [],
    )


async def test_summary_refuses_bad_periods(pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match="days"):
        await usage_summary(pool, days=0, customer_id=None, now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        await usage_summary(pool, days=1, customer_id=None, now=datetime(2026, 1, 1))


def test_decimal_str_is_exact_and_plain() -> None:
    assert decimal_str(Decimal("0E-10")) == "0"
    assert decimal_str(Decimal("1.5000000000")) == "1.5"
    assert decimal_str(Decimal("12.0000000000")) == "12"
    assert decimal_str(Decimal("0.0000000100")) == "0.00000001"
    assert decimal_str(Decimal("1E+3")) == "1000"
