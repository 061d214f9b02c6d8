"""`/health/live` and `/health/ready` (gateway.probes), and the headers every SSE response
carries from both servers (the fast front and aiohttp)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway import keys
from tests.harness import Gateway, running_gateway
from tests.helpers.serve_process import free_port

SSE_HEADERS = {"x-accel-buffering": "no", "cache-control": "no-cache"}


async def get(gw: Gateway, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + path) as response:
        return response.status, await response.json()


async def test_live_and_ready_answer_200_then_ready_turns_503_when_draining(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gw:
        assert await get(gw, "/health/live") == (200, {"status": "live"})
        assert await get(gw, "/health/ready") == (200, {"status": "ready"})
        gw.app[keys.drain].begin()
        assert await get(gw, "/health/ready") == (
            503,
            {"status": "not_ready", "reasons": ["draining"]},
        )
        assert await get(gw, "/health/live") == (200, {"status": "live"})


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("allow", (200, {"status": "ready"})),
        ("reject", (503, {"status": "not_ready", "reasons": ["redis_unreachable"]})),
    ],
)
async def test_ready_with_redis_down_follows_on_redis_error(
    fresh_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    expected: tuple[int, dict[str, Any]],
) -> None:
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    async with running_gateway(
        fresh_database_url,
        nothing_there,
        monkeypatch,
        extra_config={"quotas": {"on_redis_error": policy}},
    ) as gw:
        assert await get(gw, "/health/ready") == expected
        assert (await get(gw, "/health/live"))[0] == 200


async def chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body


@pytest.mark.parametrize("server", ["front", "aiohttp"])
@pytest.mark.parametrize("anthropic", [False, True])
async def test_sse_responses_carry_no_buffering_headers(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    server: str,
    anthropic: bool,
) -> None:
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gw:
        if anthropic:
            path, body = (
                "/v1/messages",
                (
                    b'{"model": "claude-sonnet-4-5", "max_tokens": 50, '
                    b'"stream": true, "messages": [{"role": "user", '
                    b'"content": "hi"}]}'
                ),
            )
            headers = {"x-api-key": gw.key, "anthropic-version": "2023-06-01"}
        else:
            path, body = (
                "/v1/chat/completions",
                (
                    b'{"model": "gpt-4o", "stream": true, '
                    b'"messages": [{"role": "user", '
                    b'"content": "hi"}]}'
                ),
            )
            headers = {"Authorization": f"Bearer {gw.key}"}
        headers["Content-Type"] = "application/json"
        # A chunked body is one the front hands to aiohttp.
        data: Any = body if server == "front" else chunked(body)
        async with (
            aiohttp.ClientSession() as session,
            session.post(gw.base_url + path, data=data, headers=headers) as response,
        ):
            text = await response.text()
            assert response.status == 200, text
            assert response.content_type == "text/event-stream"
            for name, value in SSE_HEADERS.items():
                assert response.headers.getall(name) == [value], response.headers
        json_answer = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gw.base_url + "/v1/chat/completions",
                json=json_answer,
                headers={"Authorization": f"Bearer {gw.key}"},
            ) as response,
        ):
            assert response.status == 200
            assert "x-accel-buffering" not in response.headers  # only streams
