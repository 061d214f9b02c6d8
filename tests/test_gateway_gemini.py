"""The official `google-genai` SDK through Tollbooth (`kind: gemini`) against the mock
provider: generate (plain and streamed), count tokens, embeddings, under `/v1` (the SDK's
default) and `/v1beta`. Each billed call leaves one usage event with Gemini's counts mapped
as docs/providers.md says (input = prompt + tool-use prompt, output = candidates + thoughts); count
tokens leaves none; the provider sees its own key, never the client's."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from google import genai
from google.genai import errors, types

from gateway.mock_provider.app import MockOptions
from tests.harness import PROVIDER_KEY, Gateway, running_gateway
from tests.helpers.hand_priced import expected_money

PROMPT = "Name three rivers of Europe please"


def gemini_providers(mock_url: str) -> dict[str, Any]:
    """The `google` provider entry, beside the harness's OpenAI and Anthropic ones."""
    return {"google": {"kind": "gemini", "base_url": mock_url, "api_key_env": "TB_TEST_OPENAI_KEY"}}


@pytest.fixture
async def gw(fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch):
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        mock_options=MockOptions(api_key=PROVIDER_KEY),
        providers=gemini_providers,
    ) as gateway:
        yield gateway


def client(gw: Gateway, api_version: str | None = None, key: str | None = None) -> genai.Client:
    options = types.HttpOptions(base_url=gw.base_url, api_version=api_version)
    return genai.Client(api_key=key or gw.key, http_options=options)


def assert_row(
    row: Any,
    *,
    model: str,
    endpoint: str,
    streamed: bool,
    usage: types.GenerateContentResponseUsageMetadata | None,
) -> None:
    assert row["provider"] == "google"
    assert row["model"] == model
    assert row["endpoint"] == endpoint
    assert row["streamed"] is streamed
    assert row["status_code"] == 200
    assert row["usage_source"] == "provider"
    if usage is not None:
        thoughts = usage.thoughts_token_count or 0
        assert row["input_tokens"] == (usage.prompt_token_count or 0) + (
            usage.tool_use_prompt_token_count or 0
        )
        assert row["output_tokens"] == (usage.candidates_token_count or 0) + thoughts
        assert row["reasoning_tokens"] == thoughts
        assert row["cached_input_tokens"] == (usage.cached_content_token_count or 0)
    cost, charged = expected_money(model, row)
    assert row["cost_usd"] == cost and row["price_usd"] == charged


def assert_no_client_key_upstream(gw: Gateway) -> None:
    assert gw.mock_requests, "the provider was called"
    for sent in gw.mock_requests:
        assert sent.headers.get("x-goog-api-key") == PROVIDER_KEY
        assert gw.key not in repr(sent.headers) and "key=" not in sent.query
        assert gw.key.encode() not in sent.body


async def test_generate_content_is_metered_with_thoughts_as_output(gw: Gateway) -> None:
    reply = await client(gw).aio.models.generate_content(
        model="gemini-2.5-flash",
        contents=PROMPT,
        config=types.GenerateContentConfig(
            http_options=types.HttpOptions(headers={"x-mock-cached-tokens": "5"})
        ),
    )
    usage = reply.usage_metadata
    assert usage is not None and usage.thoughts_token_count and usage.cached_content_token_count
    [row] = await gw.events()
    assert_row(
        row, model="gemini-2.5-flash", endpoint="generateContent", streamed=False, usage=usage
    )
    assert row["upstream_request_id"] == reply.response_id
    assert gw.mock_requests[0].path == "/v1/models/gemini-2.5-flash:generateContent"
    assert_no_client_key_upstream(gw)


async def test_stream_takes_the_last_cumulative_usage(gw: Gateway) -> None:
    chunks = [
        chunk
        async for chunk in await client(gw, "v1beta").aio.models.generate_content_stream(
            model="gemini-2.5-pro", contents=PROMPT
        )
    ]
    assert len(chunks) > 2
    usage = chunks[-1].usage_metadata
    assert usage is not None
    [row] = await gw.events()
    assert_row(
        row, model="gemini-2.5-pro", endpoint="streamGenerateContent", streamed=True, usage=usage
    )
    assert row["output_tokens"] > (chunks[0].usage_metadata.candidates_token_count or 0)
    sent = gw.mock_requests[0]
    assert (sent.path, sent.query) == (
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        "alt=sse",
    )


async def test_count_tokens_is_forwarded_not_recorded(gw: Gateway) -> None:
    counted = await client(gw).aio.models.count_tokens(model="gemini-2.0-flash", contents=PROMPT)
    assert counted.total_tokens and counted.total_tokens > 0
    assert gw.mock_requests[0].path == "/v1/models/gemini-2.0-flash:countTokens"
    assert await gw.events(wait_for=1, timeout_s=0.5) == []


