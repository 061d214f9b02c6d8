"""storage/reports/invoice_queries.py on a real Postgres: a customer-month's usage, the tier it is
billed under (the same before and after retention removes the month's raw events), and
re-rating stored events (exact, batched, idempotent, never erasing money)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from pricing.catalog import Catalog
from pricing.models import Usage
from pricing.months import BillingMonth
from pricing.overrides import apply_overrides
from pricing.rules import PricingRules, RateOverride
from storage.reports.invoice_queries import billing_tier, month_usage, rerate_events
from storage.usage.partitions import apply_retention, ensure_partitions, list_partitions
from tests.usage_fixtures import insert_events, random_events

D = Decimal
CATALOG = Catalog.load_default()
OCT = BillingMonth(2026, 10)
MID_OCT = datetime(2026, 10, 15, 12, tzinfo=UTC)


async def insert_event(
    pool: asyncpg.Pool,
    *,
    customer_id: str = "acme",
    model: str = "gpt-4o",
    at: datetime = MID_OCT,
    tier: str = "pro",
    status_code: int = 200,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    latency_ms: int = 1000,
    cost_usd: Decimal | None = None,
    price_usd: Decimal | None = None,
    price_version: str | None = None,
    metadata: dict[str, Any] | None = None,
    event_id: uuid.UUID | None = None,
) -> uuid.UUID:
    event_id = event_id or uuid.uuid4()
    await pool.execute(
        """
        INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider, model,
            endpoint, status_code, streamed, input_tokens, output_tokens, cached_input_tokens,
            cache_write_tokens, reasoning_tokens, usage_source, cost_usd, price_usd,
            price_version, latency_ms, metadata)
        VALUES ($1, $2, $3, 'key_0123456789abcdef', $4, 'openai', $5, 'chat', $6, false, $7,
            $8, $9, $10, 0, 'provider', $11, $12, $13, $14, $15)
        """,
        event_id,
        at,
        customer_id,
        tier,
        model,
        status_code,
        input_tokens,
        output_tokens,
        cached_input_tokens,
        cache_write_tokens,
        cost_usd,
        price_usd,
        price_version,
        latency_ms,
        metadata or {},
    )
    return event_id


@pytest.fixture
async def pool(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The shared migrated pool, with three customers on three tiers."""
    for customer, tier in (("acme", "pro"), ("bob", "free"), ("idle", "team")):
        await pool.execute("INSERT INTO customers (id, tier) VALUES ($1, $2)", customer, tier)
    return pool


async def money(pool: asyncpg.Pool) -> dict[uuid.UUID, tuple[Any, Any, Any]]:
    rows = await pool.fetch("SELECT id, cost_usd, price_usd, price_version FROM usage_events")
    return {r["id"]: (r["cost_usd"], r["price_usd"], r["price_version"]) for r in rows}


# ----------------------------------------------------------------------------- invoices


async def test_month_usage_sums_one_customer_month_exactly(pool: asyncpg.Pool) -> None:
    await insert_event(
        pool,
        input_tokens=100,
        output_tokens=10,
        latency_ms=1500,
        price_usd=D("0.0000000001"),
        cost_usd=D(0),
    )
    await insert_event(
        pool,
        model="o3",
        input_tokens=5,
        output_tokens=1,
        latency_ms=2500,
        price_usd=D("1.0000000002"),
        cost_usd=D(1),
    )
    await insert_event(
        pool, status_code=502, input_tokens=7, latency_ms=60_000, price_usd=D(0), cost_usd=D(0)
    )
    await insert_event(pool, model="local", input_tokens=3, latency_ms=10)  # unpriced
    await insert_event(pool, at=OCT.start, input_tokens=1, latency_ms=1, price_usd=D(0))  # 1st
    # Outside: the month's end instant, the last instant of September, another customer.
    await insert_event(pool, at=OCT.end, input_tokens=1000, price_usd=D(5))
    await insert_event(pool, at=OCT.start - timedelta(microseconds=1), input_tokens=1000)
    await insert_event(pool, customer_id="bob", input_tokens=1000, price_usd=D(5))

    usage = await month_usage(pool, "acme", OCT)
    assert usage.requests == 4  # the 502 is not a task
    assert usage.failed_requests == 1
    assert (usage.input_tokens, usage.output_tokens) == (116, 11)
    assert usage.compute_ms == 1500 + 2500 + 10 + 1  # successful requests only
    assert usage.price_usd == D("1.0000000003")
    assert usage.cost_usd == D(1)
    assert usage.unpriced_requests == 1
    assert [(m.model, m.requests, m.failed_requests) for m in usage.by_model] == [
        ("gpt-4o", 2, 1),
        ("local", 1, 0),
        ("o3", 1, 0),
    ]


