"""The mock provider, served on loopback and driven by the official OpenAI and Anthropic SDKs
(and by raw HTTP where the exact bytes matter): every route plain and streamed, the
deterministic token rule of `gateway/mock_provider/tokens.py`, the fault headers, the options,
the request log and the `tollbooth mock-provider` command.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest
from pytest_aiohttp import AiohttpServer

from gateway.mock_provider import MOCK_REQUESTS, MockOptions, create_mock_app

Serve = Callable[..., Awaitable[str]]
USER: Any = [{"role": "user", "content": "hello there world"}]  # 3 + (4 + 3) = 10 input tokens
WORDS_20 = " ".join(f"tok{i}" for i in range(20))


@pytest.fixture
def serve(aiohttp_server: AiohttpServer) -> Serve:
    """Start a mock provider with these options; return its base URL (no trailing slash)."""

    async def start(**options: Any) -> str:
        server = await aiohttp_server(create_mock_app(MockOptions(**options)))
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def base_url(serve: Serve) -> str:
    return await serve()


@pytest.fixture
async def oai(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=base_url + "/v1", api_key="sk-provider", max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def claude(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=base_url, api_key="sk-ant-provider", max_retries=0
    ) as client:
        yield client


async def raw_post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    sent = {"Authorization": "Bearer sk-provider", **(headers or {})}
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=sent) as r:
        return r.status, dict(r.headers), await r.read()


def sse_events(raw: bytes) -> list[tuple[str | None, bytes]]:
    """Split an SSE body into (event name, data); assert each event is well framed."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw[:-2].split(b"\n\n"):
        lines = block.split(b"\n")
        name = None
        if lines[0].startswith(b"event: "):
            name = lines.pop(0)[7:].decode()
        assert len(lines) == 1 and lines[0].startswith(b"data: "), block
        events.append((name, lines[0][6:]))
    return events


ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-provider", "anthropic-version": "2023-06-01"}


# --- OpenAI chat completions -----------------------------------------------------------------


async def test_chat_completion_counts_follow_the_word_rule(oai: openai.AsyncOpenAI) -> None:
    messages: Any = [{"role": "system", "content": "Be terse"}, *USER]
    raw = await oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    completion = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.content == WORDS_20
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (16, 20, 36)
    assert usage.prompt_tokens_details is not None and usage.completion_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


async def test_max_tokens_caps_the_answer_and_finishes_for_length(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=5)
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


async def test_reasoning_models_report_half_the_output_as_reasoning(
    oai: openai.AsyncOpenAI,
) -> None:
    completion = await oai.chat.completions.create(
        model="o3-mini", messages=USER, extra_headers={"x-mock-output-tokens": "11"}
    )
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert (usage.completion_tokens, usage.completion_tokens_details.reasoning_tokens) == (11, 5)
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5"


async def test_cached_tokens_are_included_in_openai_prompt_tokens(oai: openai.AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, extra_headers={"x-mock-cached-tokens": "100"}
    )
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (110, 100)


