"""The official `anthropic` SDK through Tollbooth: messages plain, streamed and through the
`messages.stream()` helper, count_tokens (forwarded, never recorded), both auth styles, and
cache read / cache write tokens priced at their own rates."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.harness import ANTHROPIC_PROVIDER_KEY, Gateway, running_gateway
from tests.helpers.hand_priced import expected_money

MODEL = "claude-sonnet-4-5"
MESSAGES = [{"role": "user", "content": "Name three rivers in Europe please"}]


@pytest.fixture
async def gw(fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch):
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gateway:
        yield gateway


def check_row(row: Any, gw: Gateway, usage: anthropic.types.Usage, *, streamed: bool) -> None:
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    assert row["customer_id"] == gw.customer_id
    assert row["provider"] == "anthropic"
    assert row["endpoint"] == "messages"
    assert row["streamed"] is streamed
    assert row["status_code"] == 200
    assert row["usage_source"] == "provider"
    assert row["input_tokens"] == usage.input_tokens + cache_read + cache_write
    assert row["cached_input_tokens"] == cache_read
    assert row["cache_write_tokens"] == cache_write
    assert row["output_tokens"] == usage.output_tokens
    assert (row["cost_usd"], row["price_usd"]) == expected_money(MODEL, row)


CACHE_HEADERS = {"x-mock-cached-tokens": "40", "x-mock-cache-write-tokens": "25"}


async def test_message_with_cache_tokens_is_priced_per_kind(gw: Gateway) -> None:
    client = anthropic.AsyncAnthropic(api_key=gw.key, base_url=gw.anthropic_base_url, max_retries=0)
    reply = await client.messages.create(
        model=MODEL,
        max_tokens=16,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers=CACHE_HEADERS,
    )
    assert reply.usage.cache_read_input_tokens == 40
    [row] = await gw.events()
    check_row(row, gw, reply.usage, streamed=False)
    assert row["upstream_request_id"] == reply.id


async def test_streamed_message_takes_last_cumulative_delta(gw: Gateway) -> None:
    client = anthropic.AsyncAnthropic(api_key=gw.key, base_url=gw.anthropic_base_url, max_retries=0)
    stream = await client.messages.create(
        model=MODEL,
        max_tokens=30,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers=CACHE_HEADERS,
    )
    start_usage = None
    output_tokens = 0
    text = ""
    async for event in stream:
        if event.type == "message_start":
            start_usage = event.message.usage
        elif event.type == "message_delta":
            output_tokens = event.usage.output_tokens
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            text += event.delta.text
    assert start_usage is not None and output_tokens > 1 and text
    final = start_usage.model_copy(update={"output_tokens": output_tokens})
    [row] = await gw.events()
    check_row(row, gw, final, streamed=True)


async def test_stream_helper_and_bearer_auth(gw: Gateway) -> None:
    # anthropic SDK 2.x sends `Authorization: Bearer` when given auth_token.
    client = anthropic.AsyncAnthropic(
        auth_token=gw.key,
        base_url=gw.anthropic_base_url,
        max_retries=0,
        default_headers={"anthropic-beta": "test-beta-1"},
    )
    async with client.messages.stream(model=MODEL, max_tokens=10, messages=MESSAGES) as s:  # type: ignore[arg-type]
        text = await s.get_final_text()
        final = await s.get_final_message()
    assert text
    [row] = await gw.events()
    check_row(row, gw, final.usage, streamed=True)
    sent = gw.mock_requests[-1]
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["x-api-key"] == ANTHROPIC_PROVIDER_KEY
    assert "authorization" not in headers
    assert headers["anthropic-version"] == client.default_headers["anthropic-version"]
    assert headers["anthropic-beta"] == "test-beta-1"


async def test_count_tokens_is_forwarded_but_not_recorded(gw: Gateway) -> None:
    client = anthropic.AsyncAnthropic(api_key=gw.key, base_url=gw.anthropic_base_url, max_retries=0)
    counted = await client.messages.count_tokens(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert counted.input_tokens > 0
    assert gw.mock_requests and gw.mock_requests[-1].path == "/v1/messages/count_tokens"
    assert await gw.events(wait_for=1, timeout_s=0.5) == []


async def test_errors_have_anthropic_shape(gw: Gateway) -> None:
    client = anthropic.AsyncAnthropic(
        api_key="tb_nope", base_url=gw.anthropic_base_url, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as err:
        await client.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert "tb_nope" not in str(body)


async def test_provider_error_is_recorded_with_its_status(gw: Gateway) -> None:
    client = anthropic.AsyncAnthropic(api_key=gw.key, base_url=gw.anthropic_base_url, max_retries=0)
    with pytest.raises(anthropic.InternalServerError):
        await client.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"x-mock-error": "500"},
        )
    [row] = await gw.events()
    assert row["status_code"] == 500
    assert row["input_tokens"] == row["output_tokens"] == 0
    assert row["price_usd"] == 0


async def test_models_list_in_anthropic_shape(gw: Gateway) -> None:
    client = anthropic.AsyncAnthropic(api_key=gw.key, base_url=gw.anthropic_base_url, max_retries=0)
    ids = [m.id async for m in client.models.list()]
    assert MODEL in ids and not any(i.startswith("gpt") for i in ids)


async def test_base_url_ending_in_v1_is_served_as_messages(gw: Gateway) -> None:
    # base_url=".../v1" (the OpenAI SDK's habit) makes the SDK call /v1/v1/messages.
    client = anthropic.AsyncAnthropic(
        api_key=gw.key, base_url=gw.anthropic_base_url + "/v1", max_retries=0
    )
    reply = await client.messages.create(
        model=MODEL,
        max_tokens=16,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers=CACHE_HEADERS,
    )
    [row] = await gw.events()
    check_row(row, gw, reply.usage, streamed=False)
    assert row["upstream_request_id"] == reply.id
    assert [sent.path for sent in gw.mock_requests] == ["/v1/messages"]


async def test_base_url_ending_in_v1_streams_are_metered(gw: Gateway) -> None:
    client = anthropic.AsyncAnthropic(
        api_key=gw.key, base_url=gw.anthropic_base_url + "/v1", max_retries=0
    )
    async with client.messages.stream(
        model=MODEL,
        max_tokens=30,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers=CACHE_HEADERS,
    ) as stream:
        assert await stream.get_final_text()
        final = await stream.get_final_message()
    [row] = await gw.events()
    check_row(row, gw, final.usage, streamed=True)
    assert [sent.path for sent in gw.mock_requests] == ["/v1/messages"]


async def test_base_url_ending_in_v1_counts_tokens_and_keeps_the_error_shape(
    gw: Gateway,
) -> None:
    client = anthropic.AsyncAnthropic(
        api_key=gw.key, base_url=gw.anthropic_base_url + "/v1", max_retries=0
    )
    counted = await client.messages.count_tokens(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert counted.input_tokens > 0
    assert [sent.path for sent in gw.mock_requests] == ["/v1/messages/count_tokens"]
    stranger = anthropic.AsyncAnthropic(
        api_key="tb_nope", base_url=gw.anthropic_base_url + "/v1", max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError) as err:
        await stranger.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    assert isinstance(err.value.body, dict) and err.value.body["type"] == "error"
    assert await gw.events(wait_for=1, timeout_s=0.5) == []
