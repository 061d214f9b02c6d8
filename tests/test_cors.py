"""CORS for browser clients (gateway.cors) through both servers: the fast front, and aiohttp
for the requests the front hands over (a chunked body, a connection aiohttp already serves).

Requests are made with a raw aiohttp client sending an `Origin` header, as a browser would.
Which server answered is visible: aiohttp sends a `Server` header, the front does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.config import ConfigError, parse_settings
from gateway.cors import response_headers
from storage.accounts import AccountStore
from tests.harness import Gateway, gateway_config, running_gateway

APP = "https://app.example.com"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
MESSAGE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello there"}],
}
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": (
        "authorization, content-type, x-stainless-os, openai-organization, "
        "anthropic-dangerous-direct-browser-access, x-api-key, x-evil"
    ),
}
ECHOED = (
    "authorization, content-type, x-stainless-os, openai-organization, "
    "anthropic-dangerous-direct-browser-access, x-api-key"
)
TIERS = {"free": {"limits": {}}, "tiny": {"limits": {"requests_per_minute": 1}}}


def served_by_aiohttp(response: aiohttp.ClientResponse) -> bool:
    return "aiohttp" in response.headers.get("Server", "")


def cors_of(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower().startswith("access-control-")
    }


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data  # a body without Content-Length: chunked, so the front hands it to aiohttp


def headers_for(key: str, origin: str | None = APP) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "anthropic-version": "2023-06-01",
    }
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def post(
    gw: Gateway,
    path: str,
    body: dict[str, Any],
    *,
    key: str | None = None,
    origin: str | None = APP,
    chunked: bool = False,
) -> tuple[aiohttp.ClientResponse, bytes]:
    """One request on a new connection (so it starts at the front)."""
    data = orjson.dumps(body)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.post(
            gw.base_url + path,
            data=chunks(data) if chunked else data,
            headers=headers_for(key or gw.key, origin),
        ) as response,
    ):
        return response, await response.read()


def assert_actual_cors(response: aiohttp.ClientResponse, label: str) -> None:
    cors = cors_of(response)
    assert cors.get("access-control-allow-origin") == APP, (label, cors)
    exposed = {name.strip() for name in cors["access-control-expose-headers"].split(",")}
    assert {
        "x-request-id",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-tokens",
    } <= exposed, label
    assert "Origin" in response.headers.getall("Vary", []), label
    assert "access-control-allow-credentials" not in cors, label


@pytest.fixture
async def gw(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    server = {"host": "127.0.0.1", "port": 0, "disconnect_drain_s": 5, "cors_origins": [APP]}
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=TIERS, extra_config={"server": server}
    ) as gateway:
        yield gateway


async def test_preflights_are_answered_by_both_servers_without_a_key(gw: Gateway) -> None:
    connector = aiohttp.TCPConnector(limit=1)  # one kept-alive connection, reused in turn
    async with aiohttp.ClientSession(connector=connector) as session:
        answers = []
        for path in (
            "/v1/chat/completions",
            "/v1/v1/messages",
            "/v1/models",
            "/usage/summary",
            "/v1/messages",
        ):
            async with session.options(gw.base_url + path, headers=PREFLIGHT) as response:
                assert await response.read() == b""
                answers.append((path, response))
            if path == "/v1/v1/messages":  # what follows goes to aiohttp on this connection
                async with session.get(gw.base_url + "/health") as health:
                    assert served_by_aiohttp(health)
    served_by = [served_by_aiohttp(response) for _, response in answers]
    assert served_by == [False, False, True, True, True]
    for path, response in answers:
        cors = cors_of(response)
        assert response.status == 204, path
        assert "Content-Length" not in response.headers, path
        assert cors["access-control-allow-origin"] == APP, path
        assert cors["access-control-allow-headers"] == ECHOED, path
        assert set(cors["access-control-allow-methods"].split(", ")) >= {"POST", "GET"}, path
        assert int(cors["access-control-max-age"]) > 0, path
        assert "Origin" in response.headers["Vary"], path
        assert "access-control-allow-credentials" not in cors, path
    # No key, no provider, no quota, no event: the next real request's event is the only one.
    response, _ = await post(gw, "/v1/chat/completions", CHAT)
    assert response.status == 200
    assert len(gw.mock_requests) == 1
    [row] = await gw.events(wait_for=1)
    assert str(row["id"]) == response.headers["x-request-id"]
    await asyncio.sleep(0.3)
    assert len(await gw.events(wait_for=2, timeout_s=0.2)) == 1


async def test_a_preflight_from_another_origin_is_refused_with_no_cors_header(
    gw: Gateway,
) -> None:
    evil = {**PREFLIGHT, "Origin": "https://evil.example.net"}
    null = {**PREFLIGHT, "Origin": "null"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for path, headers, anthropic in (
            ("/v1/chat/completions", evil, False),
            ("/v1/messages", null, True),
            ("/v1/models", evil, False),
        ):
            async with s.options(gw.base_url + path, headers=headers) as response:
                body = orjson.loads(await response.read())
                assert response.status == 403, path
                assert cors_of(response) == {}, path
                assert (body.get("type") == "error") is anthropic, path
                assert served_by_aiohttp(response) is (path == "/v1/models"), path
        # From another origin an actual request is served, without CORS headers.
        response, _ = await post(
            gw, "/v1/chat/completions", CHAT, origin="https://evil.example.net"
        )
        assert response.status == 200 and cors_of(response) == {}
        response, _ = await post(gw, "/v1/chat/completions", CHAT, origin=None)
        assert response.status == 200 and cors_of(response) == {}
    assert len(gw.mock_requests) == 2


async def test_actual_responses_carry_cors_headers_from_both_servers(gw: Gateway) -> None:
    tiny = "cust_tiny_" + gw.customer_id[-6:]
    accounts: AccountStore = gw.app[keys.accounts]
    await accounts.create_customer(tiny, tier="tiny")
    _, tiny_key = await accounts.create_key(tiny, project_id="web", name="tiny")
    for chunked in (False, True):
        label = "aiohttp" if chunked else "front"
        cases = [
            ("json", "/v1/chat/completions", CHAT, gw.key, 200),
            ("stream", "/v1/chat/completions", {**CHAT, "stream": True}, gw.key, 200),
            ("anthropic stream", "/v1/messages", {**MESSAGE, "stream": True}, gw.key, 200),
            ("bad key", "/v1/chat/completions", CHAT, "tb_" + "x" * 40, 401),
            ("first of the tiny tier", "/v1/chat/completions", CHAT, tiny_key, 200),
            ("rate limited", "/v1/chat/completions", CHAT, tiny_key, 429),
        ]
        for name, path, body, key, status in cases:
            if chunked and name == "first of the tiny tier":
                continue  # the tiny customer's one request this minute is spent already
            response, data = await post(gw, path, body, key=key, chunked=chunked)
            where = f"{label} {name}"
            assert response.status == status, (where, data[:200])
            assert served_by_aiohttp(response) is chunked, where
            assert_actual_cors(response, where)
            if "stream" in name:
                assert response.headers["Content-Type"].startswith("text/event-stream")
                assert data.rstrip().endswith((b"data: [DONE]", b'{"type":"message_stop"}'))
            if status == 429:
                assert "retry-after" in response.headers
    async with aiohttp.ClientSession() as session:
        for path, covered in (("/v1/models", True), ("/usage/summary", True), ("/health", False)):
            async with session.get(gw.base_url + path, headers=headers_for(gw.key)) as response:
                assert response.status == 200 or not covered, path
                if covered:
                    assert_actual_cors(response, path)
                else:
                    assert cors_of(response) == {}, path  # operator routes are not for pages
    assert len(await gw.events(wait_for=6)) == 6  # three served per server
    await asyncio.sleep(0.3)
    assert len(await gw.events(wait_for=7, timeout_s=0.2)) == 6  # refusals record nothing


async def test_a_providers_cors_headers_never_reach_the_client(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            },
            headers={"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "*"},
        )

    provider = web.Application()
    provider.router.add_post("/v1/chat/completions", chat)
    fake = TestServer(provider, host="127.0.0.1")
    await fake.start_server()
    try:
        providers = {
            "openai": {
                "kind": "openai",
                "base_url": str(fake.make_url("/v1")),
                "api_key_env": "TB_TEST_OPENAI_KEY",
            }
        }
        async with running_gateway(
            fresh_database_url,
            redis_url,
            monkeypatch,
            extra_config={"providers": providers, "models": []},
        ) as gw:
            for chunked in (False, True):
                response, _ = await post(gw, "/v1/chat/completions", CHAT, chunked=chunked)
                assert response.status == 200
                assert cors_of(response) == {}, chunked  # CORS is off: no header at all
                async with (
                    aiohttp.ClientSession() as session,
                    session.options(
                        gw.base_url + "/v1/chat/completions", headers=PREFLIGHT
                    ) as answer,
                ):
                    assert answer.status == 405 and cors_of(answer) == {}
    finally:
        await fake.close()


async def test_cors_origins_apply_on_reload(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    config = tmp_path / "tollbooth.yaml"
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, config_path=config
    ) as gw:

        async def preflight_status() -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.options(
                    gw.base_url + "/v1/chat/completions", headers=PREFLIGHT
                ) as response,
            ):
                return response.status

        assert await preflight_status() == 405
        response, _ = await post(gw, "/v1/chat/completions", CHAT)
        assert cors_of(response) == {}
        server = {"host": "127.0.0.1", "port": 0, "disconnect_drain_s": 5, "cors_origins": ["*"]}
        raw = gateway_config(gw.mock_url, extra={"server": server})
        await asyncio.to_thread(config.write_bytes, raw)
        for _ in range(50):  # the file is checked every second
            if await preflight_status() == 204:
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the new cors_origins did not apply within 10 s")
        response, _ = await post(gw, "/v1/chat/completions", CHAT)  # "*": any origin
        assert_actual_cors(response, "after reload")
        response, _ = await post(gw, "/v1/chat/completions", CHAT, origin="null")
        assert cors_of(response) == {}  # an opaque origin, never allowed


def test_cors_origins_are_checked_and_normalised_at_load() -> None:
    def load(origins: list[str]) -> tuple[str, ...]:
        raw = gateway_config("http://127.0.0.1:9", extra={"server": {"cors_origins": origins}})
        return parse_settings(raw, "tollbooth.yaml").server.cors_origins

    assert load([]) == ()
    assert load(["https://App.Example.com/", "http://localhost:5173", "*"]) == (
        APP,
        "http://localhost:5173",
        "*",
    )
    for bad in ("app.example.com", "https://app.example.com/chat", "null", "https://a, https://b"):
        with pytest.raises(ConfigError) as raised:
            load([bad])
        message = str(raised.value)
        assert f"server.cors_origins: {bad!r} is not an origin" in message, message
        assert "scheme://host[:port]" in message, message
    assert response_headers((APP,), {"origin": "null"}) is None
    assert response_headers(("*",), {"origin": "https://x.example\r\nSet-Cookie: a=b"}) is None
    assert response_headers(("*",), {"origin": "https://any.example:8443"}) is not None
