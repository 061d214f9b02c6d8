"""MeterSync against the fake Stripe on loopback, through the real `stripe` SDK and Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import asyncpg
import pytest

from gateway.config import StripeConfig
from storage.reports.usage_windows import DIMENSIONS
from storage.stripe.client import MeterEventAnswer, MeterEventRequest, StripeApi
from storage.stripe.reconcile import reconcile
from storage.stripe.sync import (
    SYNC_LOCK_KEY,
    MeterSync,
    SyncBusyError,
    SyncPolicy,
    meter_identifier,
)
from tests.fake_stripe import FakeStripe

METERS = {
    "input_tokens": "tollbooth_input_tokens",
    "output_tokens": "tollbooth_output_tokens",
    "cached_input_tokens": "tollbooth_cached_input_tokens",
    "requests": "tollbooth_requests",
    "price_micros": "tollbooth_price_micros",
}
HOUR = timedelta(hours=1)


def hour_start(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


# The syncs below run on this clock, fixed when the module is imported: a test that ran more
# than an hour later on the wall clock would otherwise find THIS_HOUR's "open" window closed.
NOW = datetime.now(UTC)
THIS_HOUR = hour_start(NOW)


@pytest.fixture
def stripe_timeout_s() -> float:
    return 0.3  # the timeout tests stall the fake longer than this


class Sleeps:
    """Records backoff delays instead of sleeping them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def syncer(
    pool: asyncpg.Pool, stripe_api: object, sleeps: Sleeps | None = None, **policy: object
) -> MeterSync:
    settings: dict[str, object] = {"meters": METERS, "window_s": 3600, "settle_delay_s": 900}
    settings.update(policy)
    return MeterSync(
        pool,
        stripe_api,
        SyncPolicy(**settings),
        clock=lambda: NOW,  # type: ignore[arg-type]
        sleep=sleeps or Sleeps(),
    )


async def add_customer(pool: asyncpg.Pool, customer_id: str, stripe_id: str | None) -> None:
    await pool.execute(
        "INSERT INTO customers (id, tier, stripe_customer_id) VALUES ($1, 'free', $2)",
        customer_id,
        stripe_id,
    )


async def add_event(
    pool: asyncpg.Pool,
    customer_id: str,
    created_at: datetime,
    *,
    input_tokens: int = 100,
    output_tokens: int = 20,
    cached: int = 0,
    price: str | None = "0.0012345",
    status: int = 200,
) -> None:
    await pool.execute(
        """
        INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider, model,
            endpoint, status_code, streamed, input_tokens, output_tokens, cached_input_tokens,
            usage_source, cost_usd, price_usd, latency_ms)
        VALUES ($1, $2, $3, 'key_0000000000000000', 'free', 'openai', 'gpt-4o-mini',
            'chat_completions', $4, false, $5, $6, $7, 'provider', $8, $8, 10)
        """,
        uuid.uuid4(),
        created_at,
        customer_id,
        status,
        input_tokens,
        output_tokens,
        cached,
        None if price is None else Decimal(price),
    )


async def expected_totals(
    pool: asyncpg.Pool, links: dict[str, str], before: datetime
) -> dict[tuple[str, str], int]:
    """What Stripe should hold, computed here from the stored events, independently."""
    rows = await pool.fetch("SELECT * FROM usage_events WHERE created_at < $1", before)
    per_window: dict[tuple[str, datetime], list[asyncpg.Record]] = {}
    for row in rows:
        per_window.setdefault((row["customer_id"], hour_start(row["created_at"])), []).append(row)
    totals: dict[tuple[str, str], int] = {}
    for (customer, _), events in per_window.items():
        if customer not in links:
            continue
        price = sum((e["price_usd"] or Decimal(0) for e in events), Decimal(0))
        values = {
            "input_tokens": sum(e["input_tokens"] for e in events),
            "output_tokens": sum(e["output_tokens"] for e in events),
            "cached_input_tokens": sum(e["cached_input_tokens"] for e in events),
            "requests": sum(1 for e in events if e["status_code"] < 400),
            "price_micros": int((price * 1_000_000).quantize(Decimal(1), ROUND_HALF_EVEN)),
        }
        for dimension, value in values.items():
            if value:
                key = (links[customer], METERS[dimension])
                totals[key] = totals.get(key, 0) + value
    return totals


