"""Security attacks on a real gateway: secrets, tenancy, revocation, upstream choice, admin.

- The provider keys never appear in a response (status line, header, body), a log line, a
  stored row (every column of every table) or a Redis key, whatever happens to the request;
  the client's key never reaches the provider. Also with a provider that echoes the key.
- A customer's key only ever shows that customer's usage and limits.
- A revoked key is refused within 5 s on every instance (two apps on one database here; the
  auth cache ttl is 2 s).
- No client-supplied value (Host, X-Forwarded-*, an absolute-URI request line, the model,
  body fields, the query, the path) can choose the upstream host: a decoy provider that no
  config names receives nothing, and every request arrives at the configured one.
- Every /admin route needs the admin token, and a refused admin call changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.app import create_app
from gateway.config import parse_settings
from gateway.logs import JsonFormatter
from gateway.mock_provider.app import MOCK_REQUESTS, create_mock_app
from tests.harness import (
    ANTHROPIC_PROVIDER_KEY,
    PROVIDER_KEY,
    FrontTestServer,
    Gateway,
    gateway_config,
    running_gateway,
)
from tests.helpers.raw_http import (
    CHAT,
    CHAT_BODY,
    MESSAGE,
    RawResponse,
    events_with_sentinel,
    http_request,
    raw_exchange,
)

SECRETS = (PROVIDER_KEY, ANTHROPIC_PROVIDER_KEY, "SECRET-0123456789")
SERVER = {
    "host": "127.0.0.1",
    "port": 0,
    "disconnect_drain_s": 2,
    "max_body_mb": 1,
    "upstream_read_timeout_s": 0.5,
}
ADMIN_TOKEN = "adm-" + "7" * 40


def leaks(text: bytes | str) -> list[str]:
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return [secret for secret in SECRETS if secret.encode() in data]


async def stored_text(database_url: str) -> list[tuple[str, str]]:
    """Every row of every table, each as its text form (all columns)."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        rows: list[tuple[str, str]] = []
        for table in tables:
            name = f'"{table["schemaname"]}"."{table["tablename"]}"'
            for row in await conn.fetch(f"SELECT t::text AS line FROM {name} t"):
                rows.append((name, row["line"]))
        return rows
    finally:
        await conn.close()


async def redis_text(redis_url: str) -> list[bytes]:
    """Every Redis key name and the members of its hashes, sets and sorted sets."""
    client = redis.Redis.from_url(redis_url)
    found: list[bytes] = []
    try:
        async for key in client.scan_iter(count=500):
            found.append(key)
            kind = await client.type(key)
            if kind == b"hash":
                fields: Any = await client.hgetall(key)
                found += [name + b"=" + value for name, value in fields.items()]
            elif kind == b"zset":
                members: Any = await client.zrange(key, 0, -1)
                found += members
            elif kind == b"string":
                value: Any = await client.get(key)
                found.append(value or b"")
    finally:
        await client.aclose()
    return found