async def test_chat_stream_without_include_usage_has_no_usage_at_all(base_url: str) -> None:
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    status, headers, raw = await raw_post(base_url + "/v1/chat/completions", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == (None, b"[DONE]")
    chunks = [orjson.loads(data) for _, data in events[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == WORDS_20
    assert len(chunks) == 1 + 20 + 1 and chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(base_url: str) -> None:
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _, _, raw = await raw_post(base_url + "/v1/chat/completions", body)
    events = sse_events(raw)
    assert events[-1] == (None, b"[DONE]")
    chunks = [orjson.loads(data) for _, data in events[:-1]]
    *others, last = chunks
    assert all(chunk["usage"] is None and chunk["choices"] for chunk in others)
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 10 and last["usage"]["completion_tokens"] == 20


async def test_chat_stream_through_the_sdk(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 20
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 30


async def test_no_usage_header_omits_usage_like_some_compatible_servers(
    oai: openai.AsyncOpenAI,
) -> None:
    headers = {"x-mock-no-usage": "1"}
    completion = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, extra_headers=headers
    )
    assert completion.usage is None and completion.choices[0].message.content == WORDS_20
    stream = await oai.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(chunk.usage is None and chunk.choices for chunk in chunks)


# --- OpenAI completions, embeddings, models ----------------------------------------------------


async def test_legacy_completions_plain_and_streamed(oai: openai.AsyncOpenAI) -> None:
    plain = await oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi now")
    assert plain.id.startswith("cmpl-") and plain.choices[0].text == WORDS_20
    assert plain.usage is not None and (plain.usage.prompt_tokens, plain.usage.total_tokens) == (
        3,
        23,
    )
    stream = await oai.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt=["one two", "three"],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 tok2 tok3"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)


async def test_embeddings_in_base64_and_float_carry_the_same_vector(
    oai: openai.AsyncOpenAI, base_url: str
) -> None:
    result = await oai.embeddings.create(
        model="text-embedding-3-small", input=["a b c", "d"], dimensions=8
    )  # the SDK asks for base64 and decodes it
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 4 and result.usage.total_tokens == 4
    body = {"model": "text-embedding-3-small", "input": "a b c", "dimensions": 8}
    _, _, raw = await raw_post(base_url + "/v1/embeddings", {**body, "encoding_format": "float"})
    floats = orjson.loads(raw)["data"][0]["embedding"]
    assert result.data[0].embedding == floats and len(floats) == 8
    _, _, raw = await raw_post(base_url + "/v1/embeddings", {**body, "encoding_format": "base64"})
    packed = base64.b64decode(orjson.loads(raw)["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == floats


async def test_models_answer_in_the_shape_of_the_asking_api(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    openai_models = [m.id async for m in oai.models.list()]
    assert "gpt-4o" in openai_models
    claude_models = [m async for m in claude.models.list()]
    assert claude_models[0].type == "model" and claude_models[0].id.startswith("claude-")


# --- OpenAI Responses ------------------------------------------------------------------------


async def test_responses_plain_reports_responses_usage(oai: openai.AsyncOpenAI) -> None:
    response = await oai.responses.create(
        model="gpt-5",
        input="hello world",
        instructions="be brief",
        extra_headers={"x-mock-cached-tokens": "5"},
    )
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == " ".join(f"tok{i}" for i in range(10))
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens) == (3 + 6 + 6 + 5, 5)
    assert (usage.output_tokens, usage.output_tokens_details.reasoning_tokens) == (20, 10)
    assert usage.total_tokens == 40


async def test_responses_stream_is_the_real_event_sequence(base_url: str) -> None:
    body = {"model": "gpt-4.1", "input": "hi", "stream": True}
    _, _, raw = await raw_post(base_url + "/v1/responses", body, {"x-mock-output-tokens": "3"})
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    payloads = [orjson.loads(data) for _, data in events]
    assert [p["sequence_number"] for p in payloads] == list(range(len(events)))
    assert all(p["type"] == name for p, name in zip(payloads, names, strict=True))
    assert payloads[0]["response"]["usage"] is None
    assert payloads[-1]["response"]["usage"] == {
        "input_tokens": 8,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 11,
    }


async def test_responses_stream_helper_gets_the_final_response(oai: openai.AsyncOpenAI) -> None:
    async with oai.responses.stream(model="gpt-4.1", input="hello world") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == WORDS_20
    assert final.usage is not None and final.usage.input_tokens == 9


async def test_responses_cut_by_max_output_tokens_end_incomplete(base_url: str) -> None:
    body = {"model": "gpt-4.1", "input": "hi", "stream": True, "max_output_tokens": 2}
    _, _, raw = await raw_post(base_url + "/v1/responses", body)
    name, data = sse_events(raw)[-1]
    final = orjson.loads(data)["response"]
    assert name == "response.incomplete" and final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 2


# --- Anthropic -------------------------------------------------------------------------------


async def test_message_usage_excludes_cache_reads_and_writes(
    claude: anthropic.AsyncAnthropic,
) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        system="be nice",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello world"}]}],
        extra_headers={"x-mock-cached-tokens": "70", "x-mock-cache-write-tokens": "30"},
    )
    message = await raw.parse()
    assert raw.headers["request-id"].startswith("req_")
    assert message.id.startswith("msg_01") and message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text == WORDS_20
    usage = message.usage
    assert usage.input_tokens == 3 + 6 + 6
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (70, 30)
    assert usage.output_tokens == 20


async def test_message_stream_is_the_real_event_sequence(base_url: str) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 4, "messages": USER, "stream": True}
    headers = {**ANTHROPIC_HEADERS, "x-mock-cached-tokens": "7", "x-mock-cache-write-tokens": "2"}
    _, _, raw = await raw_post(base_url + "/v1/messages", body, headers)
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [orjson.loads(data) for _, data in events]
    assert all(p["type"] == name for p, name in zip(payloads, names, strict=True))
    start_usage = payloads[0]["message"]["usage"]
    assert (start_usage["input_tokens"], start_usage["output_tokens"]) == (10, 1)
    assert start_usage["cache_read_input_tokens"] == 7
    assert start_usage["cache_creation_input_tokens"] == 2
    assert [p["delta"]["text"] for p in payloads[3:7]] == ["tok0", " tok1", " tok2", " tok3"]
    assert payloads[-2]["delta"]["stop_reason"] == "max_tokens"
    assert payloads[-2]["usage"] == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 7,
        "output_tokens": 4,
    }


async def test_messages_stream_helper_accumulates_the_final_message(
    claude: anthropic.AsyncAnthropic,
) -> None:
    async with claude.messages.stream(
        model="claude-sonnet-4-6", max_tokens=1000, messages=USER
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == WORDS_20
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 20)


async def test_count_tokens_uses_the_same_rule(claude: anthropic.AsyncAnthropic) -> None:
    counted = await claude.messages.count_tokens(
        model="claude-sonnet-4-6", system="be nice", messages=USER
    )
    assert counted.input_tokens == 3 + 6 + 7


async def test_anthropic_version_is_required(base_url: str) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": USER}
    status, headers, raw = await raw_post(
        base_url + "/v1/messages", body, {"x-api-key": "sk-ant-provider"}
    )
    assert status == 400 and "request-id" in headers
    error = orjson.loads(raw)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in error["error"]["message"]


async def test_anthropic_accepts_a_bearer_key(base_url: str) -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": USER}
    status, _, _ = await raw_post(base_url + "/v1/messages", body, {"anthropic-version": "x"})
    assert status == 200


async def test_anthropic_requires_max_tokens(base_url: str) -> None:
    body = {"model": "claude-sonnet-4-6", "messages": USER}
    status, _, raw = await raw_post(base_url + "/v1/messages", body, ANTHROPIC_HEADERS)
    assert status == 400 and "max_tokens" in orjson.loads(raw)["error"]["message"]


# --- Authentication and malformed requests ---------------------------------------------------


async def test_a_wrong_key_gets_401_in_each_provider_shape(serve: Serve) -> None:
    base_url = await serve(api_key="sk-right")
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-wrong") as oai:
        with pytest.raises(openai.AuthenticationError) as oai_error:
            await oai.chat.completions.create(model="gpt-4o", messages=USER)
    assert oai_error.value.code == "invalid_api_key"
    assert "sk-wrong" not in oai_error.value.response.text
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-wrong") as claude:
        with pytest.raises(anthropic.AuthenticationError) as claude_error:
            await claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=USER)
    assert claude_error.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": claude_error.value.response.headers["request-id"],
    }
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="sk-right") as oai:
        assert (await oai.chat.completions.create(model="gpt-4o", messages=USER)).usage


