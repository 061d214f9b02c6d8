"""POST /billing/portal and POST /stripe/webhook, served by a real aiohttp app on loopback, with
the fake Stripe behind the portal, Stripe's own signing scheme on the webhooks, real Postgres,
and (for suspension) a whole gateway answering 402 through the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.auth import Authenticator
from gateway.config import parse_settings
from gateway.metrics import Metrics
from gateway.middleware import error_middleware
from gateway.routes.billing import add_billing_routes
from gateway.runtime import Runtime
from pricing.catalog import Catalog
from storage.accounts import AccountStore
from storage.postgres import create_pool, migrate
from tests.fake_stripe import API_KEY, FakeStripe, running_fake_stripe
from tests.harness import running_gateway

WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
RETURN_URL = "https://app.example.com/account"


@dataclass
class Billing:
    url: str
    pool: asyncpg.Pool
    fake: FakeStripe
    key: str  # a customer key of "acme"
    stripe_customer_id: str


def settings_yaml(fake_url: str, database_url: str) -> bytes:
    return yaml.safe_dump(
        {
            "storage": {"database_url": database_url},
            "providers": {"openai": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "tiers": {"free": {"limits": {}}, "pro": {"limits": {}}, "team": {"limits": {}}},
            "billing": {
                "stripe": {
                    "api_key_env": "TB_TEST_STRIPE_KEY",
                    "api_base": fake_url,
                    "webhook_secret_env": "TB_TEST_STRIPE_WHSEC",
                    "portal_return_url": RETURN_URL,
                    "price_tiers": {
                        "price_pro_monthly": "pro",
                        "price_team_monthly": "team",
                        "price_ghost": "enterprise",
                    },
                }
            },
        }
    ).encode()


def sign(payload: bytes, *, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """Stripe's scheme: HMAC-SHA256 of "{t}.{payload}", sent as `t=...,v1=...`."""
    stamp = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256)
    return f"t={stamp},v1={mac.hexdigest()}"


def event(event_type: str, obj: dict[str, Any], *, created: int | None = None) -> bytes:
    return json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()) if created is None else created,
            "livemode": False,
            "api_version": "2025-04-30.basil",
            "data": {"object": obj},
        }
    ).encode()


def subscription(customer: str, price: str, status: str = "active") -> dict[str, Any]:
    return {
        "id": "sub_123",
        "object": "subscription",
        "customer": customer,
        "status": status,
        "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": price}}]},
    }


@pytest.fixture
async def billing(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Billing]:
    monkeypatch.setenv("TB_TEST_STRIPE_KEY", API_KEY)
    monkeypatch.setenv("TB_TEST_STRIPE_WHSEC", WEBHOOK_SECRET)
    async with running_fake_stripe() as fake:
        settings = parse_settings(settings_yaml(fake.url, fresh_database_url), "test.yaml")
        pool = await create_pool(fresh_database_url)
        await migrate(pool)
        accounts = AccountStore(pool)
        app = web.Application(middlewares=[error_middleware])
        app[keys.runtime] = Runtime(settings, Catalog.load_default())
        app[keys.metrics] = Metrics()  # the error middleware counts refusals
        app[keys.pool] = pool
        app[keys.accounts] = accounts
        app[keys.authenticator] = Authenticator(accounts, ttl_s=0.01)
        add_billing_routes(app)
        stripe_id = fake.add_customer("Acme")
        await accounts.create_customer("acme", tier="free", stripe_customer_id=stripe_id)
        _, key = await accounts.create_key("acme")
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            yield Billing(str(server.make_url("")).rstrip("/"), pool, fake, key, stripe_id)
        finally:
            await server.close()
            await pool.close()


async def post(
    url: str, *, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers or {}) as response,
    ):
        return response.status, await response.json()


async def webhook(
    b: Billing, payload: bytes, signature: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": sign(payload) if signature is None else signature,
    }
    return await post(f"{b.url}/stripe/webhook", body=payload, headers=headers)


async def customer_row(b: Billing) -> asyncpg.Record:
    row = await b.pool.fetchrow("SELECT tier, suspended FROM customers WHERE id = 'acme'")
    assert row is not None
    return row


# -- portal ----------------------------------------------------------------------------


async def test_portal_returns_the_fake_stripe_session_url_for_the_key_customer(
    billing: Billing,
) -> None:
    status, body = await post(
        f"{billing.url}/billing/portal", headers={"Authorization": f"Bearer {billing.key}"}
    )
    assert status == 200
    session = billing.fake.portal_sessions[-1]
    assert body == {
        "object": "billing_portal.session",
        "url": session["url"],
        "return_url": RETURN_URL,
    }
    assert session["customer"] == billing.stripe_customer_id
    assert session["return_url"] == RETURN_URL


async def test_portal_return_url_must_stay_on_the_configured_origin(billing: Billing) -> None:
    auth = {"x-api-key": billing.key, "Content-Type": "application/json"}
    same = json.dumps({"return_url": "https://app.example.com/billing?done=1"}).encode()
    status, body = await post(f"{billing.url}/billing/portal", body=same, headers=auth)
    assert status == 200 and body["return_url"] == "https://app.example.com/billing?done=1"
    other = json.dumps({"return_url": "https://evil.example.net/"}).encode()
    status, body = await post(f"{billing.url}/billing/portal", body=other, headers=auth)
    assert status == 400 and body["error"]["param"] == "return_url"
    assert len(billing.fake.portal_sessions) == 1