async def test_provider_key_is_absent_from_responses_logs_rows_and_redis(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        chat, message = "/v1/chat/completions", "/v1/messages"
        stream_chat = orjson.dumps({**CHAT, "stream": True})
        stream_message = orjson.dumps({**MESSAGE, "stream": True})
        attacks = [
            http_request(gw, "POST", chat, CHAT_BODY),
            http_request(gw, "POST", chat, stream_chat),
            http_request(gw, "POST", message, orjson.dumps(MESSAGE)),
            http_request(gw, "POST", message, stream_message),
            http_request(gw, "POST", "/v1/responses", b'{"model": "gpt-4o", "input": "hi"}'),
            http_request(
                gw, "POST", "/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "hi"}'
            ),
            http_request(gw, "POST", "/v1/messages/count_tokens", orjson.dumps(MESSAGE)),
            http_request(gw, "GET", "/v1/models", b""),
        ]
        for fault in (b"500", b"429", b"401", b"403", b"reset", b"slow", b"stream-error"):
            for path, body in ((chat, stream_chat), (message, orjson.dumps(MESSAGE))):
                attacks.append(
                    http_request(gw, "POST", path, body, b"x-mock-error: " + fault + b"\r\n")
                )
        attacks += [
            http_request(gw, "POST", chat, b"{not json"),
            http_request(gw, "POST", chat, CHAT_BODY, key="tb_wrong"),
            http_request(gw, "POST", message, CHAT_BODY, key=PROVIDER_KEY),  # theirs as ours
            http_request(gw, "POST", "/v1/files", CHAT_BODY),
            http_request(gw, "PUT", chat, CHAT_BODY),
            http_request(gw, "POST", chat, b"x" * 1_200_000),
            http_request(gw, "GET", "/health", b""),
            http_request(gw, "GET", "/metrics", b""),
            http_request(gw, "GET", "/usage/limits", b""),
        ]
        replies: list[RawResponse] = [await raw_exchange(gw, data) for data in attacks]
        await gw.mock.close()  # the provider goes away: 502s
        for path, body in ((chat, CHAT_BODY), (message, orjson.dumps(MESSAGE))):
            replies.append(await raw_exchange(gw, http_request(gw, "POST", path, body)))
        assert replies[-1].status == 502
        found = [
            f"response {i}: {leaks(r.head + r.body)}"
            for i, r in enumerate(replies)
            if leaks(r.head + r.body)
        ]
        # The keys did go upstream (so the scans below would see a leak), the client's never.
        recorded = gw.mock_requests
        assert any(r.headers.get("authorization") == f"Bearer {PROVIDER_KEY}" for r in recorded)
        assert any(r.headers.get("x-api-key") == ANTHROPIC_PROVIDER_KEY for r in recorded)
        found += [
            f"client key upstream: {r.path}"
            for r in recorded
            if gw.key in repr(r.headers) or gw.key.encode() in r.body
        ]
        await asyncio.sleep(0.5)  # the writer flushes the last events
    formatter = JsonFormatter()
    found += [
        f"log {r.name}: {leaks(formatter.format(r))}"
        for r in caplog.records
        if leaks(formatter.format(r)) or leaks(repr(r.args))
    ]
    found += [
        f"row of {table}" for table, line in await stored_text(fresh_database_url) if leaks(line)
    ]
    found += [f"redis {item[:60]!r}" for item in await redis_text(redis_url) if leaks(item)]
    assert not found, "\n".join(found)


async def echoing_provider(request: web.Request) -> web.Response:
    """A provider that repeats the credentials it was sent, in a header and an error body
    (as some OpenAI-compatible servers' 401s do)."""
    presented = request.headers.get("Authorization", "")
    body = orjson.dumps(
        {
            "error": {
                "message": f"Incorrect API key provided: {presented}",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    )
    return web.Response(
        status=401,
        body=body,
        content_type="application/json",
        headers={"x-debug-authorization": presented},
    )


async def test_a_provider_that_echoes_its_key_does_not_leak_it_to_the_client(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", echoing_provider)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    extra = {
        "server": SERVER,
        "models": [],
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": str(upstream.make_url("/v1")),
                "api_key_env": "TB_TEST_OPENAI_KEY",
            }
        },
    }
    try:
        async with running_gateway(
            fresh_database_url, redis_url, monkeypatch, extra_config=extra
        ) as gw:
            reply = await raw_exchange(
                gw, http_request(gw, "POST", "/v1/chat/completions", CHAT_BODY)
            )
            assert reply.status == 401
            assert leaks(reply.head + reply.body) == [], reply.head + reply.body
    finally:
        await upstream.close()


async def get_json(gw: Gateway, path: str, key: str, **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.base_url + path, headers={"Authorization": f"Bearer {key}", **headers}) as r,
    ):
        return r.status, orjson.loads(await r.read())


async def test_a_customer_key_only_ever_shows_that_customers_usage(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLBOOTH_ADMIN_TOKEN", ADMIN_TOKEN)
    tiers = {"free": {"limits": {"requests_per_month": 1000, "tokens_per_month": 1_000_000}}}
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=tiers, extra_config={"server": SERVER}
    ) as gw:
        accounts = gw.app[keys.accounts]
        other = "cust_other_" + gw.customer_id[-6:]
        await accounts.create_customer(other, tier="free")
        _, other_key = await accounts.create_key(other, project_id="p2")
        route = "/v1/chat/completions"
        mine = await raw_exchange(
            gw, http_request(gw, "POST", route, CHAT_BODY, b"x-mock-output-tokens: 3\r\n")
        )
        assert mine.status == 200
        for _ in range(2):
            theirs = await raw_exchange(
                gw,
                http_request(
                    gw, "POST", route, CHAT_BODY, b"x-mock-output-tokens: 11\r\n", key=other_key
                ),
            )
            assert theirs.status == 200
        await events_with_sentinel(gw, 1)  # mine and the sentinel: 2 requests, 3 + 20 tokens
        await asyncio.sleep(0.3)  # the other customer's two events, flushed with them
        spoofs = [
            "",
            f"?customer={other}",
            f"?customer_id={other}",
            f"?customer={other}&customer_id={other}&days=30",
        ]
        for query in spoofs:
            status, summary = await get_json(
                gw, "/usage/summary" + query, gw.key, **{"x-customer-id": other}
            )
            assert status == 200 and summary["customer_id"] == gw.customer_id, query
            assert (summary["requests"], summary["output_tokens"]) == (2, 23), query
            status, limits = await get_json(gw, "/usage/limits" + query, gw.key)
            assert limits["customer_id"] == gw.customer_id, query
            assert limits["limits"]["requests_per_month"]["current"] == 2, query
            status, quota = await get_json(gw, "/usage/quota-status" + query, gw.key)
            assert quota["customer_id"] == gw.customer_id, query
        status, summary = await get_json(gw, "/usage/summary", other_key)
        assert (summary["customer_id"], summary["requests"], summary["output_tokens"]) == (
            other,
            2,
            22,
        )
        status, limits = await get_json(gw, "/usage/limits", other_key)
        assert limits["limits"]["requests_per_month"]["current"] == 2
        # The admin view of another customer is not reachable with a customer key.
        status, body = await get_json(gw, f"/admin/usage/summary?customer={other}", gw.key)
        assert status == 401 and other not in orjson.dumps(body).decode()