async def test_a_missing_key_gets_401(base_url: str) -> None:
    body = {"model": "gpt-4o", "messages": USER}
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 401
        assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_malformed_requests_get_provider_shaped_400s(base_url: str) -> None:
    url = base_url + "/v1/chat/completions"
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session,
        session.post(url, data=b"{not json") as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    status, _, raw = await raw_post(url, {"messages": USER})
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "model"
    status, _, raw = await raw_post(
        url, {"model": "gpt-4o", "messages": USER}, {"x-mock-error": "bogus"}
    )
    assert status == 400 and "x-mock-error" in orjson.loads(raw)["error"]["message"]


async def test_unknown_paths_answer_404_in_the_provider_shape(base_url: str) -> None:
    status, _, raw = await raw_post(base_url + "/v1/nope", {})
    assert status == 404 and orjson.loads(raw)["error"]["message"] == "Invalid URL (POST /v1/nope)"
    status, _, raw = await raw_post(base_url + "/v1/nope", {}, ANTHROPIC_HEADERS)
    assert status == 404 and orjson.loads(raw)["error"]["type"] == "not_found_error"


# --- Injected faults ---------------------------------------------------------------------------


async def test_injected_500_has_each_provider_shape(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    fault = {"x-mock-error": "500"}
    with pytest.raises(openai.InternalServerError) as oai_error:
        await oai.chat.completions.create(model="gpt-4o", messages=USER, extra_headers=fault)
    assert oai_error.value.type == "server_error"
    with pytest.raises(anthropic.InternalServerError) as claude_error:
        await claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=USER, extra_headers=fault
        )
    assert isinstance(claude_error.value.body, dict)
    assert claude_error.value.body["error"]["type"] == "api_error"


