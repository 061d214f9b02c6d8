"""The operator dashboard over HTTP, without a browser: sign-in with the admin token (CSRF,
constant-time compare, failed attempts limited per IP), the dashboard off without a token,
CSRF on every action, the customer table's figures against the raw rows and the reports,
search, sort, paging, the drill-down and its portal link, escaping, and no secret in a page."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from html import unescape
from typing import Any

import aiohttp
import pytest

from gateway import keys
from storage.reports.rollups import UsageFilter
from storage.reports.usage_queries import usage_totals
from tests.harness import Gateway, running_gateway
from tests.portal_fixtures import (
    MONTH_QUERY,
    MONTH_START,
    PORTAL_TIERS,
    XSS_NAME,
    Seed,
    portal_config,
    raw_totals,
    seed_portal,
    seeded_portal_gateway,
)

TOKEN = "adm-" + "x" * 40
XSS_CUSTOMER_NAME = "<img src=x onerror=alert(1)>"
BASE = "/admin/dashboard"


@pytest.fixture
async def dashboard(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, Seed]]:
    async with seeded_portal_gateway(fresh_database_url, redis_url, monkeypatch, TOKEN) as (
        gw,
        seed,
    ):
        await gw.app[keys.accounts].create_customer("xss", tier="free", name=XSS_CUSTOMER_NAME)
        await gw.app[keys.redis_client].flushdb()
        yield gw, seed


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # 127.0.0.1


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def sign_in(
    client: aiohttp.ClientSession, gw: Gateway, token: str = TOKEN
) -> aiohttp.ClientResponse:
    async with client.get(f"{gw.base_url}{BASE}/login") as form:
        html = await form.text()
    return await client.post(
        f"{gw.base_url}{BASE}/login",
        allow_redirects=False,
        data={"csrf": _csrf(html), "token": token},
    )


def figures(html: str) -> dict[str, str]:
    """The headline figures: data-metric -> data-value (the first of each name)."""
    found: dict[str, str] = {}
    for name, value in re.findall(
        r'class="figure-value" data-metric="([^"]+)" '
        r'data-value="([^"]*)"',
        html,
    ):
        found.setdefault(name, value)
    return found


def customer_rows(html: str) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for customer, body in re.findall(r'<tr data-customer="([^"]+)"[^>]*>(.*?)</tr>', html, re.S):
        rows[unescape(customer)] = dict(
            re.findall(r'data-metric="([^"]+)" data-value="([^"]*)"', body)
        )
    return rows


async def _page(
    client: aiohttp.ClientSession, gw: Gateway, path: str, params: dict[str, Any] | None = None
) -> tuple[int, str, Any]:
    async with client.get(
        f"{gw.base_url}{path}", params=params or MONTH_QUERY, allow_redirects=False
    ) as response:
        return response.status, await response.text(), response.headers


async def test_sign_in_sets_a_strict_session_and_the_table_equals_the_raw_rows(
    dashboard: tuple[Gateway, Seed],
) -> None:
    gw, _ = dashboard
    async with _client() as client:
        status, _, headers = await _page(client, gw, BASE)
        assert status == 303 and headers["Location"] == f"{BASE}/login"
        answer = await sign_in(client, gw)
        assert answer.status == 303 and answer.headers["Location"] == BASE
        cookie = answer.headers["Set-Cookie"]
        assert "tb_admin=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert TOKEN not in cookie and TOKEN not in answer.headers["Location"]
        status, html, headers = await _page(client, gw, BASE)
    assert status == 200
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
    assert headers["Server-Timing"].startswith("app;dur=")
    rows = customer_rows(html)
    assert set(rows) >= {"acme", "beta", "xss", gw.customer_id}
    head = figures(html)
    assert int(head["requests"]) == sum(int(r["requests"]) for r in rows.values())
    assert Decimal(head["price_usd"]) == sum(Decimal(r["price_usd"]) for r in rows.values())
    for customer in ("acme", "beta"):
        raw = await raw_totals(gw.app[keys.pool], customer)
        assert int(rows[customer]["requests"]) == raw["requests"]
        assert Decimal(rows[customer]["price_usd"]) == raw["price_usd"]
        assert int(rows[customer]["tokens"]) == raw["input_tokens"] + raw["output_tokens"]
    # The same numbers as the reports (`tollbooth usage summary`) over the same window.
    want = await usage_totals(
        gw.app[keys.pool],
        since=MONTH_START,
        until=MONTH_START + timedelta(days=31, microseconds=-1),
        usage_filter=UsageFilter(),
    )
    for name in (
        "requests",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
    ):
        assert int(head[name]) == getattr(want, name)
    assert Decimal(head["price_usd"]) == want.price_usd
    # Escaped, and no secret: the Stripe id and the token never reach the page.
    assert XSS_CUSTOMER_NAME not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "cus_ACMESECRET123" not in html and TOKEN not in html


async def test_search_sort_and_paging_happen_on_the_server(dashboard: tuple[Gateway, Seed]) -> None:
    gw, _ = dashboard
    async with _client() as client:
        await sign_in(client, gw)
        _, html, _ = await _page(client, gw, BASE, {**MONTH_QUERY, "q": "ACME"})
        assert list(customer_rows(html)) == ["acme"]
        _, html, _ = await _page(
            client, gw, BASE, {**MONTH_QUERY, "sort": "requests", "order": "asc"}
        )
        requests = [int(r["requests"]) for r in customer_rows(html).values()]
        assert requests == sorted(requests)
        _, html, _ = await _page(
            client, gw, BASE, {**MONTH_QUERY, "sort": "customer", "order": "desc"}
        )
        assert list(customer_rows(html)) == sorted(customer_rows(html), reverse=True)
        status, html, _ = await _page(client, gw, BASE, {**MONTH_QUERY, "sort": "nope"})
        assert status == 400 and "sort" in html


async def test_wrong_token_is_refused_and_failures_are_limited_per_ip(
    dashboard: tuple[Gateway, Seed],
) -> None:
    gw, _ = dashboard
    async with _client() as client:
        for _ in range(3):
            answer = await sign_in(client, gw, "wrong")
            assert answer.status == 401
        assert (await sign_in(client, gw, "wrong")).status == 429
        assert (await sign_in(client, gw)).status == 429  # even the right one, for a minute
        status, _, _ = await _page(client, gw, BASE)
        assert status == 303
    await gw.app[keys.redis_client].flushdb()
    async with (
        _client() as client,
        client.post(
            f"{gw.base_url}{BASE}/login", allow_redirects=False, data={"token": TOKEN}
        ) as answer,
    ):  # no CSRF value
        assert answer.status == 403


async def test_dashboard_is_off_without_a_token(
    dashboard: tuple[Gateway, Seed], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, _ = dashboard
    async with _client() as client:
        await sign_in(client, gw)
        monkeypatch.delenv("TOLLBOOTH_ADMIN_TOKEN")
        for path in (BASE, f"{BASE}/login", f"{BASE}/system", f"{BASE}/customers/acme"):
            status, html, _ = await _page(client, gw, path)
            assert status == 403 and "TOLLBOOTH_ADMIN_TOKEN" in html


async def test_drill_down_and_portal_link_need_csrf(dashboard: tuple[Gateway, Seed]) -> None:
    gw, _ = dashboard
    async with _client() as client:
        await sign_in(client, gw)
        status, html, _ = await _page(client, gw, f"{BASE}/customers/acme")
        assert status == 200
        raw = await raw_totals(gw.app[keys.pool], "acme")
        assert int(figures(html)["requests"]) == raw["requests"]
        assert Decimal(figures(html)["price_usd"]) == raw["price_usd"]
        assert XSS_NAME not in html and "cus_ACMESECRET123" not in html
        link_path = f"{gw.base_url}{BASE}/customers/acme/portal-link"
        async with client.post(link_path, data={"project": ""}) as answer:
            assert answer.status == 403
        async with client.post(link_path, data={"csrf": _csrf(html), "project": ""}) as answer:
            assert answer.status == 200
            page = await answer.text()
        url = unescape(re.search(r'id="portal-link" value="([^"]+)"', page).group(1))  # type: ignore[union-attr]
        assert url.startswith(f"{gw.base_url}/portal?token=")
        status, _, _ = await _page(client, gw, f"{BASE}/customers/nobody")
        assert status == 404
        status, html, _ = await _page(client, gw, f"{BASE}/system")
        assert status == 200 and 'data-metric="requests"' in html
    async with _client() as customer, customer.get(url) as opened:
        assert opened.status == 200 and str(opened.url).endswith("/portal")
        assert "Acme Corp" in await opened.text()


@pytest.fixture
async def with_stripe(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, Seed]]:
    monkeypatch.setenv("TOLLBOOTH_ADMIN_TOKEN", TOKEN)
    config = {**portal_config(), "billing": {"stripe": {"window": "1h"}}}
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=PORTAL_TIERS, extra_config=config
    ) as gw:
        seed = await seed_portal(gw.app)
        await gw.app[keys.redis_client].flushdb()
        yield gw, seed


async def test_reconcile_runs_on_a_post_with_csrf(with_stripe: tuple[Gateway, Seed]) -> None:
    gw, _ = with_stripe
    pool = gw.app[keys.pool]
    await pool.execute(
        "INSERT INTO billing_sync (identifier, customer_id, stripe_customer_id, dimension, "
        "event_name, window_start, window_end, version, seq, value, status) VALUES "
        "('x1', 'acme', 'cus_ACMESECRET123', 'requests', 'tollbooth_requests', $1::timestamptz, "
        "$1::timestamptz + interval '1 hour', 1, 0, 5, 'sent')",
        MONTH_START,
    )
    want = await pool.fetchval(
        "SELECT count(*) FROM usage_events WHERE customer_id = 'acme' AND status_code < 400 "
        "AND created_at >= $1 AND created_at < $2",
        MONTH_START,
        MONTH_START + timedelta(days=31),
    )
    async with _client() as client:
        await sign_in(client, gw)
        _, html, _ = await _page(client, gw, f"{BASE}/system")
        assert 'data-sync-status="sent"' in html and "cus_ACMESECRET123" not in html
        path = f"{gw.base_url}{BASE}/system/reconcile"
        async with client.post(path, params=MONTH_QUERY, data={}) as answer:
            assert answer.status == 403
        async with client.post(path, params=MONTH_QUERY, data={"csrf": _csrf(html)}) as answer:
            assert answer.status == 200
            page = await answer.text()
    assert "October 2025" in page and "cus_ACMESECRET123" not in page
    row = re.search(r'<tr data-meter="requests">(.*?)</tr>', page, re.S)
    assert row is not None
    cells = dict(re.findall(r'data-metric="([^"]+)" data-value="([^"]*)"', row.group(1)))
    assert int(cells["sent"]) == 5
    ours = int(cells["ours"])
    assert ours >= want  # acme's requests, plus beta's
    assert int(cells["difference"]) == ours - 5