async def test_embeddings_are_metered_from_usage_metadata_or_estimated(gw: Gateway) -> None:
    gemini = client(gw)
    await gemini.aio.models.embed_content(
        model="gemini-embedding-001", contents=["one two three", "four five"]
    )
    await gemini.aio.models.embed_content(
        model="gemini-embedding-001",
        contents="six seven",
        config=types.EmbedContentConfig(
            http_options=types.HttpOptions(headers={"x-mock-no-usage": "1"})
        ),
    )
    provider, estimated = await gw.events(wait_for=2)
    assert gw.mock_requests[0].path == "/v1/models/gemini-embedding-001:batchEmbedContents"
    assert provider["endpoint"] == "batchEmbedContents"
    assert_row(
        provider,
        model="gemini-embedding-001",
        endpoint="batchEmbedContents",
        streamed=False,
        usage=None,
    )
    assert provider["input_tokens"] == 5 and provider["output_tokens"] == 0  # the mock's words
    assert estimated["usage_source"] == "estimated"
    assert estimated["input_tokens"] > 0 and estimated["price_usd"] > 0


async def test_key_in_the_query_is_read_and_never_forwarded(gw: Gateway) -> None:
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]})
    url = (
        f"{gw.base_url}/v1beta/models/gemini-2.5-flash-lite:streamGenerateContent"
        f"?alt=sse&key={gw.key}"
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"content-type": "application/json"}) as response,
    ):
        raw = await response.read()
        assert response.status == 200
    assert raw.startswith(b"data: {") and raw.endswith(b"\r\n\r\n")
    [row] = await gw.events()
    assert row["model"] == "gemini-2.5-flash-lite" and row["usage_source"] == "provider"
    assert gw.mock_requests[0].query == "alt=sse"
    assert_no_client_key_upstream(gw)


async def test_errors_have_geminis_shape(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiers = {"free": {"limits": {"requests_per_minute": 1}}}
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=tiers, providers=gemini_providers
    ) as gw:
        with pytest.raises(errors.ClientError) as refused:
            await client(gw, key="tb_wrong").aio.models.generate_content(
                model="gemini-2.5-flash", contents=PROMPT
            )
        assert (refused.value.code, refused.value.status) == (401, "UNAUTHENTICATED")
        with pytest.raises(errors.ClientError) as unknown:
            await client(gw).aio.models.generate_content(model="gemini-9-nope", contents=PROMPT)
        assert (unknown.value.code, unknown.value.status) == (400, "INVALID_ARGUMENT")
        await client(gw).aio.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
        with pytest.raises(errors.ClientError) as limited:
            await client(gw).aio.models.generate_content(model="gemini-2.5-flash", contents=PROMPT)
        assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
        assert limited.value.response.headers["retry-after"]
        assert len(gw.mock_requests) == 1


@pytest.mark.parametrize("drain_s, source", [(5, "provider"), (0, "estimated")])
async def test_client_leaving_mid_stream_is_drained_and_metered(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    drain_s: float,
    source: str,
) -> None:
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        mock_options=MockOptions(token_delay_ms=30, output_tokens=20),
        extra_config={"server": {"host": "127.0.0.1", "port": 0, "disconnect_drain_s": drain_s}},
        providers=gemini_providers,
    ) as gw:
        body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]})
        url = f"{gw.base_url}/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                url,
                data=body,
                headers={"x-goog-api-key": gw.key, "content-type": "application/json"},
            )
            await response.content.readany()  # the first bytes, then hang up
            response.close()
        [row] = await gw.events()
        assert row["usage_source"] == source
        assert orjson.loads(row["metadata"]).get("client_disconnected") is True
        assert row["price_usd"] > 0
        if source == "provider":
            assert row["output_tokens"] == 20


async def test_stream_cut_by_the_provider_is_estimated_and_flagged(gw: Gateway) -> None:
    headers = types.HttpOptions(headers={"x-mock-error": "truncate", "x-mock-output-tokens": "8"})
    chunks = [
        chunk
        async for chunk in await client(gw).aio.models.generate_content_stream(
            model="gemini-2.0-flash",
            contents=PROMPT,
            config=types.GenerateContentConfig(http_options=headers),
        )
    ]
    last = chunks[-1].usage_metadata
    assert last is not None and last.candidates_token_count == 7  # cut before the 8th
    [row] = await gw.events()
    assert row["usage_source"] == "estimated"
    assert row["input_tokens"] == last.prompt_token_count  # the reported prompt side is kept
    assert row["output_tokens"] >= 7 and row["price_usd"] > 0


async def test_a_chunked_request_served_by_aiohttp_is_routed_and_metered_alike(
    gw: Gateway,
) -> None:
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]})

    async def chunked() -> Any:  # no Content-Length: the front hands it to aiohttp
        yield body[:10]
        yield body[10:]

    url = f"{gw.base_url}/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={gw.key}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=chunked(), headers={"content-type": "application/json"}) as response,
    ):
        raw = await response.read()
        assert response.status == 200 and raw.endswith(b"\r\n\r\n")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gw.base_url}/v1/models/gemini-2.5-flash:noSuchMethod",
            data=chunked(),
            headers={"x-goog-api-key": gw.key},
        ) as missing,
    ):
        assert missing.status == 404
    [row] = await gw.events()
    assert (row["model"], row["endpoint"], row["streamed"]) == (
        "gemini-2.5-flash",
        "streamGenerateContent",
        True,
    )
    assert row["usage_source"] == "provider"
    assert gw.mock_requests[0].query == "alt=sse"
    assert_no_client_key_upstream(gw)