async def test_injected_429_says_when_to_retry(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    fault = {"x-mock-error": "429", "x-mock-retry-after": "7"}
    with pytest.raises(openai.RateLimitError) as oai_error:
        await oai.chat.completions.create(model="gpt-4o", messages=USER, extra_headers=fault)
    headers = oai_error.value.response.headers
    assert headers["retry-after"] == "7" and headers["x-ratelimit-remaining-requests"] == "0"
    assert oai_error.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as claude_error:
        await claude.messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=USER, extra_headers=fault
        )
    assert claude_error.value.response.headers["retry-after"] == "7"
    assert isinstance(claude_error.value.body, dict)
    assert claude_error.value.body["error"]["type"] == "rate_limit_error"


async def test_insufficient_quota_is_openais_final_429(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await oai.chat.completions.create(
            model="gpt-4o", messages=USER, extra_headers={"x-mock-error": "insufficient-quota"}
        )
    assert caught.value.code == "insufficient_quota"


async def test_injected_529_is_anthropic_overloaded(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.OverloadedError) as caught:
        await claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=5,
            messages=USER,
            extra_headers={"x-mock-error": "529"},
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_reset_drops_the_connection_before_or_mid_stream(oai: openai.AsyncOpenAI) -> None:
    fault = {"x-mock-error": "reset"}
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(model="gpt-4o", messages=USER, extra_headers=fault)
    stream = await oai.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, extra_headers=fault
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == (1 + 20) // 2  # half of the events before the terminal ones


async def test_truncate_ends_the_stream_without_terminal_events(base_url: str) -> None:
    fault = {"x-mock-error": "truncate"}
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    _, _, raw = await raw_post(base_url + "/v1/chat/completions", body, fault)
    chunks = [orjson.loads(data) for _, data in sse_events(raw)]  # [DONE] would not parse
    assert len(chunks) == 21 and all(c["choices"][0]["finish_reason"] is None for c in chunks)
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": USER, "stream": True}
    _, _, raw = await raw_post(base_url + "/v1/messages", body, {**ANTHROPIC_HEADERS, **fault})
    names = {name for name, _ in sse_events(raw)}
    assert "content_block_delta" in names and not names & {"message_delta", "message_stop"}


async def test_invalid_json_answers_200_with_a_body_that_does_not_parse(base_url: str) -> None:
    body = {"model": "gpt-4o", "messages": USER}
    status, _, raw = await raw_post(
        base_url + "/v1/chat/completions", body, {"x-mock-error": "invalid-json"}
    )
    assert status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)


async def test_stream_error_sends_anthropics_error_event(claude: anthropic.AsyncAnthropic) -> None:
    texts = []
    with pytest.raises(anthropic.APIStatusError):
        async with claude.messages.stream(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=USER,
            extra_headers={"x-mock-error": "stream-error"},
        ) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert 0 < len(texts) < 20