async def seed(pool: asyncpg.Pool, fake_stripe: FakeStripe) -> dict[str, str]:
    """Two linked customers over three closed hours, one unlinked; returns id -> cus_."""
    links = {"acme": fake_stripe.add_customer("Acme"), "beta": fake_stripe.add_customer("Beta")}
    for customer, stripe_id in links.items():
        await add_customer(pool, customer, stripe_id)
    await add_customer(pool, "nolink", None)
    for hours_ago in (4, 3, 2):
        start = THIS_HOUR - hours_ago * HOUR
        await add_event(pool, "acme", start + timedelta(minutes=5), cached=40)
        await add_event(pool, "acme", start + timedelta(minutes=50), price="0.0000005")
        await add_event(pool, "beta", start + timedelta(minutes=30), status=500, price="0")
        await add_event(pool, "nolink", start + timedelta(minutes=1))
    await add_event(pool, "acme", THIS_HOUR + timedelta(seconds=1))  # open window
    return links


async def statuses(pool: asyncpg.Pool) -> dict[str, str]:
    return {
        r["identifier"]: r["status"]
        for r in await pool.fetch("SELECT identifier, status FROM billing_sync")
    }


async def test_two_runs_send_each_identifier_once_and_totals_equal_stored_events(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    links = await seed(pool, fake_stripe)

    first = await syncer(pool, stripe_api).run()
    assert first.ok and first.sent and first.failed == [] and first.pending == []
    assert first.missing_stripe_customer == {"nolink": 3}
    assert await expected_totals(pool, links, THIS_HOUR) == fake_stripe.totals()
    assert len(fake_stripe.meter_events) == len(first.sent) == len(fake_stripe.meter_event_posts)
    assert set(fake_stripe.meter_events) == set(await statuses(pool))
    assert set((await statuses(pool)).values()) == {"sent"}

    second = await syncer(pool, stripe_api).run()
    assert second.ok and second.sent == [] and second.planned == []
    assert len(fake_stripe.meter_event_posts) == len(first.sent)  # nothing new reached Stripe


async def test_only_windows_closed_before_until_and_the_settle_delay_are_sent(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await add_customer(pool, "acme", fake_stripe.add_customer())
    await add_event(pool, "acme", THIS_HOUR - 3 * HOUR)
    await add_event(pool, "acme", THIS_HOUR - 2 * HOUR)

    report = await syncer(pool, stripe_api).run(until=THIS_HOUR - HOUR + timedelta(minutes=10))
    assert {r.window_start for r in report.sent} == {THIS_HOUR - 3 * HOUR}  # 2h window unsettled
    report = await syncer(pool, stripe_api).run(until=NOW + timedelta(days=1))  # never beyond now
    assert {r.window_start for r in report.sent} == {THIS_HOUR - 2 * HOUR}
    assert all(e["timestamp"] <= NOW.timestamp() for e in fake_stripe.meter_events.values())


async def test_price_micros_sums_exact_usd_then_rounds_half_even_once_per_window(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await add_customer(pool, "acme", fake_stripe.add_customer())
    hour_a, hour_b = THIS_HOUR - 3 * HOUR, THIS_HOUR - 2 * HOUR
    for price in ("0.0000004", "0.0000004", "0.0000004", "0.0000003"):  # 1.5 micros
        await add_event(pool, "acme", hour_a + timedelta(minutes=1), price=price)
    await add_event(pool, "acme", hour_b, price="0.0000025")  # 2.5 micros
    await add_event(pool, "acme", hour_b, price=None)  # unpriced adds nothing

    report = await syncer(pool, stripe_api).run()
    micros = {r.window_start: r.value for r in report.sent if r.dimension == "price_micros"}
    assert micros == {hour_a: 2, hour_b: 2}  # per-event rounding would have given 0 and 2


async def test_crash_mid_run_then_resume_sends_no_duplicate_and_leaves_no_gap(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    links = await seed(pool, fake_stripe)

    class Crash(Exception):
        pass

    class CrashingSender:
        """Delivers to Stripe, then dies on the 4th event before its answer is recorded."""

        def __init__(self) -> None:
            self.calls = 0

        async def create_meter_event(self, event: MeterEventRequest) -> MeterEventAnswer:
            answer = await stripe_api.create_meter_event(event)
            self.calls += 1
            if self.calls == 4:
                raise Crash
            return answer

        async def stream_meter_events(
            self, events: Sequence[MeterEventRequest]
        ) -> MeterEventAnswer:
            raise AssertionError("not used")

    with pytest.raises(Crash):
        await syncer(pool, CrashingSender()).run()
    recorded = await statuses(pool)
    assert list(recorded.values()).count("sent") == 3
    assert len(fake_stripe.meter_events) == 4  # Stripe got one more than we recorded

    resumed = await syncer(pool, stripe_api).run()
    assert resumed.ok and resumed.duplicates == 1 and resumed.planned == []
    assert len(resumed.sent) == len(recorded) - 3
    assert set(fake_stripe.meter_events) == set(recorded)  # no gap, nothing extra
    assert await expected_totals(pool, links, THIS_HOUR) == fake_stripe.totals()
    posted = fake_stripe.posted_identifiers()
    assert len(posted) == len(recorded) + 1  # the crashed one, re-asked once
    assert set((await statuses(pool)).values()) == {"sent"}


async def test_429_and_5xx_are_retried_with_growing_backoff(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await add_customer(pool, "acme", fake_stripe.add_customer())
    await add_event(pool, "acme", THIS_HOUR - 2 * HOUR)
    fake_stripe.fail_next(429, count=2)
    fake_stripe.fail_next(503)
    sleeps = Sleeps()

    report = await syncer(pool, stripe_api, sleeps, meters={"requests": "tollbooth_requests"}).run()
    assert report.ok and len(report.sent) == 1
    assert len(sleeps.delays) == 3
    assert 0.25 <= sleeps.delays[0] <= 0.5 and 1.0 <= sleeps.delays[2] <= 2.0  # doubling
    attempts = await pool.fetchval("SELECT attempts FROM billing_sync")
    assert attempts == 4
    assert fake_stripe.totals() == {(next(iter(fake_stripe.customers)), "tollbooth_requests"): 1}


async def test_should_retry_false_is_not_retried_and_the_next_run_resends_it(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await add_customer(pool, "acme", fake_stripe.add_customer())
    await add_event(pool, "acme", THIS_HOUR - 2 * HOUR)
    fake_stripe.fail_next(500, should_retry="false")
    sleeps = Sleeps()
    only_requests = {"requests": "tollbooth_requests"}

    report = await syncer(pool, stripe_api, sleeps, meters=only_requests).run()
    assert not report.ok and len(report.failed) == 1 and sleeps.delays == []
    row = await pool.fetchrow("SELECT status, stripe_response, error FROM billing_sync")
    assert row["status"] == "failed" and row["stripe_response"]["error"]["type"] == "api_error"

    again = await syncer(pool, stripe_api, meters=only_requests).run()
    assert again.ok and [r.identifier for r in again.sent] == [report.failed[0].identifier]
    assert len(fake_stripe.meter_events) == 1


async def test_timeout_after_stripe_kept_the_event_counts_as_delivered_once(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await add_customer(pool, "acme", fake_stripe.add_customer())
    await add_event(pool, "acme", THIS_HOUR - 2 * HOUR)
    fake_stripe.stall_next(1.0, record=True)  # the client gives up after 0.3 s

    report = await syncer(pool, stripe_api, meters={"requests": "tollbooth_requests"}).run()
    assert report.ok and report.duplicates == 1
    assert len(fake_stripe.meter_events) == 1 and len(fake_stripe.meter_event_posts) == 2
    response = await pool.fetchval("SELECT stripe_response FROM billing_sync")
    assert "already exists" in response["error"]["message"]


async def test_persistent_5xx_leaves_rows_pending_and_the_next_run_resumes(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await add_customer(pool, "acme", fake_stripe.add_customer())
    await add_event(pool, "acme", THIS_HOUR - 3 * HOUR)
    await add_event(pool, "acme", THIS_HOUR - 2 * HOUR)
    fake_stripe.fail_next(502, count=3)

    report = await syncer(pool, stripe_api, max_retries=2).run()
    assert report.stopped_by is not None and "unavailable" in report.stopped_by
    assert len(report.pending) == 2 * 4 and report.sent == []  # no cached tokens
    assert set((await statuses(pool)).values()) == {"pending"}

    resumed = await syncer(pool, stripe_api).run()
    assert resumed.ok and len(resumed.sent) == 2 * 4 and resumed.planned == []


async def test_late_event_into_a_sent_window_goes_as_a_correction(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    links = {"acme": fake_stripe.add_customer()}
    await add_customer(pool, "acme", links["acme"])
    window = THIS_HOUR - 2 * HOUR
    await add_event(pool, "acme", window + timedelta(minutes=1), input_tokens=100)
    await syncer(pool, stripe_api).run()

    await add_event(pool, "acme", window + timedelta(minutes=59), input_tokens=7)
    report = await syncer(pool, stripe_api).run()
    assert {(r.dimension, r.seq, r.value) for r in report.sent} >= {("input_tokens", 1, 7)}
    assert all(r.seq == 1 for r in report.sent)
    correction = next(r for r in report.sent if r.dimension == "input_tokens")
    assert correction.identifier == meter_identifier("acme", "input_tokens", window, 1, 1)
    assert fake_stripe.meter_events[correction.identifier]["timestamp"] == int(window.timestamp())
    assert await expected_totals(pool, links, THIS_HOUR) == fake_stripe.totals()


async def test_windows_older_than_35_days_are_skipped_and_reported_once(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await add_customer(pool, "acme", fake_stripe.add_customer())
    await add_event(pool, "acme", THIS_HOUR - timedelta(days=36))
    await add_event(pool, "acme", THIS_HOUR - 2 * HOUR)

    report = await syncer(pool, stripe_api, meters={"requests": "tollbooth_requests"}).run()
    assert [r.window_start for r in report.skipped] == [THIS_HOUR - timedelta(days=36)]
    assert "35 days" in (report.skipped[0].error or "")
    assert [r.window_start for r in report.sent] == [THIS_HOUR - 2 * HOUR]
    assert len(fake_stripe.meter_event_posts) == 1

    again = await syncer(pool, stripe_api, meters={"requests": "tollbooth_requests"}).run()
    assert again.skipped == [] and again.sent == []


async def test_customer_without_stripe_id_is_listed_then_sent_once_linked(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await add_customer(pool, "late", None)
    await add_event(pool, "late", THIS_HOUR - 2 * HOUR)
    report = await syncer(pool, stripe_api).run()
    assert report.missing_stripe_customer == {"late": 1} and report.sent == []

    await pool.execute("UPDATE customers SET stripe_customer_id = $1", fake_stripe.add_customer())
    report = await syncer(pool, stripe_api).run()
    assert report.missing_stripe_customer == {} and len(report.sent) == 4  # no cached tokens


async def test_v2_stream_sends_batches_of_100_once_and_renews_its_session(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    links = {}
    for n in range(30):  # 30 customers x 5 meters x 1 window = 150 events
        links[f"c{n}"] = fake_stripe.add_customer()
        await add_customer(pool, f"c{n}", links[f"c{n}"])
        await add_event(pool, f"c{n}", THIS_HOUR - 2 * HOUR, cached=5)

    report = await syncer(pool, stripe_api, use_v2_stream=True).run()
    assert report.ok and len(report.sent) == 150
    assert [len(b) for b in fake_stripe.stream_batches] == [100, 50]
    assert await expected_totals(pool, links, THIS_HOUR) == fake_stripe.totals()

    fake_stripe.expire_stream_sessions()
    await add_event(pool, "c0", THIS_HOUR - 2 * HOUR)
    again = await syncer(pool, stripe_api, use_v2_stream=True).run()
    assert again.ok and {r.seq for r in again.sent} == {1}
    assert await expected_totals(pool, links, THIS_HOUR) == fake_stripe.totals()


async def test_dry_run_records_and_sends_nothing(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    await seed(pool, fake_stripe)
    report = await syncer(pool, None).run(dry_run=True)
    assert report.dry_run and len(report.pending) == 3 * 5 + 3 * 2  # beta: no requests, price
    assert await statuses(pool) == {} and fake_stripe.meter_event_posts == []
    real = await syncer(pool, stripe_api).run()
    assert [r.identifier for r in real.sent] == [r.identifier for r in report.pending]


async def test_a_second_concurrent_run_is_refused(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", SYNC_LOCK_KEY)
        with pytest.raises(SyncBusyError):
            await syncer(pool, stripe_api).run()
        await conn.execute("SELECT pg_advisory_unlock($1)", SYNC_LOCK_KEY)


async def test_reconcile_shows_unsent_usage_and_matches_stripe_summaries(
    pool: asyncpg.Pool, fake_stripe: FakeStripe, stripe_api: StripeApi
) -> None:
    links = await seed(pool, fake_stripe)
    await syncer(pool, stripe_api).run()
    start = THIS_HOUR - 4 * HOUR
    await add_event(pool, "acme", start + timedelta(minutes=3), input_tokens=11)  # not synced

    lines = await reconcile(
        pool,
        start=start,
        end=THIS_HOUR + HOUR,
        window_s=3600,
        meters=METERS,
        version=1,
        stripe=stripe_api,
    )
    by_key = {(ln.customer_id, ln.dimension): ln for ln in lines}
    acme_input = by_key[("acme", "input_tokens")]
    assert acme_input.difference == 11 + 100  # the late event and the open window's event
    assert acme_input.stripe == acme_input.sent == 3 * 200
    assert acme_input.stripe_difference == 0
    assert by_key[("nolink", "requests")].sent == 0
    assert by_key[("nolink", "requests")].stripe is None
    beta_input = by_key[("beta", "input_tokens")]
    assert beta_input.ours == beta_input.sent == beta_input.stripe == 300
    assert fake_stripe.totals()[(links["beta"], "tollbooth_input_tokens")] == 300


def test_identifiers_are_deterministic_and_fit_stripe_limit() -> None:
    window = datetime(2026, 5, 1, 13, tzinfo=UTC)
    assert meter_identifier("acme", "requests", window, 1, 0) == "tb1:requests:1777640400:0:acme"
    long_id = "x" * 64
    first = meter_identifier(long_id, "cached_input_tokens", window, 999, 12)
    assert first == meter_identifier(long_id, "cached_input_tokens", window, 999, 12)
    assert len(first) <= 100 and "#" in first
    assert first != meter_identifier("y" * 64, "cached_input_tokens", window, 999, 12)


def test_config_dimensions_match_storage_dimensions() -> None:
    StripeConfig(meters=dict.fromkeys(DIMENSIONS, "m"))
    with pytest.raises(ValueError, match="unknown dimension"):
        StripeConfig(meters={"tokens": "m"})
    assert StripeConfig(window="15m").window_s == 900
    with pytest.raises(ValueError, match="divide a day"):
        StripeConfig(window="7m")