async def test_billing_tier_is_the_last_events_tier_else_the_current_one(
    pool: asyncpg.Pool,
) -> None:
    await insert_event(pool, tier="free", at=MID_OCT)
    await insert_event(pool, tier="team", at=MID_OCT + timedelta(days=1))
    await insert_event(pool, tier="free", at=OCT.end + timedelta(days=1))  # November
    assert await billing_tier(pool, "acme", OCT) == "team"
    assert await billing_tier(pool, "acme", BillingMonth(2026, 9)) == "pro"  # no events
    assert await billing_tier(pool, "nobody", OCT) is None


# What month_usage summed before it read the rollups: the reference, from the raw rows.
_RAW_MONTH_BY_MODEL = """
SELECT model,
       count(*) FILTER (WHERE status_code < 400)                     AS requests,
       count(*) FILTER (WHERE status_code >= 400)                    AS failed_requests,
       coalesce(sum(input_tokens), 0)::bigint                        AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint                       AS output_tokens,
       coalesce(sum(latency_ms) FILTER (WHERE status_code < 400), 0)::bigint AS compute_ms,
       coalesce(sum(price_usd), 0)::numeric                          AS price_usd,
       coalesce(sum(cost_usd), 0)::numeric                           AS cost_usd,
       count(*) FILTER (WHERE price_usd IS NULL)                     AS unpriced_requests
FROM usage_events
WHERE customer_id = $1 AND created_at >= $2 AND created_at < $3
GROUP BY model
ORDER BY model
"""


async def raw_month(
    pool: asyncpg.Pool, customer_id: str, month: BillingMonth
) -> list[dict[str, Any]]:
    rows = await pool.fetch(_RAW_MONTH_BY_MODEL, customer_id, month.start, month.end)
    return [dict(row) for row in rows]


def by_model(usage: Any) -> list[dict[str, Any]]:
    """month_usage's figures per model, shaped as _RAW_MONTH_BY_MODEL's rows."""
    return [
        {
            "model": m.model,
            "requests": m.requests,
            "failed_requests": m.failed_requests,
            "input_tokens": m.input_tokens,
            "output_tokens": m.output_tokens,
            "price_usd": m.price_usd,
        }
        for m in usage.by_model
    ]


async def test_month_usage_equals_the_raw_events_exactly(pool: asyncpg.Pool) -> None:
    rng = random.Random(11)
    # 40 days around the turn of October into November, latencies, errors, unpriced money.
    events = random_events(rng, datetime(2026, 11, 20, 12, 7, tzinfo=UTC), 1500)
    for event in events:
        object.__setattr__(event, "latency_ms", rng.randint(0, 90_000))
    await insert_events(pool, events)
    # Rollup rows left at zero: re-rated to another customer, deleted.
    await pool.execute("UPDATE usage_events SET customer_id = 'moved' WHERE id = $1", events[0].id)
    await pool.execute(
        "DELETE FROM usage_events WHERE model = 'claude-x' AND customer_id = "
        "'beta' AND created_at < '2026-11-01'"
    )
    for customer in ("acme", "beta", "gamma", "moved"):
        for month in (BillingMonth(2026, 10), BillingMonth(2026, 11)):
            raw = await raw_month(pool, customer, month)
            usage = await month_usage(pool, customer, month)
            assert by_model(usage) == [
                {
                    k: v
                    for k, v in r.items()
                    if k
                    in {
                        "model",
                        "requests",
                        "failed_requests",
                        "input_tokens",
                        "output_tokens",
                        "price_usd",
                    }
                }
                for r in raw
            ]
            assert usage.compute_ms == sum(r["compute_ms"] for r in raw)
            assert usage.cost_usd == sum((r["cost_usd"] for r in raw), D(0))
            assert usage.unpriced_requests == sum(r["unpriced_requests"] for r in raw)
            assert usage.requests == sum(r["requests"] for r in raw)
    assert "claude-x" not in [
        m.model for m in (await month_usage(pool, "beta", BillingMonth(2026, 10))).by_model
    ]