async def test_slow_waits_the_asked_delay(oai: openai.AsyncOpenAI) -> None:
    started = time.monotonic()
    completion = await oai.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        extra_headers={"x-mock-error": "slow", "x-mock-delay-ms": "300"},
    )
    assert time.monotonic() - started >= 0.3 and completion.usage is not None


# --- Options -----------------------------------------------------------------------------------


async def statuses(base_url: str, count: int) -> list[int]:
    body = {"model": "gpt-4o", "messages": USER}
    return [(await raw_post(base_url + "/v1/chat/completions", body))[0] for _ in range(count)]


async def test_error_rate_draws_from_a_seeded_rng(serve: Serve) -> None:
    first = await statuses(await serve(error_rate=0.5, seed=7), 30)
    second = await statuses(await serve(error_rate=0.5, seed=7), 30)
    assert first == second and set(first) == {200, 500}
    assert set(await statuses(await serve(error_rate=1.0), 5)) == {500}


async def test_latency_comes_before_the_first_byte(serve: Serve) -> None:
    base_url = await serve(latency_ms=250)
    started = time.monotonic()
    assert await statuses(base_url, 1) == [200]
    assert time.monotonic() - started >= 0.25


async def test_token_delay_paces_the_stream(serve: Serve) -> None:
    base_url = await serve(token_delay_ms=40)
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    headers = {"Authorization": "Bearer k", "x-mock-output-tokens": "5"}
    arrivals = []
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url + "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        async for _ in response.content.iter_any():
            arrivals.append(time.monotonic())
    # role + 5 words + finish + [DONE] = 8 events, 7 gaps of 40 ms
    assert arrivals[-1] - arrivals[0] >= 7 * 0.04 * 0.9


# --- The request log -----------------------------------------------------------------------


async def test_the_request_log_records_what_arrived(
    aiohttp_server: AiohttpServer,
) -> None:
    app = create_mock_app()
    server = await aiohttp_server(app)
    base_url = str(server.make_url("")).rstrip("/")
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-provider") as claude:
        await claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=5,
            messages=USER,
            extra_headers={
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "prompt-caching-2024-07-31",
            },
        )
    [recorded] = app[MOCK_REQUESTS]
    assert (recorded.method, recorded.path) == ("POST", "/v1/messages")
    # The SDK sends its key as `Authorization: Bearer` (older versions: `x-api-key`).
    provider_key = recorded.headers.get("x-api-key") or recorded.headers["authorization"]
    assert provider_key.removeprefix("Bearer ") == "sk-ant-provider"
    assert recorded.headers["anthropic-version"] == "2023-06-01"
    assert recorded.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert orjson.loads(recorded.body)["messages"] == USER
    async with aiohttp.ClientSession() as session:
        async with session.get(base_url + "/_mock/requests") as response:
            [entry] = await response.json()
        assert entry["headers"] == recorded.headers
        assert orjson.loads(entry["body"])["model"] == "claude-sonnet-4-6"
        async with session.delete(base_url + "/_mock/requests") as response:
            assert response.status == 204
        async with session.get(base_url + "/_mock/requests") as response:
            assert await response.json() == []


async def test_the_request_log_keeps_only_the_newest_entries(serve: Serve) -> None:
    base_url = await serve(request_log_limit=2)
    await statuses(base_url, 3)
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url + "/_mock/requests") as response,
    ):
        assert len(await response.json()) == 2


# --- The command -------------------------------------------------------------------------------

RUN_COMMAND = """
import argparse, sys
from gateway.cli import mock_provider
parser = argparse.ArgumentParser(prog="tollbooth")
mock_provider.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


@pytest.mark.slow
async def test_mock_provider_command_serves_until_sigterm() -> None:
    # Only this command's parser, so the test does not depend on the other command modules.
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", RUN_COMMAND, "mock-provider", "--port", "0", "--api-key", "k"],
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("mock provider listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="k") as oai:
            completion = await oai.chat.completions.create(model="gpt-4o", messages=USER)
        assert completion.usage is not None and completion.usage.prompt_tokens == 10
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
