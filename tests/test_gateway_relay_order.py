"""A stream's usage event is handed to the writer (which journals it) before the client gets
the stream's terminal event, so a client that saw its stream complete always has its usage
recorded. Checked for both relay modes (pass-through and usage-stripping) and both APIs."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from gateway import keys
from storage.usage.event import UsageEvent
from tests.harness import Gateway, running_gateway


@pytest.fixture
async def gw(fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch):
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gateway:
        yield gateway


async def stream_and_watch(
    gw: Gateway, path: str, body: dict[str, Any], terminal: bytes, headers: dict[str, str]
) -> None:
    writer = gw.app[keys.writer]
    submitted: list[str] = []
    original = writer.submit

    async def spy(event: UsageEvent) -> None:
        submitted.append(str(event.id))
        await original(event)

    writer.submit = spy  # type: ignore[method-assign]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gw.base_url + path,
                data=orjson.dumps(body),
                headers={"content-type": "application/json", **headers},
            ) as response,
        ):
            request_id = response.headers["x-request-id"]
            seen = b""
            async for chunk in response.content.iter_any():
                seen += chunk
                if terminal in seen:
                    assert request_id in submitted, "terminal event reached the client first"
                    break
            else:
                pytest.fail("no terminal event")
    finally:
        writer.submit = original  # type: ignore[method-assign]
    [row] = await gw.events()
    assert str(row["id"]) == request_id and row["usage_source"] == "provider"


@pytest.mark.parametrize("include_usage", [False, True])
async def test_openai_done_waits_for_the_usage_event(gw: Gateway, include_usage: bool) -> None:
    body = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"include_usage": include_usage},
    }
    await stream_and_watch(
        gw, "/v1/chat/completions", body, b"data: [DONE]", {"Authorization": f"Bearer {gw.key}"}
    )


async def test_anthropic_message_stop_waits_for_the_usage_event(gw: Gateway) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 20,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    await stream_and_watch(
        gw,
        "/v1/messages",
        body,
        b"event: message_stop",
        {"x-api-key": gw.key, "anthropic-version": "2023-06-01"},
    )


async def test_responses_completed_waits_for_the_usage_event(gw: Gateway) -> None:
    body = {"model": "gpt-5", "stream": True, "input": "hi"}
    await stream_and_watch(
        gw,
        "/v1/responses",
        body,
        b"event: response.completed",
        {"Authorization": f"Bearer {gw.key}"},
    )