async def test_an_invoice_is_the_same_after_retention_drops_its_month(
    pool: asyncpg.Pool,
) -> None:
    march = BillingMonth(2026, 3)
    await ensure_partitions(pool, months_ahead=0, now=march.start)
    await insert_event(
        pool,
        at=march.start,
        input_tokens=10,
        output_tokens=1,
        latency_ms=900,
        price_usd=D("0.0000000007"),
        cost_usd=D("0.0000000005"),
    )
    await insert_event(
        pool,
        at=datetime(2026, 3, 14, 9, 59, 59, tzinfo=UTC),
        model="o3",
        tier="team",
        input_tokens=5,
        latency_ms=1200,
        price_usd=D("1.25"),
        cost_usd=D(1),
    )
    await insert_event(
        pool,
        at=datetime(2026, 3, 20, tzinfo=UTC),
        status_code=502,
        tier="team",
        input_tokens=3,
        latency_ms=60_000,
        price_usd=D(0),
    )
    await insert_event(
        pool,
        at=march.end - timedelta(microseconds=1),
        model="local",
        tier="team",
        input_tokens=2,
        latency_ms=7,
    )  # unpriced, last of March
    await insert_event(pool, at=march.end, tier="free", price_usd=D(9))  # April
    await insert_event(
        pool, customer_id="bob", at=datetime(2026, 3, 2, tzinfo=UTC), tier="free", price_usd=D(3)
    )
    before = {
        c: (await month_usage(pool, c, march), await billing_tier(pool, c, march))
        for c in ("acme", "bob")
    }
    assert before["acme"][1] == "team" and before["acme"][0].requests == 3

    # The customer moves to another tier; March's raw events expire.
    await pool.execute("UPDATE customers SET tier = 'free' WHERE id = 'acme'")
    report = await apply_retention(pool, days=30, now=datetime(2026, 5, 20, tzinfo=UTC))
    assert [p.name for p in report.dropped] == ["usage_events_y2026m03"]
    assert (
        await pool.fetchval("SELECT count(*) FROM usage_events WHERE created_at < $1", march.end)
        == 0
    )
    after = {
        c: (await month_usage(pool, c, march), await billing_tier(pool, c, march))
        for c in ("acme", "bob")
    }
    assert after == before


async def test_an_invoice_is_the_same_after_retention_deletes_default_rows(
    pool: asyncpg.Pool,
) -> None:
    # No partition for 2019: the events wait in the default partition, which retention
    # empties row by row, older than its cutoff: first part of the month, then the rest.
    month = BillingMonth(2019, 6)
    assert all(p.start > month.start for p in await list_partitions(pool))
    for day, tier in ((3, "free"), (28, "team"), (10, "pro")):
        await insert_event(
            pool,
            at=datetime(2019, 6, day, tzinfo=UTC),
            tier=tier,
            input_tokens=day,
            price_usd=D("0.1"),
        )
    before = (await month_usage(pool, "acme", month), await billing_tier(pool, "acme", month))
    assert before[1] == "team"
    assert (
        await apply_retention(pool, days=30, now=datetime(2019, 7, 15, tzinfo=UTC))
    ).default_rows_deleted == 2  # the 3rd and the 10th; the 28th is kept
    await pool.execute("UPDATE customers SET tier = 'free' WHERE id = 'acme'")
    assert (
        await month_usage(pool, "acme", month),
        await billing_tier(pool, "acme", month),
    ) == before
    assert (
        await apply_retention(pool, days=30, now=datetime(2019, 12, 1, tzinfo=UTC))
    ).default_rows_deleted == 1
    assert (
        await month_usage(pool, "acme", month),
        await billing_tier(pool, "acme", month),
    ) == before


