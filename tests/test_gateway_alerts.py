"""Usage alerts through a running gateway, with the mock provider and a real webhook receiver:
a threshold crossed only once a request is settled (tokens and spend), the 100 % alert of a
refusal sent once, and two gateway apps on one Redis sending one webhook per threshold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.alerts import sign
from gateway.app import create_app
from gateway.config import parse_settings
from tests.harness import FrontTestServer, Gateway, gateway_config, running_gateway

SECRET = "alert-secret-for-tests"
PROMPT = [{"role": "user", "content": "one two three four five"}]  # 5 tokens; the mock: 12


@dataclass
class Hook:
    url: str = ""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    signatures: list[tuple[bytes, str]] = field(default_factory=list)

    async def settled(self, count: int) -> list[tuple[str, int, str]]:
        """(limit, threshold, trigger) of every alert, once `count` arrived and no more came."""
        for _ in range(100):
            if len(self.alerts) >= count:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # anything more would come now
        return sorted((a["limit"], a["threshold_percent"], a["trigger"]) for a in self.alerts)


@pytest.fixture
async def hook(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Hook]:
    monkeypatch.setenv("TOLLBOOTH_ALERT_SECRET", SECRET)
    received = Hook()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        received.alerts.append(orjson.loads(body))
        received.signatures.append((body, request.headers["X-Tollbooth-Signature"]))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    received.url = str(server.make_url("/hook"))
    try:
        yield received
    finally:
        await server.close()


def client(gw: Gateway, base_url: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=gw.key, base_url=base_url or gw.openai_base_url, max_retries=0
    )


async def chat(
    api: openai.AsyncOpenAI, *, max_tokens: int, output_tokens: int, delay_ms: int = 0
) -> None:
    headers = {"x-mock-output-tokens": str(output_tokens)}
    if delay_ms:
        headers |= {"x-mock-error": "slow", "x-mock-delay-ms": str(delay_ms)}
    await api.chat.completions.create(
        model="gpt-4o",
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        extra_headers=headers,
    )


async def month_used(gw: Gateway, limit: str, until: int | str) -> Any:
    """/usage/limits' `current` of `limit`, once it reads `until` (settles lag a moment)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(
                gw.base_url + "/usage/limits", headers={"Authorization": f"Bearer {gw.key}"}
            ) as r:
                window = (await r.json())["limits"][limit]
            if window["current"] == until:
                return window
            await asyncio.sleep(0.05)
    pytest.fail(f"{limit} never reached {until}: {window}")


async def test_a_threshold_crossed_when_the_request_is_settled_is_alerted(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, hook: Hook
) -> None:
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tiers={"free": {"limits": {"tokens_per_month": 100}}},
        extra_config={"alerts": {"webhook_url": hook.url}},
    ) as gw:
        counter = gw.app[keys.tokens]
        assert counter.reservation_tokens("gpt-4o", "one two three four five") + 70 == 75
        await chat(client(gw), max_tokens=70, output_tokens=70)  # reserved 75, used 12 + 70
        window = await month_used(gw, "tokens_per_month", 82)
        assert window["status"] == "approaching_limit"
        assert await hook.settled(1) == [("tokens_per_month", 80, "settlement")]
        with pytest.raises(openai.RateLimitError):  # 82 + 75 > 100
            await chat(client(gw), max_tokens=70, output_tokens=70)
        assert await hook.settled(2) == [
            ("tokens_per_month", 80, "settlement"),
            ("tokens_per_month", 100, "refusal"),
        ]
    first, limit_reached = sorted(hook.alerts, key=lambda a: a["threshold_percent"])
    assert first["type"] == "usage.threshold_crossed" and first["used"] == "82"
    assert first["limit_value"] == "100" and first["customer_id"] == gw.customer_id
    assert limit_reached["type"] == "usage.limit_reached" and limit_reached["used"] == "82"
    for body, header in hook.signatures:
        stamp = int(header.split(",")[0].removeprefix("t="))
        assert header == sign(SECRET, stamp, body)


