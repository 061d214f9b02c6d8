"""The mock's Azure OpenAI and Gemini endpoints speak as the real services do where a client
or the gateway can tell: key headers and their refusals, Azure's api-version rules and opening
content-filter chunk, Gemini's CRLF-framed SSE with cumulative usage, error bodies."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer

from gateway.mock_provider.app import MockOptions, create_mock_app

KEY = "sk-mock-key"
CHAT = {"messages": [{"role": "user", "content": "one two three"}], "stream": True}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "one two three"}]}]}


async def client() -> TestClient[Any, Any]:
    mock = TestClient(TestServer(create_mock_app(MockOptions(api_key=KEY, output_tokens=3))))
    await mock.start_server()
    return mock


async def test_azure_deployment_stream_opens_with_the_filter_chunk() -> None:
    mock = await client()
    try:
        response = await mock.post(
            "/openai/deployments/prod/chat/completions",
            params={"api-version": "2024-10-21"},
            json={**CHAT, "stream_options": {"include_usage": True}},
            headers={"api-key": KEY},
        )
        events = (await response.read()).split(b"\n\n")
        first = orjson.loads(events[0].removeprefix(b"data: "))
        assert first["choices"] == [] and first["id"] == ""
        assert "prompt_filter_results" in first
        usage = orjson.loads(events[-3].removeprefix(b"data: "))["usage"]
        assert usage["completion_tokens"] == 3
        assert events[-2] == b"data: [DONE]"
    finally:
        await mock.close()


async def test_azure_refusals() -> None:
    mock = await client()
    try:
        no_version = await mock.post(
            "/openai/deployments/prod/chat/completions", json=CHAT, headers={"api-key": KEY}
        )
        assert no_version.status == 404
        old = await mock.post(
            "/openai/deployments/prod/chat/completions",
            params={"api-version": "2024-06-01"},
            json={**CHAT, "stream_options": {"include_usage": True}},
            headers={"api-key": KEY},
        )
        assert old.status == 400
        assert "stream_options" in (await old.json())["error"]["message"]
        bearer = await mock.post(
            "/openai/v1/chat/completions",
            json={**CHAT, "model": "m"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert bearer.status == 401
        assert (await bearer.json())["error"]["code"] == "401"
    finally:
        await mock.close()


async def test_gemini_sse_is_crlf_framed_with_cumulative_usage() -> None:
    mock = await client()
    try:
        response = await mock.post(
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            params={"alt": "sse"},
            json=GEMINI,
            headers={"x-goog-api-key": KEY},
        )
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = await response.read()
        assert raw.endswith(b"\r\n\r\n") and b"\n\n" not in raw.replace(b"\r\n\r\n", b"")
        chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in raw.split(b"\r\n\r\n") if e]
        counts = [c["usageMetadata"]["candidatesTokenCount"] for c in chunks]
        assert counts == [1, 2, 3]
        assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
        assert chunks[-1]["usageMetadata"]["thoughtsTokenCount"] == 1
        assert chunks[0]["usageMetadata"]["promptTokenCount"] == 3 + 4 + 3
    finally:
        await mock.close()


async def test_gemini_keys_and_errors() -> None:
    mock = await client()
    try:
        by_query = await mock.post(
            "/v1/models/gemini-2.0-flash:countTokens", params={"key": KEY}, json=GEMINI
        )
        assert (await by_query.json()) == {"totalTokens": 10}
        missing = await mock.post("/v1/models/gemini-2.0-flash:generateContent", json=GEMINI)
        assert missing.status == 403
        assert (await missing.json())["error"]["status"] == "PERMISSION_DENIED"
        wrong = await mock.post(
            "/v1/models/gemini-2.0-flash:generateContent",
            json=GEMINI,
            headers={"x-goog-api-key": "nope"},
        )
        body = await wrong.json()
        assert wrong.status == 400 and body["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        limited = await mock.post(
            "/v1/models/gemini-2.0-flash:generateContent",
            json=GEMINI,
            headers={"x-goog-api-key": KEY, "x-mock-error": "429"},
        )
        assert limited.status == 429
        assert (await limited.json())["error"] == {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
        }
    finally:
        await mock.close()
