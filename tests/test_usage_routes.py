"""The usage routes over real HTTP: a customer key reads only its own customer's usage, the
numbers equal the raw events, another customer's data never shows, and /admin/usage/...
needs the admin token."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.app import create_app
from gateway.config import parse_settings
from gateway.mock_provider.app import MockOptions, create_mock_app
from gateway.routes.usage import add_usage_routes
from storage.accounts import AccountStore
from tests.harness import PROVIDER_KEY, gateway_config
from tests.usage_fixtures import insert_events, make_event, raw_totals

TOKEN = "admin-token-usage-0123456789"


@dataclass
class Site:
    base_url: str
    pool: asyncpg.Pool
    acme_key: str
    beta_key: str

    async def get(self, path: str, key: str | None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base_url + path, headers=headers) as response,
        ):
            return response.status, await response.json()


def _has_route(app: Any, path: str) -> bool:
    return any(
        route.resource is not None and route.resource.canonical == path
        for route in app.router.routes()
    )


@pytest.fixture
async def site(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Site]:
    monkeypatch.setenv("TOLLBOOTH_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("TB_TEST_OPENAI_KEY", PROVIDER_KEY)
    monkeypatch.setenv("TB_TEST_ANTHROPIC_KEY", PROVIDER_KEY)
    mock = TestServer(create_mock_app(MockOptions()), host="127.0.0.1")
    await mock.start_server()
    settings = parse_settings(gateway_config(str(mock.make_url("")).rstrip("/")), "test.yaml")
    app = create_app(settings, database_url=fresh_database_url, redis_url=redis_url)
    if not _has_route(app, "/usage/daily"):  # until create_app wires them itself
        add_usage_routes(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        accounts: AccountStore = app[keys.accounts]
        made = {}
        for customer in ("acme", "beta"):
            await accounts.create_customer(customer, tier="free")
            made[customer] = (await accounts.create_key(customer, project_id="web"))[1]
        now = datetime.now(UTC)
        events = [
            make_event(
                now - timedelta(hours=h, minutes=7),
                customer_id=customer,
                project_id=project,
                model=model,
                price_usd=Decimal("0.0001") * h,
            )
            for h in range(1, 60)
            for customer, project, model in (
                ("acme", "web", "gpt-4o"),
                ("acme", None, "claude-x"),
                ("beta", "web", "gpt-4o"),
            )
        ]
        await insert_events(app[keys.pool], events)
        yield Site(str(server.make_url("")).rstrip("/"), app[keys.pool], made["acme"], made["beta"])
    finally:
        await server.close()
        await mock.close()


def _totals(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": body["requests"],
        "input_tokens": body["input_tokens"],
        "price_usd": Decimal(body["price_usd"]),
        "cost_usd": Decimal(body["cost_usd"]),
    }


async def _raw(site: Site, body: dict[str, Any], **scope: Any) -> dict[str, Any]:
    raw = await raw_totals(
        site.pool,
        datetime.fromisoformat(body["since"]),
        datetime.fromisoformat(body["until"]),
        **scope,
    )
    return {name: raw[name] for name in ("requests", "input_tokens", "price_usd", "cost_usd")}


async def test_a_customer_reads_only_its_own_usage(site: Site) -> None:
    status, daily = await site.get("/usage/daily?days=7&customer=beta", site.acme_key)
    assert status == 200 and daily["customer_id"] == "acme"  # the query cannot widen scope
    assert _totals(daily) == await _raw(site, daily, customer_id="acme")
    assert daily["requests"] == 118 and len(daily["days"]) == 8

    status, projects = await site.get("/usage/projects", site.acme_key)
    assert status == 200
    assert [(p["customer_id"], p["project_id"], p["requests"]) for p in projects["projects"]] == [
        ("acme", None, 59),
        ("acme", "web", 59),
    ]

    status, summary = await site.get("/usage/summary?project=web", site.acme_key)
    assert status == 200
    assert _totals(summary) == await _raw(site, summary, customer_id="acme", project_id="web")

    status, page = await site.get("/usage/events?limit=1000", site.acme_key)
    assert status == 200 and page["next_cursor"] is None
    acme_ids = {
        str(r["id"])
        for r in await site.pool.fetch("SELECT id FROM usage_events WHERE customer_id = 'acme'")
    }
    assert {event["id"] for event in page["events"]} == acme_ids
    assert all("metadata" not in event for event in page["events"])
    times = [event["created_at"] for event in page["events"]]
    assert times == sorted(times, reverse=True)


async def test_another_customers_events_never_show(site: Site) -> None:
    beta_ids = {
        str(r["id"])
        for r in await site.pool.fetch("SELECT id FROM usage_events WHERE customer_id = 'beta'")
    }
    seen: list[str] = []
    path = "/usage/events?limit=7&days=30"
    while True:
        status, page = await site.get(path, site.beta_key)
        assert status == 200 and len(page["events"]) <= 7
        seen += [event["id"] for event in page["events"]]
        if page["next_cursor"] is None:
            break
        path = f"/usage/events?limit=7&days=30&cursor={page['next_cursor']}"
    assert len(seen) == len(set(seen)) and set(seen) == beta_ids
    status, daily = await site.get("/usage/daily?model=claude-x", site.beta_key)
    assert status == 200 and daily["requests"] == 0  # acme's claude-x usage is not beta's


async def test_a_proxied_request_shows_in_the_events(site: Site) -> None:
    client = openai.AsyncOpenAI(
        api_key=site.beta_key, base_url=site.base_url + "/v1", max_retries=0
    )
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    request_id = raw.headers["x-request-id"]
    for _ in range(100):  # the writer flushes off the request path
        _, page = await site.get("/usage/events?limit=1", site.beta_key)
        if page["events"] and page["events"][0]["id"] == request_id:
            break
        await asyncio.sleep(0.05)
    [event] = page["events"]
    assert event["id"] == request_id and event["customer_id"] == "beta"
    assert event["project_id"] == "web" and event["input_tokens"] > 0


async def test_bad_parameters_are_refused(site: Site) -> None:
    for path, param in (
        ("/usage/events?limit=0", "limit"),
        ("/usage/events?limit=x", "limit"),
        ("/usage/events?limit=1001", "limit"),
        ("/usage/events?cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("/usage/daily?days=0", "days"),
        ("/usage/projects?days=x", "days"),
    ):
        status, body = await site.get(path, site.acme_key)
        assert status == 400 and body["error"]["param"] == param, path
    status, _ = await site.get("/usage/daily", None)
    assert status == 401
    status, _ = await site.get("/usage/events", "tb_" + uuid.uuid4().hex * 2)
    assert status == 401


async def test_admin_usage_routes_need_the_admin_token(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    for path in ("/admin/usage/daily", "/admin/usage/projects", "/admin/usage/events"):
        assert (await site.get(path, None))[0] == 401
        assert (await site.get(path, site.acme_key))[0] == 401  # a customer key is not one

    status, daily = await site.get("/admin/usage/daily?customer=beta&days=3", TOKEN)
    assert status == 200 and daily["customer_id"] == "beta"
    assert _totals(daily) == await _raw(site, daily, customer_id="beta")
    status, everyone = await site.get("/admin/usage/projects", TOKEN)
    assert status == 200 and everyone["customer_id"] is None
    assert _totals(everyone) == await _raw(site, everyone)
    assert {p["customer_id"] for p in everyone["projects"]} == {"acme", "beta"}
    status, page = await site.get("/admin/usage/events?customer=acme&limit=5", TOKEN)
    assert status == 200 and len(page["events"]) == 5 and page["next_cursor"]
    assert all(e["customer_id"] == "acme" and "metadata" in e for e in page["events"])

    monkeypatch.delenv("TOLLBOOTH_ADMIN_TOKEN")
    status, body = await site.get("/admin/usage/daily", TOKEN)
    assert status == 403 and body["error"]["code"] == "admin_disabled"
