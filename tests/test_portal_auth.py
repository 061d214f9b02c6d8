"""The usage portal's access rules, without a browser: signing, links, sessions, CSRF, the
login rate limit, the security headers, and what a link or a session can never do."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway import keys
from gateway.web import keys as web_keys
from gateway.web.portal_links import issue_link, verify_link
from gateway.web.sessions import SessionCodec, Signer, csrf_ok
from tests.harness import Gateway, running_gateway
from tests.portal_fixtures import (
    MONTH_QUERY,
    PORTAL_TIERS,
    Seed,
    portal_config,
    raw_totals,
    seed_portal,
    seeded_portal_gateway,
)

SECRET = b"s" * 32
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


# ------------------------------------------------------------------ signing, without HTTP


def test_signed_value_refuses_tampering_and_other_purposes() -> None:
    signer = Signer(SECRET, "portal-link")
    token = signer.sign({"c": "acme", "p": None, "exp": 1})
    assert signer.verify(token) == {"c": "acme", "p": None, "exp": 1}
    body, _, mac = token.partition(".")
    forged = Signer(SECRET, "portal-link").sign({"c": "beta", "p": None, "exp": 1})
    assert signer.verify(forged.partition(".")[0] + "." + mac) is None
    assert signer.verify(body + "." + mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]) is None
    assert Signer(SECRET, "session").verify(token) is None  # another purpose, another key
    assert Signer(b"t" * 32, "portal-link").verify(token) is None
    assert signer.verify("garbage") is None and signer.verify("a.b.c") is None


def test_link_expires_at_its_ttl() -> None:
    signer = Signer(SECRET, "portal-link")
    token, expires = issue_link(signer, "acme", "web", ttl=timedelta(hours=1), now=NOW)
    assert expires == NOW + timedelta(hours=1)
    grant = verify_link(signer, token, now=NOW + timedelta(minutes=59))
    assert grant is not None and (grant.customer_id, grant.project_id) == ("acme", "web")
    assert verify_link(signer, token, now=NOW + timedelta(hours=1)) is None


def test_session_expiry_kind_and_csrf() -> None:
    clock = [NOW]
    codec = SessionCodec(SECRET, clock=lambda: clock[0])
    session = codec.new("customer", "acme", None, timedelta(minutes=5))
    value = codec.encode(session)
    assert codec.decode(value, "customer") == session
    assert codec.decode(value, "admin") is None
    clock[0] = NOW + timedelta(minutes=5)
    assert codec.decode(value, "customer") is None
    assert csrf_ok(session.csrf, session.csrf)
    assert not csrf_ok(session.csrf, None) and not csrf_ok(session.csrf, "")
    assert not csrf_ok(session.csrf, session.csrf + "x") and not csrf_ok(None, "x")


# ------------------------------------------------------------------ over HTTP


@pytest.fixture
async def portal(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, Seed]]:
    async with seeded_portal_gateway(
        fresh_database_url, redis_url, monkeypatch, "admin-token-for-tests"
    ) as seeded:
        yield seeded


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _link(
    gw: Gateway,
    customer: str,
    project: str | None = None,
    *,
    ttl: timedelta = timedelta(hours=1),
    now: datetime | None = None,
) -> str:
    token, _ = issue_link(
        gw.app[web_keys.link_signer], customer, project, ttl=ttl, now=now or datetime.now(UTC)
    )
    return token


def _figures(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-metric="([^"]+)" data-value="([^"]*)"', html))


async def _sign_in(
    client: aiohttp.ClientSession, gw: Gateway, token: str
) -> aiohttp.ClientResponse:
    return await client.get(f"{gw.base_url}/portal", params={"token": token}, allow_redirects=False)


async def test_link_becomes_a_session_and_the_token_leaves_the_url(
    portal: tuple[Gateway, Seed],
) -> None:
    gw, _ = portal
    async with _client() as client:
        response = await _sign_in(client, gw, _link(gw, "acme"))
        assert response.status == 303
        assert response.headers["Location"] == "/portal"
        cookie = response.cookies["tb_portal"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax"
        page = await client.get(f"{gw.base_url}/portal", params=MONTH_QUERY)
        assert page.status == 200
        assert "token" not in str(page.url)
        html = await page.text()
    figures = _figures(html)
    expected = await raw_totals(gw.app[keys.pool], "acme")
    for name in (
        "requests",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
    ):
        assert figures[name] == str(expected[name]), name
    assert figures["price_usd"] == format(expected["price_usd"], "f")
    assert figures["quota-requests_per_month-limit"] == "10000"
    assert figures["quota-spend_per_month_usd-limit"] == "250.00"
    assert "cus_ACMESECRET123" not in html


async def test_project_link_shows_only_that_project(portal: tuple[Gateway, Seed]) -> None:
    gw, _ = portal
    async with _client() as client:
        await _sign_in(client, gw, _link(gw, "acme", "web"))
        html = await (
            await client.get(f"{gw.base_url}/portal", params={**MONTH_QUERY, "project": "batch"})
        ).text()
        invoices = await client.get(f"{gw.base_url}/portal/invoices")
        assert invoices.status == 403
    expected = await raw_totals(gw.app[keys.pool], "acme", "web")
    assert _figures(html)["requests"] == str(expected["requests"])
    assert "batch" not in html and "quota-" not in html


async def test_expired_tampered_and_foreign_links_are_refused(portal: tuple[Gateway, Seed]) -> None:
    gw, _ = portal
    expired = _link(
        gw, "acme", ttl=timedelta(minutes=1), now=datetime.now(UTC) - timedelta(hours=1)
    )
    good = _link(gw, "acme")
    body, _, mac = good.partition(".")
    beta_body = _link(gw, "beta").partition(".")[0]
    foreign = Signer(b"x" * 32, "portal-link").sign(
        {"c": "acme", "p": None, "exp": 2**40, "n": "n"}
    )
    async with _client() as client:
        for token in (expired, beta_body + "." + mac, foreign, "nonsense", body + "."):
            response = await _sign_in(client, gw, token)
            assert response.status == 403, token
            assert "tb_portal" not in response.cookies
        assert (await client.get(f"{gw.base_url}/portal", allow_redirects=False)).status == 303


async def test_suspended_customer_is_refused_at_once(portal: tuple[Gateway, Seed]) -> None:
    gw, _ = portal
    token = _link(gw, "acme")
    async with _client() as client:
        assert (await _sign_in(client, gw, token)).status == 303
        assert (await client.get(f"{gw.base_url}/portal", allow_redirects=False)).status == 200
        await gw.app[keys.accounts].update_customer("acme", suspended=True)
        response = await client.get(f"{gw.base_url}/portal", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/portal/login"
        assert (await _sign_in(client, gw, token)).status == 403


async def test_token_and_session_cannot_call_the_api(portal: tuple[Gateway, Seed]) -> None:
    gw, _ = portal
    token = _link(gw, "acme")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with _client() as client:
        for headers in ({"Authorization": f"Bearer {token}"}, {"x-api-key": token}):
            response = await client.post(
                f"{gw.base_url}/v1/chat/completions", json=body, headers=headers
            )
            assert response.status == 401
            assert (await client.get(f"{gw.base_url}/usage/daily", headers=headers)).status == 401
        await _sign_in(client, gw, token)
        assert client.cookie_jar.filter_cookies(URL(gw.base_url)).get("tb_portal") is not None
        response = await client.post(f"{gw.base_url}/v1/chat/completions", json=body)
        assert response.status == 401
        for path in ("/usage/daily", "/usage/summary", "/usage/events", "/usage/limits"):
            assert (await client.get(f"{gw.base_url}{path}")).status == 401, path
        session = client.cookie_jar.filter_cookies(URL(gw.base_url))["tb_portal"].value
        response = await client.post(
            f"{gw.base_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {session}"},
        )
        assert response.status == 401
    assert gw.mock_requests == []


async def test_state_changing_forms_need_csrf(portal: tuple[Gateway, Seed]) -> None:
    gw, seed = portal
    async with _client() as client:
        response = await client.post(
            f"{gw.base_url}/portal/login", data={"key": seed.acme_key}, allow_redirects=False
        )
        assert response.status == 403
        await _sign_in(client, gw, _link(gw, "acme"))
        for path in ("/portal/logout", "/portal/billing"):
            response = await client.post(
                f"{gw.base_url}{path}", data={"csrf": "wrong"}, allow_redirects=False
            )
            assert response.status == 403, path
        assert (await client.get(f"{gw.base_url}/portal", allow_redirects=False)).status == 200


async def _login(client: aiohttp.ClientSession, gw: Gateway, key: str) -> aiohttp.ClientResponse:
    form = await (await client.get(f"{gw.base_url}/portal/login")).text()
    match = re.search(r'name="csrf" value="([^"]+)"', form)
    assert match is not None
    return await client.post(
        f"{gw.base_url}/portal/login", data={"csrf": match[1], "key": key}, allow_redirects=False
    )


async def test_key_login_and_its_rate_limit(portal: tuple[Gateway, Seed], redis_url: str) -> None:
    gw, seed = portal
    await gw.app[keys.redis_client].delete("tb:web1:login:{127.0.0.1}")
    async with _client() as client:
        assert (await _login(client, gw, "tb_" + "x" * 40)).status == 401
        response = await _login(client, gw, seed.acme_key)
        assert response.status == 303 and response.headers["Location"] == "/portal"
        html = await (await client.get(f"{gw.base_url}/portal", params=MONTH_QUERY)).text()
        assert _figures(html)["requests"] == str(
            (await raw_totals(gw.app[keys.pool], "acme"))["requests"]
        )
        assert seed.acme_key not in html
        assert (await _login(client, gw, seed.acme_key)).status == 303
        limited = await _login(client, gw, seed.acme_key)  # the 4th attempt this minute
        assert limited.status == 429 and limited.headers["Retry-After"] == "60"
    await gw.app[keys.redis_client].delete("tb:web1:login:{127.0.0.1}")


async def test_pages_carry_a_strict_csp(portal: tuple[Gateway, Seed]) -> None:
    gw, _ = portal
    async with _client() as client:
        for path in ("/portal/login",):
            response = await client.get(f"{gw.base_url}{path}")
            csp = response.headers["Content-Security-Policy"]
            assert "unsafe-inline" not in csp and "script-src 'self'" in csp
            assert "frame-ancestors 'self'" in csp
            assert response.headers["Referrer-Policy"] == "no-referrer"
            assert response.headers["Cache-Control"] == "no-store"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        static = await client.get(f"{gw.base_url}/static/charts.js")
        assert static.status == 200 and "immutable" in static.headers["Cache-Control"]
        assert (await client.get(f"{gw.base_url}/static/..%2Fsessions.py")).status == 404


async def test_admin_portal_links(portal: tuple[Gateway, Seed]) -> None:
    gw, _ = portal
    admin = {"Authorization": "Bearer admin-token-for-tests"}
    async with _client() as client:
        response = await client.post(
            f"{gw.base_url}/admin/portal-links",
            headers=admin,
            json={"customer": "acme", "project": None, "ttl_s": 600},
        )
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        assert body["url"].startswith(f"{gw.base_url}/portal?token=")
        expires = datetime.fromisoformat(body["expires_at"])
        assert timedelta(seconds=590) < expires - datetime.now(UTC) <= timedelta(seconds=600)
        opened = await client.get(body["url"], allow_redirects=False)
        assert opened.status == 303
        assert (
            await client.post(f"{gw.base_url}/admin/portal-links", json={"customer": "acme"})
        ).status == 401
        missing = await client.post(
            f"{gw.base_url}/admin/portal-links",
            headers=admin,
            json={"customer": "nobody-" + uuid.uuid4().hex[:6]},
        )
        assert missing.status == 404
        bad = await client.post(
            f"{gw.base_url}/admin/portal-links",
            headers=admin,
            json={"customer": "acme", "ttl_s": "1h"},
        )
        assert bad.status == 400


async def test_embedding_sets_frame_ancestors_and_cross_site_cookies(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = portal_config(frame_ancestors=["https://app.example.com"], secure_cookies=True)
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=PORTAL_TIERS, extra_config=config
    ) as gw:
        await seed_portal(gw.app)
        async with _client() as client:
            login = await client.get(f"{gw.base_url}/portal/login")
            csp = login.headers["Content-Security-Policy"]
            assert csp.endswith("frame-ancestors 'self' https://app.example.com")
            response = await _sign_in(client, gw, _link(gw, "acme"))
            cookie = response.cookies["tb_portal"]
            assert cookie["samesite"] == "None" and cookie["secure"] and cookie["httponly"]