@asynccontextmanager
async def second_instance(gw: Gateway, redis_url: str) -> AsyncIterator[TestServer]:
    """Another gateway process's worth of app on the same database, Redis and provider."""
    settings = parse_settings(gateway_config(gw.mock_url, extra={"server": SERVER}), "b.yaml")
    server = FrontTestServer(
        create_app(settings, database_url=gw.database_url, redis_url=redis_url), host="127.0.0.1"
    )
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_a_revoked_key_is_refused_within_5_s_on_every_instance(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        running_gateway(
            fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
        ) as gw,
        second_instance(gw, redis_url) as other,
    ):
        bases = [gw.base_url, str(other.make_url("")).rstrip("/")]
        headers = {"Authorization": f"Bearer {gw.key}", "content-type": "application/json"}
        served = 0
        async with aiohttp.ClientSession() as session:

            async def status(base: str) -> int:
                async with session.post(
                    base + "/v1/chat/completions", data=CHAT_BODY, headers=headers
                ) as response:
                    await response.read()
                    return response.status

            for base in bases:  # both caches hold the key as valid
                assert await status(base) == 200
                served += 1
            [record] = await gw.app[keys.accounts].list_keys(gw.customer_id)
            assert await gw.app[keys.accounts].revoke_key(record.id)
            revoked_at = time.monotonic()
            refused_after: dict[str, float] = {}
            while len(refused_after) < len(bases) and time.monotonic() - revoked_at < 6:
                for base in bases:
                    if base in refused_after:
                        continue
                    code = await status(base)
                    if code == 401:
                        refused_after[base] = time.monotonic() - revoked_at
                    else:
                        assert code == 200
                        served += 1
                await asyncio.sleep(0.1)
            assert len(refused_after) == 2, refused_after
            assert max(refused_after.values()) < 5.0, refused_after
            for base in bases * 3:  # and it stays refused
                assert await status(base) == 401
        assert len(gw.mock_requests) == served
        await asyncio.sleep(0.3)
        rows = await gw.events(wait_for=served)
        assert len(rows) == served  # the refused ones left no event


