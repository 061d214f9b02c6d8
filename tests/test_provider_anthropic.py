"""AnthropicApi against recorded-shape bodies and SSE streams (tests/data/anthropic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers.anthropic import COUNT_TOKENS, MESSAGES, AnthropicApi
from gateway.providers.base import Endpoint, SSEEvent, StreamResult
from gateway.sse import SSEParser
from pricing.models import Usage

DATA = Path(__file__).parent / "data" / "anthropic"
MESSAGE_ID = "msg_01HCDu5LRGeP2o7s2xGmxyx8"
api = AnthropicApi()


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def relay(stream: bytes) -> tuple[bytes, StreamResult]:
    """Feed `stream` in awkward 5-byte chunks; return what the client would see."""
    meter = api.stream_meter(MESSAGES, False)
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(0, len(stream), 5):
        events.extend(parser.feed(stream[i : i + 5]))
    events.extend(parser.flush())
    forwarded = b"".join(event.raw for event in events if meter.observe(event))
    return forwarded, meter.result()


def test_endpoints_keep_v1_in_the_upstream_path() -> None:
    assert (MESSAGES.method, MESSAGES.path, MESSAGES.upstream_path) == (
        "POST",
        "/v1/messages",
        "/v1/messages",
    )
    assert MESSAGES.streams and MESSAGES.metered
    assert (COUNT_TOKENS.path, COUNT_TOKENS.upstream_path) == (
        "/v1/messages/count_tokens",
        "/v1/messages/count_tokens",
    )
    assert not COUNT_TOKENS.metered
    assert api.endpoints == (MESSAGES, COUNT_TOKENS)


def test_upstream_headers_put_the_provider_key_in_x_api_key() -> None:
    client = {
        "Host": "127.0.0.1:8080",
        "X-Api-Key": "tb_client_secret",
        "Authorization": "Bearer tb_client_secret",
        "Connection": "close",
        "Content-Length": "99",
        "Accept-Encoding": "gzip",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
        "content-type": "application/json",
        "x-stainless-retry-count": "0",
    }
    assert api.upstream_headers(client, "sk-ant-provider") == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31",
        "content-type": "application/json",
        "x-stainless-retry-count": "0",
        "accept-encoding": "identity",
        "x-api-key": "sk-ant-provider",
    }


def test_missing_anthropic_version_stays_missing() -> None:
    headers = api.upstream_headers({"content-type": "application/json"}, "sk-ant")
    assert "anthropic-version" not in {name.lower() for name in headers}
    assert "authorization" not in {name.lower() for name in headers}


def test_prepare_body_never_strips() -> None:
    body: dict[str, Any] = {"stream": True, "model": "claude-sonnet-4-5"}
    assert api.prepare_body(MESSAGES, body) is False
    assert body == {"stream": True, "model": "claude-sonnet-4-5"}
    assert api.is_streaming(MESSAGES, body)
    assert not api.is_streaming(COUNT_TOKENS, body)


def test_usage_from_body_counts_cache_reads_and_writes_as_input() -> None:
    found = api.usage_from_body(MESSAGES, fixture("message.json"))
    assert found.usage == Usage(
        input_tokens=21 + 8192 + 1024,
        output_tokens=12,
        cached_input_tokens=8192,
        cache_write_tokens=1024,
    )
    assert found.upstream_id == "msg_01XFDUDYJgAACzvnptvVoYEL"


def test_count_tokens_and_unreadable_bodies_give_no_usage() -> None:
    assert api.usage_from_body(COUNT_TOKENS, fixture("count_tokens.json")).usage is None
    error = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert api.usage_from_body(MESSAGES, error).usage is None
    garbage = api.usage_from_body(MESSAGES, b"<html>502 Bad Gateway</html>")
    assert (garbage.usage, garbage.upstream_id) == (None, None)


def test_stream_input_from_message_start_output_from_message_delta() -> None:
    stream = fixture("message_stream.sse")
    forwarded, result = relay(stream)
    assert forwarded == stream
    assert result.usage == Usage(
        input_tokens=472 + 2048, output_tokens=15, cached_input_tokens=2048
    )
    assert result.upstream_id == MESSAGE_ID
    assert result.produced_text == ""


def test_cumulative_message_deltas_take_the_last_and_prefer_its_input_fields() -> None:
    _, result = relay(fixture("message_stream_thinking_tools.sse"))
    # Two message_deltas (40 then 89 output tokens): the last, never their sum; the final
    # delta's cache_read_input_tokens (512) replaces message_start's (0).
    assert result.usage == Usage(
        input_tokens=1210 + 512 + 3072,
        output_tokens=89,
        cached_input_tokens=512,
        cache_write_tokens=3072,
    )


def test_message_start_without_usage_then_full_delta() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_test",'
        b'"type":"message","role":"assistant","content":[],"model":"claude-test"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"input_tokens":11,"output_tokens":1,"cache_creation_input_tokens":3,'
        b'"cache_read_input_tokens":5}}\n\n'
    )
    _, result = relay(stream)
    assert result.usage == Usage(
        input_tokens=19, output_tokens=1, cached_input_tokens=5, cache_write_tokens=3
    )


def test_thinking_tokens_are_reasoning_when_reported() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_t",'
        b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"output_tokens":8,"output_tokens_details":{"thinking_tokens":3}}}'
        b"\n\n"
    )
    _, result = relay(stream)
    assert result.usage == Usage(input_tokens=25, output_tokens=8, reasoning_tokens=3)


def test_a_stream_cut_after_an_interim_message_delta_is_not_final() -> None:
    # Cumulative counts so far are a floor, not the usage: without the closing delta (its
    # stop_reason) or message_stop, the output is estimated from what was produced.
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_i",'
        b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hello there, friend"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":null},'
        b'"usage":{"output_tokens":4}}\n\n'
    )
    _, result = relay(stream)
    assert result.usage is None
    assert result.partial_usage == Usage(input_tokens=25, output_tokens=4)
    assert result.produced_text == "Hello there, friend"


def test_cut_stream_keeps_the_reported_input_and_the_produced_text() -> None:
    _, result = relay(fixture("message_stream_cut.sse"))
    assert result.usage is None
    # message_start's output count (2) is kept as a floor for the estimate.
    assert result.partial_usage == Usage(
        input_tokens=472 + 2048, cached_input_tokens=2048, output_tokens=2
    )
    assert result.upstream_id == MESSAGE_ID
    assert result.produced_text == "Canberra is the capital of Australia."


def test_thinking_and_tool_input_are_produced_text() -> None:
    stream = fixture("message_stream_thinking_tools.sse")
    _, result = relay(stream[: stream.index(b"event: message_delta")])
    assert result.usage is None
    assert result.produced_text == (
        'The user asks for Paris weather; use the get_weather tool.{"city": "Paris"}'
    )


def test_error_event_mid_stream_is_forwarded_without_usage() -> None:
    stream = fixture("message_stream_overloaded.sse")
    forwarded, result = relay(stream)
    assert forwarded == stream
    assert result.usage is None
    assert result.partial_usage is not None


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (422, "invalid_request_error"),
    ],
)
def test_error_body_has_the_anthropic_shape(status: int, error_type: str) -> None:
    body = api.error_body(status, "ignored_openai_type", "Something failed.", "code", "param")
    assert orjson.loads(body) == {
        "type": "error",
        "error": {"type": error_type, "message": "Something failed."},
    }


def test_prompt_text_reads_system_messages_and_tools() -> None:
    body = {
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "18C"}],
                    },
                    {"type": "image", "source": {"type": "base64", "data": "iVBOR"}},
                ],
            },
        ],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
    }
    assert api.prompt_text(MESSAGES, body) == (
        'You are terse.\nWeather in Paris?\nget_weather\n{"city":"Paris"}\n18C\n'
        '[{"name":"get_weather","input_schema":{"type":"object"}}]'
    )
    assert api.prompt_text(MESSAGES, {"system": "Be kind.", "messages": []}) == "Be kind."


def test_max_output_tokens_is_max_tokens() -> None:
    assert api.max_output_tokens({"max_tokens": 1024}) == 1024
    assert api.max_output_tokens({"max_tokens": "1024"}) is None
    assert api.max_output_tokens({}) is None


_KEYS = st.sampled_from(
    [
        "id",
        "type",
        "message",
        "usage",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "output_tokens_details",
        "thinking_tokens",
        "delta",
        "text",
        "thinking",
        "partial_json",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(_KEYS | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)
payloads = st.one_of(st.binary(max_size=200), json_values.map(lambda value: orjson.dumps(value)))
event_names = st.one_of(
    st.none(),
    st.sampled_from(["message_start", "message_delta", "content_block_delta", "ping", "error"]),
)


@settings(max_examples=300)
@given(endpoint=st.sampled_from(api.endpoints), body=payloads)
def test_usage_from_body_never_raises(endpoint: Endpoint, body: bytes) -> None:
    api.usage_from_body(endpoint, body)


@settings(max_examples=300)
@given(events=st.lists(st.tuples(event_names, payloads), max_size=8))
def test_stream_meter_never_raises(events: list[tuple[str | None, bytes]]) -> None:
    meter = api.stream_meter(MESSAGES, False)
    for name, data in events:
        assert meter.observe(SSEEvent(name, data, b"data: " + data + b"\n\n"))
    meter.result()


@settings(max_examples=200)
@given(body=json_values)
def test_prompt_text_never_raises(body: Any) -> None:
    api.prompt_text(MESSAGES, body if isinstance(body, dict) else {"messages": body})


def test_body_without_usage_yields_the_produced_text_for_an_estimate() -> None:
    body = orjson.dumps(
        {
            "id": "msg_1",
            "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Paris"}],
        }
    )
    found = AnthropicApi().usage_from_body(MESSAGES, body)
    assert found.usage is None
    assert found.produced_text == "hmm\nParis"


def test_one_hour_cache_writes_are_reported_apart() -> None:
    body = orjson.dumps(
        {
            "id": "msg_1",
            "content": [],
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 300,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 100,
                    "ephemeral_1h_input_tokens": 200,
                },
                "output_tokens": 5,
            },
        }
    )
    usage = AnthropicApi().usage_from_body(MESSAGES, body).usage
    assert usage is not None
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (300, 200)
    assert usage.input_tokens == 310
