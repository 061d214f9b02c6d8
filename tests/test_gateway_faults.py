"""The request path when things go wrong or arrive slowly: bytes flow as they come, a client
that leaves mid-stream is still billed (provider usage when it comes, an estimate otherwise),
a response without usage is counted with tiktoken and flagged, and the documented statuses
come back in the API's shape."""

from __future__ import annotations

import time

import aiohttp
import openai
import orjson
import pytest

from gateway.mock_provider.app import MockOptions
from tests.harness import Gateway, running_gateway

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there friend"}]}


def server_config(**overrides: object) -> dict[str, object]:
    server: dict[str, object] = {"host": "127.0.0.1", "port": 0, "disconnect_drain_s": 5}
    server.update(overrides)
    return {"server": server}


async def post(gw: Gateway, path: str, body: bytes, **headers: str) -> aiohttp.ClientResponse:
    session = aiohttp.ClientSession()
    try:
        response = await session.post(
            gw.base_url + path,
            data=body,
            headers={
                "Authorization": f"Bearer {gw.key}",
                "content-type": "application/json",
                **headers,
            },
        )
        await response.read()
        return response
    finally:
        await session.close()


async def test_first_event_reaches_client_before_upstream_finishes(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = MockOptions(token_delay_ms=100, output_tokens=10)
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, mock_options=options
    ) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        started = time.perf_counter()
        stream = await client.chat.completions.create(stream=True, **CHAT)  # type: ignore[call-overload]
        first_at = None
        async for chunk in stream:
            if first_at is None and chunk.choices and chunk.choices[0].delta.content:
                first_at = time.perf_counter() - started
        total = time.perf_counter() - started
        assert first_at is not None
        assert total >= 0.9  # ten tokens, 100 ms apart
        assert first_at < total / 2


@pytest.mark.parametrize("drain_s, source", [(5, "provider"), (0, "estimated")])
async def test_client_disconnect_mid_stream_is_still_billed(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    drain_s: float,
    source: str,
) -> None:
    options = MockOptions(token_delay_ms=30, output_tokens=20)
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        mock_options=options,
        extra_config=server_config(disconnect_drain_s=drain_s),
    ) as gw:
        body = orjson.dumps({**CHAT, "stream": True})
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                gw.openai_base_url + "/chat/completions",
                data=body,
                headers={"Authorization": f"Bearer {gw.key}", "content-type": "application/json"},
            )
            await response.content.readany()  # the first bytes, then hang up
            response.close()
        [row] = await gw.events()
        assert row["usage_source"] == source
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
        assert row["price_usd"] > 0
        assert orjson.loads(row["metadata"]).get("client_disconnected") is True
        if source == "provider":
            assert row["output_tokens"] == 20


async def test_response_without_usage_is_estimated_not_zero(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        reply = await client.chat.completions.create(extra_headers={"x-mock-no-usage": "1"}, **CHAT)  # type: ignore[call-overload]
        assert reply.usage is None
        stream = await client.chat.completions.create(
            stream=True, extra_headers={"x-mock-no-usage": "1"}, **CHAT
        )  # type: ignore[call-overload]
        _ = [c async for c in stream]
        rows = await gw.events(wait_for=2)
        for row in rows:
            assert row["usage_source"] == "estimated"
            assert row["input_tokens"] > 0 and row["output_tokens"] > 0
            assert row["price_usd"] > 0
        assert rows[0]["output_tokens"] == rows[1]["output_tokens"]


async def test_documented_error_statuses(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = server_config(max_body_mb=1, upstream_read_timeout_s=0.5)
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config=extra
    ) as gw:
        malformed = await post(gw, "/v1/chat/completions", b"{not json")
        assert malformed.status == 400
        missing_model = await post(gw, "/v1/chat/completions", b'{"messages": []}')
        assert missing_model.status == 400
        too_big = await post(gw, "/v1/chat/completions", b"x" * (2 * 1024 * 1024))
        assert too_big.status == 413
        unknown = await post(gw, "/v1/files", b"{}")
        assert unknown.status == 404
        anthropic_shape = await post(gw, "/v1/messages", b"[1]")
        assert anthropic_shape.status == 400
        assert gw.mock_requests == []
        slow = await post(
            gw, "/v1/chat/completions", orjson.dumps(CHAT), **{"x-mock-error": "slow"}
        )
        assert slow.status == 504
        await gw.mock.close()
        gone = await post(gw, "/v1/chat/completions", orjson.dumps(CHAT))
        assert gone.status == 502
        rows = await gw.events(wait_for=2)
        assert sorted(r["status_code"] for r in rows) == [502, 504]


async def test_journal_full_under_refuse_policy_is_503_before_the_provider(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import keys
    from storage.usage.writer import JournalFullError

    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gw:

        def full() -> None:
            raise JournalFullError("journal over its budget")

        monkeypatch.setattr(gw.app[keys.writer], "check_accepting", full)
        refused = await post(gw, "/v1/chat/completions", orjson.dumps(CHAT))
        assert refused.status == 503
        assert gw.mock_requests == []