async def test_no_client_value_chooses_the_upstream_host(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy = TestServer(create_mock_app(), host="127.0.0.1")
    await decoy.start_server()
    at = f"127.0.0.1:{decoy.port}"
    url = f"http://{at}"
    pricing = {"markup_percent": "0", "unknown_model": "allow_unpriced"}
    try:
        async with running_gateway(
            fresh_database_url,
            redis_url,
            monkeypatch,
            pricing=pricing,
            extra_config={"server": SERVER},
        ) as gw:
            chat = "/v1/chat/completions"
            redirecting_headers = [
                f"X-Forwarded-Host: {at}",
                f"X-Forwarded-Server: {at}",
                "X-Forwarded-Proto: https",
                f"X-Forwarded-Port: {decoy.port}",
                f"Forwarded: host={at};proto=http",
                f"X-Original-URL: {url}{chat}",
                f"X-Rewrite-URL: {url}{chat}",
                f"X-Host: {at}",
                f"X-HTTP-Host-Override: {at}",
                f"X-Upstream: {url}",
                f"X-Base-URL: {url}",
            ]
            requests = [
                http_request(gw, "POST", chat, CHAT_BODY, h.encode() + b"\r\n")
                for h in redirecting_headers
            ]
            requests.append(
                http_request(gw, "POST", chat, CHAT_BODY).replace(
                    b"Host: gateway", f"Host: {at}".encode()
                )
            )
            requests.append(http_request(gw, "POST", f"{url}{chat}", CHAT_BODY))
            requests.append(http_request(gw, "POST", f"{url}/v1/messages", orjson.dumps(MESSAGE)))
            requests.append(http_request(gw, "POST", f"{chat}?base_url={url}&host={at}", CHAT_BODY))
            for model in (
                f"{url}/v1",
                f"//{at}",
                f"gpt-4o@{at}",
                f"{at}/v1/chat/completions",
                f"../../{at}",
            ):
                requests.append(
                    http_request(gw, "POST", chat, orjson.dumps({**CHAT, "model": model}))
                )
            requests.append(
                http_request(
                    gw,
                    "POST",
                    chat,
                    orjson.dumps({**CHAT, "base_url": url, "api_base": url, "url": url}),
                )
            )
            requests.append(
                http_request(
                    gw, "POST", "/v1/messages", orjson.dumps({**MESSAGE, "model": f"claude-x@{at}"})
                ).replace(b"Host: gateway", f"Host: {at}".encode())
            )
            replies = [await raw_exchange(gw, data) for data in requests]
            assert [r.status for r in replies] == [200] * len(replies), [
                (i, r.status, r.body[:100]) for i, r in enumerate(replies) if r.status != 200
            ]
            for path in (f"{chat}@{at}", f"//{at}{chat}", f"/{url}{chat}"):
                reply = await raw_exchange(gw, http_request(gw, "POST", path, CHAT_BODY))
                assert reply.status == 404, path
            two_hosts = http_request(gw, "POST", chat, CHAT_BODY, f"Host: {at}\r\n".encode())
            assert (await raw_exchange(gw, two_hosts)).status == 400  # refused by the parser
            assert decoy.app[MOCK_REQUESTS] == []
            mock_at = f"127.0.0.1:{gw.mock.port}"
            recorded = gw.mock_requests
            assert len(recorded) == len(replies)
            for request in recorded:
                assert request.headers["host"] == mock_at
                assert request.path in (chat, "/v1/messages") and request.query == ""
            await events_with_sentinel(gw, len(replies))
    finally:
        await decoy.close()


ADMIN_ROUTES = [
    ("GET", "/admin/customers", None),
    ("POST", "/admin/customers", {"id": "cust_mallory", "tier": "free"}),
    ("GET", "/admin/customers/{customer}", None),
    ("PATCH", "/admin/customers/{customer}", {"tier": "pro", "suspended": True}),
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys", {"customer_id": "{customer}"}),
    ("POST", "/admin/keys/{key_id}/revoke", None),
    ("GET", "/admin/usage/summary", None),
]


async def test_every_admin_route_needs_the_admin_token_and_a_refusal_changes_nothing(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOLLBOOTH_ADMIN_TOKEN", raising=False)
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config={"server": SERVER}
    ) as gw:
        accounts = gw.app[keys.accounts]
        [record] = await accounts.list_keys(gw.customer_id)

        def target(path: str) -> str:
            return path.format(customer=gw.customer_id, key_id=record.id)

        async def attempt(method: str, path: str, body: Any, headers: dict[str, str]) -> int:
            data = (
                orjson.dumps(body).replace(b"{customer}", gw.customer_id.encode())
                if body is not None
                else None
            )
            async with (
                aiohttp.ClientSession() as session,
                session.request(
                    method, gw.base_url + target(path), data=data, headers=headers
                ) as r,
            ):
                text = await r.read()
                assert b"Traceback" not in text
                return r.status

        problems: list[str] = []
        for method, path, body in ADMIN_ROUTES:  # the API is off without a token configured
            code = await attempt(method, path, body, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
            if code != 403:
                problems.append(f"admin off: {method} {path}: {code}")
        monkeypatch.setenv("TOLLBOOTH_ADMIN_TOKEN", ADMIN_TOKEN)
        wrong: list[dict[str, str]] = [
            {},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {gw.key}"},
            {"x-api-key": ADMIN_TOKEN},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            {"Authorization": ADMIN_TOKEN},
            {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
            {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
            {"Authorization": f"Bearer {ADMIN_TOKEN.upper()}"},
            {"Cookie": f"token={ADMIN_TOKEN}", "X-Admin-Token": ADMIN_TOKEN},
        ]
        for method, path, body in ADMIN_ROUTES:
            for headers in wrong:
                code = await attempt(method, path, body, headers)
                if code != 401:
                    problems.append(f"{method} {path} with {headers}: {code}")
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for path in (
            "/admin/customers/",
            "/ADMIN/customers",
            "//admin/customers",
            "/admin/./customers",
            "/v1/../admin/customers",
            "/admin%2Fcustomers",
        ):
            code = await attempt("GET", path, None, {})
            if code == 200:
                problems.append(f"GET {path} without a token: 200")
        assert not problems, "\n".join(problems)
        # Nothing the refused calls asked for happened.
        assert await accounts.get_customer("cust_mallory") is None
        customer = await accounts.get_customer(gw.customer_id)
        assert customer is not None and customer.tier == "free" and not customer.suspended
        assert len(await accounts.list_keys(gw.customer_id)) == 1
        served = await raw_exchange(gw, http_request(gw, "POST", "/v1/chat/completions", CHAT_BODY))
        assert served.status == 200  # the key was not revoked
        assert await attempt("GET", "/admin/customers", None, admin) == 200