# ----------------------------------------------------------------------------- re-rating


def rules(markup: str = "20", **kwargs: Any) -> PricingRules:
    return PricingRules(CATALOG, D(markup), D("0.001"), **kwargs)


async def test_rerate_reprices_and_a_second_run_changes_nothing(pool: asyncpg.Pool) -> None:
    old = rules("20")
    ids = []
    for customer, tokens in (("acme", 1000), ("acme", 2000), ("bob", 500)):
        charge = old.charge("gpt-4o", _usage(tokens), at=MID_OCT)
        assert charge is not None
        ids.append(
            await insert_event(
                pool,
                customer_id=customer,
                input_tokens=tokens,
                output_tokens=tokens,
                cost_usd=charge.cost_usd,
                price_usd=charge.price_usd,
                price_version=charge.price_version,
            )
        )
    new = rules("10")
    since = datetime(2026, 10, 1, tzinfo=UTC)
    report = await rerate_events(pool, new, since=since)
    # gpt-4o: 1000 in x 2.50 + 1000 out x 10 = 12500 -> 0.0125; x 1.2 + 0.001 = 0.016;
    # x 1.1 + 0.001 = 0.01475: 0.00125 less per 1000 tokens.
    stored = await money(pool)
    assert stored[ids[0]] == (D("0.0125"), D("0.01475"), new.version)
    assert stored[ids[1]] == (D("0.025"), D("0.0285"), new.version)
    body = report.to_json()
    assert (body["events_seen"], body["events_changed"]) == (3, 3)
    assert body["price_delta"] == "-0.004375"
    assert body["cost_delta"] == "0"
    assert [
        (c["customer_id"], c["events_changed"], c["price_delta"]) for c in body["customers"]
    ] == [("acme", 2, "-0.00375"), ("bob", 1, "-0.000625")]

    again = await rerate_events(pool, new, since=since)
    assert (again.events_seen, again.events_changed, again.customers) == (3, 0, {})
    assert await money(pool) == stored
    runs = await pool.fetch("SELECT * FROM pricing_rerates ORDER BY id")
    assert [(r["events_changed"], r["price_delta_usd"]) for r in runs] == [
        (3, D("-0.004375")),
        (0, D(0)),
    ]
    assert runs[0]["price_version"] == new.version


def _usage(tokens: int) -> Usage:
    return Usage(input_tokens=tokens, output_tokens=tokens)


async def test_rerate_prices_each_event_as_the_gateway_would(pool: asyncpg.Pool) -> None:
    the_rules = rules(
        "0",
        per_compute_minute_usd=D("0.06"),
        tiers={"pro": RateOverride(markup_percent=D("50"))},
        customers={"vip": RateOverride(markup_percent=D("0"), per_request_usd=D("0"))},
    )
    may = datetime(2025, 5, 1, tzinfo=UTC)
    old_o3 = await insert_event(
        pool, model="o3-2025-04-16", at=may, tier="free", input_tokens=1_000_000, latency_ms=30_000
    )
    failed = await insert_event(
        pool, model="o3", status_code=500, tier="free", input_tokens=1_000_000, latency_ms=30_000
    )
    tiered = await insert_event(pool, model="o3", tier="pro", input_tokens=1_000_000, latency_ms=0)
    vip = await insert_event(
        pool, customer_id="vip", model="o3", tier="pro", input_tokens=1_000_000, latency_ms=60_000
    )
    cache = await insert_event(
        pool,
        model="claude-sonnet-4-5",
        tier="free",
        input_tokens=100_000,
        cache_write_tokens=100_000,
        latency_ms=0,
        metadata={"cache_write_1h_tokens": 40_000},
    )
    await rerate_events(pool, the_rules, since=datetime(2025, 1, 1, tzinfo=UTC))
    stored = await money(pool)
    # Before the 2025-06-10 price cut: 1M x $10 = 10; + 0.001 fee + 0.5 min x 0.06 = 10.031
    assert stored[old_o3][:2] == (D(10), D("10.031"))
    # A provider error: tokens at today's $2, no fee, no compute fee.
    assert stored[failed][:2] == (D(2), D(2))
    # Tier pro: x 1.5 + 0.001
    assert stored[tiered][:2] == (D(2), D("3.001"))
    # The customer's own rates beat the tier's: x 1.0 + 0 fee + 1 min x 0.06
    assert stored[vip][:2] == (D(2), D("2.06"))
    # 60k 5-minute writes x 3.75 + 40k 1-hour writes x 6.00 = 0.225 + 0.24; + 0.001 fee
    assert stored[cache][:2] == (D("0.465"), D("0.466"))


