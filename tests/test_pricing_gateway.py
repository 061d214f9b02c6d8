"""The running gateway prices each request with the config's overrides and the tier's rates
(gateway/metering.py `_charge`), and re-rating the stored event gives the same money: the
gateway and `tollbooth pricing rerate` price alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import openai
import pytest

from gateway import keys
from pricing.rules import PricingRules
from storage.postgres import create_pool
from storage.reports.invoice_queries import rerate_events
from tests.harness import Gateway, running_gateway

D = Decimal
TEN_PLACES = D("1e-10")
PRICING: dict[str, Any] = {
    "markup_percent": "20",
    "per_request_usd": "0.001",
    "per_compute_minute_usd": "0.6",
    "unknown_model": "reject",
    "models": {"gpt-4o": {"input_per_mtok": "2.00"}},
}
TIERS: dict[str, Any] = {
    "free": {"limits": {}},
    "pro": {"limits": {}, "pricing": {"markup_percent": "50", "per_request_usd": "0"}},
}
MESSAGES: Any = [{"role": "user", "content": "Price this request, please"}]


@pytest.fixture
async def gw(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tier="pro", tiers=TIERS, pricing=PRICING
    ) as gateway:
        yield gateway


def _rules(gw: Gateway) -> PricingRules:
    return gw.app[keys.runtime].current.pricing


async def test_request_is_priced_with_override_tier_rates_and_compute_time(gw: Gateway) -> None:
    client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
    reply = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=12)
    assert reply.usage is not None
    [row] = await gw.events()
    # The override's input price (2.00, not the catalog's 2.50), the catalog's output (10.00).
    cost = (
        D(reply.usage.prompt_tokens) * D("2.00") + D(reply.usage.completion_tokens) * D("10.00")
    ) / 1_000_000
    # Tier pro: markup 50 %, no per-request fee; $0.6 per minute of the request's latency.
    price = cost * D("1.5") + D("0.6") * row["latency_ms"] / 60_000
    assert row["cost_usd"] == cost.quantize(TEN_PLACES, rounding=ROUND_HALF_EVEN)
    assert row["price_usd"] == price.quantize(TEN_PLACES, rounding=ROUND_HALF_EVEN)
    assert row["price_version"] == _rules(gw).version

    pool = await create_pool(gw.database_url)
    try:
        report = await rerate_events(pool, _rules(gw), since=row["created_at"])
    finally:
        await pool.close()
    assert (report.events_seen, report.events_changed) == (1, 0)


async def test_a_provider_error_pays_no_fees(gw: Gateway) -> None:
    client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=5, extra_headers={"x-mock-error": "500"}
        )
    [row] = await gw.events()
    assert row["status_code"] == 500
    assert (row["cost_usd"], row["price_usd"]) == (0, 0)  # no tokens, no compute fee
    assert row["price_version"] == _rules(gw).version