async def test_a_spend_cap_crossed_by_one_request_is_alerted(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, hook: Hook
) -> None:
    dollar_a_token = {
        "markup_percent": "0",
        "per_request_usd": "0",
        "models": {"gpt-4o": {"input_per_mtok": "1000000", "output_per_mtok": "1000000"}},
    }
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tiers={"free": {"limits": {"spend_per_month_usd": "100.00"}}},
        pricing=dollar_a_token,
        extra_config={"alerts": {"webhook_url": hook.url}},
    ) as gw:
        pricing = gw.app[keys.runtime].current.pricing
        assert pricing.max_charge(
            "gpt-4o", 5, 70, customer_id=gw.customer_id, tier="free"
        ) == Decimal(75)  # the reservation: under 80 %
        await chat(client(gw), max_tokens=70, output_tokens=70)
        [event] = await gw.events(wait_for=1)
        assert event["price_usd"] == Decimal(82)
        await month_used(gw, "spend_per_month_usd", "82.000000")
        assert await hook.settled(1) == [("spend_per_month_usd", 80, "settlement")]
        with pytest.raises(openai.RateLimitError):
            await chat(client(gw), max_tokens=70, output_tokens=70)
        assert await hook.settled(2) == [
            ("spend_per_month_usd", 80, "settlement"),
            ("spend_per_month_usd", 100, "refusal"),
        ]
    assert {a["used"] for a in hook.alerts} == {"82.000000"}


async def test_a_refusal_sends_the_limit_reached_alert_once(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, hook: Hook
) -> None:
    tier = {"limits": {"tokens_per_month": 100}, "alert_thresholds_percent": [100]}
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tiers={"free": tier},
        extra_config={"alerts": {"webhook_url": hook.url}},
    ) as gw:
        await chat(client(gw), max_tokens=20, output_tokens=5)  # 17 used
        await month_used(gw, "tokens_per_month", 17)
        for _ in range(2):  # 17 + 5 + 95 > 100: refused, with code insufficient_quota
            with pytest.raises(openai.RateLimitError) as refused:
                await chat(client(gw), max_tokens=95, output_tokens=5)
            assert refused.value.code == "insufficient_quota"
        assert await hook.settled(1) == [("tokens_per_month", 100, "refusal")]
    [alert] = hook.alerts
    assert alert["type"] == "usage.limit_reached" and alert["used"] == "17"


@asynccontextmanager
async def second_gateway(
    gw: Gateway, database_url: str, redis_url: str, config: bytes
) -> AsyncIterator[str]:
    """Another gateway app on the same Postgres and Redis; its OpenAI base URL."""
    app = create_app(
        parse_settings(config, "second.yaml"), database_url=database_url, redis_url=redis_url
    )
    server = FrontTestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/v1"))
    finally:
        await server.close()


async def test_two_gateways_on_one_redis_send_one_webhook_per_threshold(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, hook: Hook
) -> None:
    tiers = {
        "free": {"limits": {"tokens_per_month": 100}, "alert_thresholds_percent": [50, 80, 100]}
    }
    alerts = {"alerts": {"webhook_url": hook.url}}
    async with (
        running_gateway(
            fresh_database_url, redis_url, monkeypatch, tiers=tiers, extra_config=alerts
        ) as gw,
        second_gateway(
            gw,
            fresh_database_url,
            redis_url,
            gateway_config(gw.mock_url, tiers=tiers, extra=alerts),
        ) as other,
    ):
        a, b = client(gw), client(gw, other)
        # Each request reserves 5 + 10 and uses 12 + 10; each pair is admitted before either
        # settles (the provider takes 300 ms), one request through each gateway.
        pair = [
            chat(a, max_tokens=10, output_tokens=10, delay_ms=300),
            chat(b, max_tokens=10, output_tokens=10, delay_ms=300),
        ]
        await asyncio.gather(*pair)  # admitted at 15 and 30, settled at 44
        await month_used(gw, "tokens_per_month", 44)
        pair = [
            chat(a, max_tokens=10, output_tokens=10, delay_ms=300),
            chat(b, max_tokens=10, output_tokens=10, delay_ms=300),
        ]
        await asyncio.gather(*pair)  # admitted at 59 and 74 (50 %), settled at 88 (80 %)
        await month_used(gw, "tokens_per_month", 88)
        refusals = await asyncio.gather(
            chat(a, max_tokens=10, output_tokens=10),
            chat(b, max_tokens=10, output_tokens=10),
            return_exceptions=True,
        )  # 88 + 15 > 100 (100 %)
        assert all(isinstance(r, openai.RateLimitError) for r in refusals), refusals
        assert await hook.settled(3) == [
            ("tokens_per_month", 50, "admission"),
            ("tokens_per_month", 80, "settlement"),
            ("tokens_per_month", 100, "refusal"),
        ]