async def test_unpriced_events_are_priced_once_their_model_is(pool: asyncpg.Pool) -> None:
    llama = await insert_event(pool, model="llama-70b", input_tokens=1_000_000)
    gone = await insert_event(
        pool,
        model="retired-model",
        input_tokens=10,
        cost_usd=D(1),
        price_usd=D("1.2"),
        price_version="old+1",
    )
    priced = apply_overrides(
        CATALOG,
        {"llama-70b": {"provider": "vllm", "input_per_mtok": "0.50", "output_per_mtok": "0.50"}},
    )
    report = await rerate_events(pool, PricingRules(priced), since=OCT.start)
    stored = await money(pool)
    assert stored[llama][:2] == (D("0.5"), D("0.5"))
    assert stored[gone] == (D(1), D("1.2"), "old+1")  # never erased
    assert (report.events_changed, report.kept_unpriceable) == (1, 1)
    assert report.customers["acme"].newly_priced == 1
    # Without the override the model is unknown again: its event keeps its price too.
    report = await rerate_events(pool, PricingRules(CATALOG), since=OCT.start)
    assert report.kept_unpriceable == 2


async def test_model_filter_matches_aliases_and_snapshots(pool: asyncpg.Pool) -> None:
    family = [
        await insert_event(pool, model=m, input_tokens=10)
        for m in ("claude-opus-4", "claude-opus-4-0", "claude-opus-4-20250514")
    ]
    other = await insert_event(pool, model="claude-opus-4-1", input_tokens=10)
    report = await rerate_events(pool, rules(), since=OCT.start, model="claude-opus-4-0")
    assert (report.events_seen, report.events_changed) == (3, 3)
    stored = await money(pool)
    assert all(stored[i][1] is not None for i in family)
    assert stored[other] == (None, None, None)


async def test_dry_run_reports_the_same_and_writes_nothing(pool: asyncpg.Pool) -> None:
    for _ in range(3):
        await insert_event(pool, input_tokens=100)
    before = await money(pool)
    dry = await rerate_events(pool, rules(), since=OCT.start, dry_run=True)
    assert await money(pool) == before
    assert await pool.fetchval("SELECT count(*) FROM pricing_rerates") == 0
    real = await rerate_events(pool, rules(), since=OCT.start)
    assert json.dumps({**dry.to_json(), "dry_run": None}) == json.dumps(
        {**real.to_json(), "dry_run": None}
    )


async def test_batches_cover_every_event_once_even_at_one_instant(pool: asyncpg.Pool) -> None:
    same = [await insert_event(pool, input_tokens=i + 1, at=MID_OCT) for i in range(5)]
    early = await insert_event(pool, input_tokens=1, at=OCT.start - timedelta(days=40))
    report = await rerate_events(pool, rules(), since=OCT.start, batch_size=2)
    assert (report.events_seen, report.events_changed) == (5, 5)
    stored = await money(pool)
    assert all(stored[i][1] is not None for i in same)
    assert stored[early] == (None, None, None)  # before --since


async def test_since_must_be_timezone_aware(pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await rerate_events(pool, rules(), since=datetime(2026, 1, 1))