async def test_portal_refuses_a_missing_key_and_an_unlinked_customer(billing: Billing) -> None:
    status, body = await post(f"{billing.url}/billing/portal")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    await billing.pool.execute("UPDATE customers SET stripe_customer_id = NULL")
    status, body = await post(
        f"{billing.url}/billing/portal", headers={"Authorization": f"Bearer {billing.key}"}
    )
    assert status == 400 and body["error"]["code"] == "billing_account_missing"
    assert billing.fake.portal_sessions == []


# -- webhooks --------------------------------------------------------------------------


async def test_good_signature_subscription_sets_the_tier_from_the_price(billing: Billing) -> None:
    payload = event(
        "customer.subscription.created",
        subscription(billing.stripe_customer_id, "price_pro_monthly"),
    )
    status, body = await webhook(billing, payload)
    assert (status, body["action"]) == (200, "tier")
    assert (await customer_row(billing))["tier"] == "pro"

    deleted = event(
        "customer.subscription.deleted",
        subscription(billing.stripe_customer_id, "price_pro_monthly", "canceled"),
    )
    status, body = await webhook(billing, deleted)
    assert (status, body["action"]) == (200, "tier")
    assert (await customer_row(billing))["tier"] == "free"  # the first tier


async def test_bad_signature_is_refused_and_changes_nothing(billing: Billing) -> None:
    payload = event(
        "customer.subscription.created",
        subscription(billing.stripe_customer_id, "price_pro_monthly"),
    )
    for signature in (sign(payload, secret="whsec_wrong"), "t=1,v1=deadbeef", "garbage"):
        status, body = await webhook(billing, payload, signature)
        assert status == 400 and body["error"]["code"] == "invalid_signature"
    tampered = payload.replace(b"price_pro_monthly", b"price_team_monthly")
    status, _ = await webhook(billing, tampered, sign(payload))
    assert status == 400
    assert (await customer_row(billing))["tier"] == "free"
    assert await billing.pool.fetchval("SELECT count(*) FROM stripe_webhook_events") == 0


async def test_replayed_event_is_applied_once_and_a_stale_signature_is_refused(
    billing: Billing,
) -> None:
    failed = event(
        "invoice.payment_failed",
        {"id": "in_1", "object": "invoice", "customer": billing.stripe_customer_id},
        created=int(time.time()) - 60,
    )
    failed_signature = sign(failed)
    assert (await webhook(billing, failed, failed_signature))[1]["action"] == "suspend"
    assert (await customer_row(billing))["suspended"] is True
    paid = event(
        "invoice.paid", {"id": "in_1", "object": "invoice", "customer": billing.stripe_customer_id}
    )
    assert (await webhook(billing, paid))[1]["action"] == "unsuspend"

    status, body = await webhook(billing, failed, failed_signature)  # replayed delivery
    assert (status, body["action"]) == (200, "duplicate")
    assert (await customer_row(billing))["suspended"] is False
    assert await billing.pool.fetchval("SELECT count(*) FROM stripe_webhook_events") == 2

    replay = event(
        "invoice.payment_failed",
        {"id": "in_2", "object": "invoice", "customer": billing.stripe_customer_id},
    )
    status, _ = await webhook(billing, replay, sign(replay, at=int(time.time()) - 3600))
    assert status == 400  # outside the 300 s tolerance
    assert (await customer_row(billing))["suspended"] is False


async def test_an_older_event_arriving_late_is_recorded_not_applied(billing: Billing) -> None:
    now = int(time.time())
    newer = event(
        "customer.subscription.updated",
        subscription(billing.stripe_customer_id, "price_team_monthly"),
        created=now,
    )
    older = event(
        "customer.subscription.updated",
        subscription(billing.stripe_customer_id, "price_pro_monthly"),
        created=now - 30,
    )
    assert (await webhook(billing, newer))[1]["action"] == "tier"
    assert (await webhook(billing, older))[1]["action"] == "stale"
    assert (await customer_row(billing))["tier"] == "team"


async def test_a_price_mapped_to_an_unconfigured_tier_is_left_for_redelivery(
    billing: Billing,
) -> None:
    payload = event(
        "customer.subscription.created", subscription(billing.stripe_customer_id, "price_ghost")
    )
    status, _ = await webhook(billing, payload)
    assert status == 503
    assert await billing.pool.fetchval("SELECT count(*) FROM stripe_webhook_events") == 0
    assert (await customer_row(billing))["tier"] == "free"


async def test_payment_failure_makes_the_gateway_answer_402_until_invoice_paid(
    billing: Billing, fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gateway:
        stripe_id = billing.fake.add_customer("Gateway customer")
        await billing.pool.execute(
            "UPDATE customers SET stripe_customer_id = $1 WHERE id = $2",
            stripe_id,
            gateway.customer_id,
        )
        client = openai.AsyncOpenAI(
            api_key=gateway.key, base_url=gateway.openai_base_url, max_retries=0
        )
        messages: Any = [{"role": "user", "content": "hi"}]
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages)

        invoice = {"id": "in_9", "object": "invoice", "customer": stripe_id}
        assert (await webhook(billing, event("invoice.payment_failed", invoice)))[0] == 200
        await _wait_for_cache()
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert refused.value.status_code == 402

        assert (await webhook(billing, event("invoice.paid", invoice)))[0] == 200
        await _wait_for_cache()
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert reply.choices


async def _wait_for_cache() -> None:
    """The gateway caches a key's principal for 2 s (gateway.auth)."""
    await asyncio.sleep(2.2)
