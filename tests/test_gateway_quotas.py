"""Quotas through the whole gateway with the official OpenAI SDK: a per-minute refusal is
retried by the SDK and gets in; a monthly refusal stops the SDK at once; refused requests
never reach the provider; rate-limit headers ride on every proxied response; the customer's
limits and status are readable with its own key."""

from __future__ import annotations

import time

import aiohttp
import openai
import pytest

from gateway import keys
from tests.harness import running_gateway

MESSAGES = [{"role": "user", "content": "hello"}]
WINDOW_MS = 2000  # the "minute" of these tests


def tiers(**limits: object) -> dict[str, object]:
    return {"free": {"limits": limits}}


async def test_per_minute_refusal_is_retried_by_the_sdk_and_succeeds(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tiers=tiers(requests_per_minute=2),
        quota_window_ms=WINDOW_MS,
    ) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=2)
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        started = time.monotonic()
        reply = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )  # type: ignore[arg-type]
        waited = time.monotonic() - started
        assert reply.http_response.status_code == 200
        assert reply.retries_taken >= 1  # it was refused, then let in after Retry-After
        assert 0.5 < waited < 2 * WINDOW_MS / 1000 + 1
        assert len(gw.mock_requests) == 3  # refusals never reached the provider
        refusals = gw.app[keys.quotas].refusals
        assert refusals["requests_per_minute"] == reply.retries_taken


async def test_monthly_refusal_stops_the_sdk_at_once(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=tiers(requests_per_month=1)
    ) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=2)
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        error = refused.value
        assert error.code == "insufficient_quota"
        assert error.response.headers["x-should-retry"] == "false"
        assert int(error.response.headers["retry-after"]) > 0
        assert gw.app[keys.quotas].refusals["requests_per_month"] == 1  # no SDK retry
        assert len(gw.mock_requests) == 1
        assert len(await gw.events(wait_for=2, timeout_s=0.5)) == 1


async def test_rate_limit_headers_on_proxied_responses(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=tiers(requests_per_minute=10)
    ) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )  # type: ignore[arg-type]
        headers = raw.http_response.headers
        assert headers["x-ratelimit-limit-requests"] == "10"
        assert headers["x-ratelimit-remaining-requests"] == "9"
        assert headers["x-ratelimit-reset-requests"]
        assert "x-ratelimit-limit-tokens" not in headers  # unlimited window: omitted
        assert headers["x-request-id"]


async def test_customer_reads_its_limits_and_status(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=tiers(requests_per_month=5)
    ) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        for _ in range(4):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        auth = {"Authorization": f"Bearer {gw.key}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.base_url + "/usage/limits", headers=auth) as r:
                assert r.status == 200
                body = await r.json()
            async with session.get(gw.base_url + "/usage/quota-status", headers=auth) as r:
                status = await r.json()
            async with session.get(gw.base_url + "/usage/limits") as r:
                assert r.status == 401
        monthly = body["limits"]["requests_per_month"]
        assert (monthly["current"], monthly["limit"], monthly["remaining"]) == (4, 5, 1)
        assert body["customer_id"] == gw.customer_id and body["tier"] == "free"
        assert status["status"] == "approaching_limit"  # 80 % used
