"""The admin API: off without a token, refuses a wrong one, and manages customers and keys
with the same rules as the CLI; a key it creates works on the proxy and revoking it stops it."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from tests.harness import Gateway, running_gateway

TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture
async def gw(fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TOLLBOOTH_ADMIN_TOKEN", TOKEN)
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gateway:
        yield gateway


async def call(
    gw: Gateway,
    method: str,
    path: str,
    *,
    token: str | None = TOKEN,
    body: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gw.base_url + path, json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


async def test_admin_routes_need_the_token(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    status, body = await call(gw, "GET", "/admin/customers", token=None)
    assert status == 401 and body["error"]["code"] == "invalid_admin_token"
    status, _ = await call(gw, "GET", "/admin/customers", token="wrong")
    assert status == 401
    status, _ = await call(gw, "GET", "/admin/customers", token=gw.key)  # a customer key
    assert status == 401
    monkeypatch.delenv("TOLLBOOTH_ADMIN_TOKEN")
    status, body = await call(gw, "GET", "/admin/customers")
    assert status == 403 and body["error"]["code"] == "admin_disabled"


async def test_customer_and_key_lifecycle(gw: Gateway) -> None:
    status, created = await call(
        gw, "POST", "/admin/customers", body={"id": "beta", "tier": "free", "name": "Beta Inc"}
    )
    assert status == 201 and created["tier"] == "free"
    status, body = await call(gw, "POST", "/admin/customers", body={"id": "beta"})
    assert status == 409
    status, body = await call(gw, "POST", "/admin/customers", body={"id": "x", "tier": "gold"})
    assert status == 400 and "unknown tier" in body["error"]["message"]
    status, updated = await call(gw, "PATCH", "/admin/customers/beta", body={"tier": "pro"})
    assert status == 200 and updated["tier"] == "pro"
    status, _ = await call(gw, "PATCH", "/admin/customers/nobody", body={"tier": "pro"})
    assert status == 404

    status, key = await call(
        gw, "POST", "/admin/keys", body={"customer_id": "beta", "project_id": "api"}
    )
    assert status == 201 and key["key"].startswith("tb_")
    status, listed = await call(gw, "GET", "/admin/keys?customer=beta")
    assert [k["id"] for k in listed["data"]] == [key["id"]]
    assert key["key"] not in str(listed)

    client = openai.AsyncOpenAI(api_key=key["key"], base_url=gw.openai_base_url, max_retries=0)
    await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )  # type: ignore[list-item]
    for _ in range(100):  # the writer flushes off the request path
        status, usage = await call(gw, "GET", "/admin/usage/summary?customer=beta&days=1")
        if usage["requests"]:
            break
        await asyncio.sleep(0.05)
    assert status == 200 and usage["requests"] == 1 and usage["customer_id"] == "beta"

    status, revoked = await call(gw, "POST", f"/admin/keys/{key['id']}/revoke")
    assert status == 200 and revoked["was_active"] is True
    assert (await call(gw, "POST", f"/admin/keys/{key['id']}/revoke"))[1]["was_active"] is False
