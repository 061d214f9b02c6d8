"""Imported usage and Stripe: `billing sync` never sends imported rows unless
`billing.stripe.import_since` says from when, and reconcile counts them apart (fake Stripe on
loopback, real Postgres)."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from gateway.config import StripeConfig
from storage.imports.run import ImportOptions, import_usage
from storage.stripe.client import StripeApi
from storage.stripe.reconcile import reconcile
from storage.stripe.sync import MeterSync, SyncPolicy
from tests.fake_stripe import FakeStripe
from tests.usage_fixtures import insert_events, make_event

METERS = {"input_tokens": "tollbooth_input_tokens", "requests": "tollbooth_requests"}
HOUR = timedelta(hours=1)
NOW = datetime.now(UTC)  # the syncs' clock, fixed for the module
THIS_HOUR = NOW.replace(minute=0, second=0, microsecond=0)
IMPORTED_HOURS = (4, 3, 2)  # hours ago, one imported event of 1000 + n tokens each


async def seed(pool: asyncpg.Pool, fake_stripe: FakeStripe) -> str:
    """acme, linked to Stripe: 100 tokens of its own 5 hours ago, and imported history."""
    stripe_id = fake_stripe.add_customer("Acme")
    await pool.execute(
        "INSERT INTO customers (id, tier, stripe_customer_id) VALUES ('acme', 'pro', $1)", stripe_id
    )
    await insert_events(
        pool,
        [
            make_event(
                THIS_HOUR - 5 * HOUR + timedelta(minutes=10), customer_id="acme", input_tokens=100
            )
        ],
    )
    rows = "created_at,customer_id,model,input_tokens,price_usd\n" + "".join(
        f"{(THIS_HOUR - n * HOUR + timedelta(minutes=5)).isoformat()},acme,gpt-4o,{1000 + n},0.5\n"
        for n in IMPORTED_HOURS
    )
    report = await import_usage(pool, io.StringIO(rows), ImportOptions())
    assert report.added == len(IMPORTED_HOURS)
    return stripe_id


def sync(pool: asyncpg.Pool, stripe_api: StripeApi, import_since: datetime | None) -> MeterSync:
    policy = SyncPolicy(meters=METERS, window_s=3600, settle_delay_s=900, import_since=import_since)
    return MeterSync(pool, stripe_api, policy, clock=lambda: NOW)


async def input_lines(pool: asyncpg.Pool, import_since: datetime | None) -> tuple[int, int, int]:
    lines = await reconcile(
        pool,
        start=THIS_HOUR - 6 * HOUR,
        end=THIS_HOUR,
        window_s=3600,
        meters=METERS,
        version=1,
        import_since=import_since,
    )
    line = next(ln for ln in lines if ln.dimension == "input_tokens")
    return line.ours, line.imported, line.difference


async def test_sync_sends_no_imported_usage_by_default(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    stripe_id = await seed(pool, fake_stripe)
    report = await sync(pool, stripe_api, None).run()
    assert report.ok
    assert fake_stripe.totals() == {
        (stripe_id, "tollbooth_input_tokens"): 100,
        (stripe_id, "tollbooth_requests"): 1,
    }
    windows = {r["window_start"] for r in await pool.fetch("SELECT * FROM billing_sync")}
    assert windows == {THIS_HOUR - 5 * HOUR}
    assert await input_lines(pool, None) == (100, sum(1000 + n for n in IMPORTED_HOURS), 0)
    second = await sync(pool, stripe_api, None).run()
    assert second.planned == [] and second.sent == []


async def test_import_since_sends_imported_usage_from_then_on_only(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    stripe_id = await seed(pool, fake_stripe)
    await sync(pool, stripe_api, None).run()
    since = THIS_HOUR - 3 * HOUR
    report = await sync(pool, stripe_api, since).run()
    assert report.ok and len(report.sent) == 4  # two windows, two meters
    assert fake_stripe.totals()[(stripe_id, "tollbooth_input_tokens")] == 100 + 1003 + 1002
    assert fake_stripe.totals()[(stripe_id, "tollbooth_requests")] == 3
    assert await input_lines(pool, since) == (100 + 1003 + 1002, 1004, 0)
    again = await sync(pool, stripe_api, since).run()
    assert again.sent == [] and again.planned == []


def test_import_since_is_a_utc_instant_and_defaults_to_never() -> None:
    assert StripeConfig().import_since is None
    assert StripeConfig(import_since="2026-01-01T00:00:00").import_since == datetime(
        2026, 1, 1, tzinfo=UTC
    )
    assert StripeConfig(import_since=date(2026, 2, 1)).import_since == datetime(
        2026, 2, 1, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="not an ISO time"):
        StripeConfig(import_since="soon")
