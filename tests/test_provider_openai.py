"""OpenAIApi against recorded-shape bodies and SSE streams (tests/data/openai)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.providers import openai_stream
from gateway.providers.base import Endpoint, SSEEvent, StreamResult
from gateway.providers.openai import CHAT, COMPLETIONS, EMBEDDINGS, MODELS, RESPONSES, OpenAIApi
from gateway.providers.registry import ALL_APIS, api_for_kind, route
from gateway.sse import SSEParser
from gateway.tokens import TokenCounter
from pricing.models import Usage

DATA = Path(__file__).parent / "data" / "openai"
api = OpenAIApi()


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def relay(endpoint: Endpoint, stream: bytes, *, strip: bool) -> tuple[bytes, StreamResult]:
    """Feed `stream` in awkward 7-byte chunks; return what the client would see."""
    meter = api.stream_meter(endpoint, strip)
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(0, len(stream), 7):
        events.extend(parser.feed(stream[i : i + 7]))
    events.extend(parser.flush())
    forwarded = b"".join(event.raw for event in events if meter.observe(event))
    return forwarded, meter.result()


def usage_event(stream: bytes) -> bytes:
    """The raw bytes of the one event carrying a non-null usage."""
    [raw] = [
        block + b"\n\n"
        for block in stream.split(b"\n\n")
        if b'"usage"' in block and b'"usage":null' not in block.replace(b" ", b"")
    ]
    return raw


def test_endpoints_map_gateway_routes_to_upstream_paths() -> None:
    routes = {e.name: (e.method, e.path, e.upstream_path, e.streams) for e in api.endpoints}
    assert routes == {
        "chat.completions": ("POST", "/v1/chat/completions", "/chat/completions", True),
        "completions": ("POST", "/v1/completions", "/completions", True),
        "embeddings": ("POST", "/v1/embeddings", "/embeddings", False),
        "responses": ("POST", "/v1/responses", "/responses", True),
        "models": ("GET", "/v1/models", "/models", False),
    }
    assert (MODELS.metered, MODELS.needs_model) == (False, False)
    assert all(e.metered and e.needs_model for e in api.endpoints if e is not MODELS)


def test_registry_finds_adapters_by_kind_and_by_route() -> None:
    assert isinstance(api_for_kind("openai"), OpenAIApi)
    assert api_for_kind("anthropic").kind == "anthropic"
    assert [a.kind for a in ALL_APIS][:2] == ["openai", "anthropic"]
    with pytest.raises(KeyError, match="openai, anthropic"):
        api_for_kind("no-such-kind")
    found = route("POST", "/v1/chat/completions")
    assert found is not None and found[1] is CHAT
    anthropic = route("POST", "/v1/messages/count_tokens")
    assert anthropic is not None and anthropic[0].kind == "anthropic"
    assert route("GET", "/v1/chat/completions") is None


def test_upstream_headers_swap_the_key_and_drop_hop_by_hop() -> None:
    client = {
        "Host": "127.0.0.1:8080",
        "Authorization": "Bearer tb_client_secret",
        "x-api-key": "tb_client_secret",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "1",
        "Keep-Alive": "timeout=5",
        "Transfer-Encoding": "chunked",
        "Content-Length": "123",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic eA==",
        "Cookie": "session=1",
        "Accept-Encoding": "gzip, br",
        "X-Tollbooth-Debug": "1",
        "Content-Type": "application/json",
        "OpenAI-Organization": "org-123",
        "OpenAI-Project": "proj_456",
        "User-Agent": "OpenAI/Python 1.99.0",
        "x-stainless-lang": "python",
        "x-mock-scenario": "slow",
    }
    assert api.upstream_headers(client, "sk-provider") == {
        "Content-Type": "application/json",
        "OpenAI-Organization": "org-123",
        "OpenAI-Project": "proj_456",
        "User-Agent": "OpenAI/Python 1.99.0",
        "x-stainless-lang": "python",
        "x-mock-scenario": "slow",
        "accept-encoding": "identity",
        "Authorization": "Bearer sk-provider",
    }
    keyless = api.upstream_headers(client, None)
    assert "Authorization" not in keyless
    assert "tb_client_secret" not in repr(keyless)


def test_is_streaming_only_for_stream_true_on_streaming_endpoints() -> None:
    assert api.is_streaming(CHAT, {"stream": True})
    assert not api.is_streaming(CHAT, {"stream": "true"})
    assert not api.is_streaming(CHAT, {})
    assert not api.is_streaming(EMBEDDINGS, {"stream": True})


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS])
def test_prepare_body_asks_for_usage_the_client_did_not(endpoint: Endpoint) -> None:
    body: dict[str, Any] = {"stream": True, "stream_options": {"include_obfuscation": False}}
    assert api.prepare_body(endpoint, body) is True
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}

    bare: dict[str, Any] = {"stream": True, "stream_options": None}
    assert api.prepare_body(endpoint, bare) is True
    assert bare["stream_options"] == {"include_usage": True}


def test_prepare_body_leaves_requests_that_need_nothing() -> None:
    asked: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
    assert api.prepare_body(CHAT, asked) is False
    assert asked == {"stream": True, "stream_options": {"include_usage": True}}
    plain: dict[str, Any] = {"stream": False}
    assert api.prepare_body(CHAT, plain) is False
    assert plain == {"stream": False}
    responses: dict[str, Any] = {"stream": True}
    assert api.prepare_body(RESPONSES, responses) is False
    assert responses == {"stream": True}


@pytest.mark.parametrize(
    ("endpoint", "name", "usage", "upstream_id"),
    [
        (
            CHAT,
            "chat_completion.json",
            Usage(
                input_tokens=1843, output_tokens=412, cached_input_tokens=1536, reasoning_tokens=320
            ),
            "chatcmpl-BzQxV1c9mE2bRk8TnY5uWfLp3aJ0s",
        ),
        (
            COMPLETIONS,
            "completion.json",
            Usage(input_tokens=5, output_tokens=7),
            "cmpl-BzS0pA3kX7cVn2mQ9rT4yWuE1oLh6",
        ),
        (EMBEDDINGS, "embeddings.json", Usage(input_tokens=14), None),
        (
            RESPONSES,
            "response.json",
            Usage(
                input_tokens=5120,
                output_tokens=1035,
                cached_input_tokens=4864,
                reasoning_tokens=896,
            ),
            "resp_6890a1f2c3d48191b2a3c4d5e6f708090a1b2c3d4e5f6a7b",
        ),
    ],
)
def test_usage_from_recorded_bodies(
    endpoint: Endpoint, name: str, usage: Usage, upstream_id: str | None
) -> None:
    found = api.usage_from_body(endpoint, fixture(name))
    assert found.usage == usage
    assert found.upstream_id == upstream_id


def test_null_usage_fields_read_as_zero() -> None:
    body = orjson.dumps(
        {
            "id": "chatcmpl-1",
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": None,
                "prompt_tokens_details": None,
                "completion_tokens_details": {"reasoning_tokens": None},
            },
        }
    )
    assert api.usage_from_body(CHAT, body).usage == Usage(input_tokens=10)


def test_body_without_usage_or_unreadable_gives_no_usage() -> None:
    no_usage = api.usage_from_body(CHAT, b'{"id":"chatcmpl-x","choices":[]}')
    assert (no_usage.usage, no_usage.upstream_id) == (None, "chatcmpl-x")
    garbage = api.usage_from_body(CHAT, b"\x00not json")
    assert (garbage.usage, garbage.upstream_id) == (None, None)
    assert api.usage_from_body(MODELS, fixture("chat_completion.json")).usage is None


@pytest.mark.parametrize(
    ("name", "usage"),
    [
        (
            "chat_stream_include_usage.sse",
            Usage(input_tokens=2006, output_tokens=9, cached_input_tokens=1920),
        ),
        (
            "chat_stream_compatible_spaced.sse",
            Usage(input_tokens=312, output_tokens=58, cached_input_tokens=256, reasoning_tokens=41),
        ),
    ],
)
def test_injected_usage_chunk_is_metered_and_stripped(name: str, usage: Usage) -> None:
    stream = fixture(name)
    forwarded, result = relay(CHAT, stream, strip=True)
    assert result.usage == usage
    assert forwarded == stream.replace(usage_event(stream), b"")
    assert forwarded.endswith(b"data: [DONE]\n\n")


def test_usage_chunk_the_client_asked_for_passes_through() -> None:
    stream = fixture("chat_stream_include_usage.sse")
    forwarded, result = relay(CHAT, stream, strip=False)
    assert forwarded == stream
    assert result.usage == Usage(input_tokens=2006, output_tokens=9, cached_input_tokens=1920)
    assert result.upstream_id == "chatcmpl-BzR4kq8TfYw2x1JmLQe7VvN0aHs5D"


def test_stream_without_usage_reports_produced_text_for_an_estimate() -> None:
    stream = fixture("chat_stream_no_usage.sse")
    forwarded, result = relay(CHAT, stream, strip=True)
    assert forwarded == stream
    assert result.usage is None
    assert result.upstream_id == "chatcmpl-BzR4kq8TfYw2x1JmLQe7VvN0aHs5D"
    assert result.produced_text == "Canberra is the capital of Australia."


def test_cut_stream_text_includes_reasoning_and_tool_arguments() -> None:
    stream = fixture("chat_stream_compatible_spaced.sse")
    cut = stream[: stream.index(usage_event(stream))]
    _, result = relay(CHAT, cut, strip=True)
    assert result.usage is None
    assert result.produced_text == (
        'The user wants the weather; call the tool.get_weather{"city": "Paris"}'
    )


def test_usage_on_content_chunks_is_never_stripped_and_the_last_wins() -> None:
    def chunk(text: str, completion_tokens: int) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": "chatcmpl-v",
                    "choices": [{"index": 0, "delta": {"content": text}}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": completion_tokens},
                }
            )
            + b"\n\n"
        )

    stream = chunk("a", 1) + chunk("b", 2) + b"data: [DONE]\n\n"
    forwarded, result = relay(CHAT, stream, strip=True)
    assert forwarded == stream
    assert result.usage == Usage(input_tokens=7, output_tokens=2)


def test_completions_stream() -> None:
    stream = fixture("completion_stream_include_usage.sse")
    forwarded, result = relay(COMPLETIONS, stream, strip=True)
    assert forwarded == stream.replace(usage_event(stream), b"")
    assert result.usage == Usage(input_tokens=5, output_tokens=6)
    assert result.upstream_id == "cmpl-BzS1qB4lY8dWo3nR0sU5zXvF2pMi7"
    _, cut = relay(COMPLETIONS, stream[: stream.index(usage_event(stream))], strip=True)
    assert cut.produced_text == "\n\nThis is a test."


@pytest.mark.parametrize(
    ("name", "usage"),
    [
        (
            "response_stream.sse",
            Usage(
                input_tokens=5120,
                output_tokens=1035,
                cached_input_tokens=4864,
                reasoning_tokens=896,
            ),
        ),
        (
            "response_stream_incomplete.sse",
            Usage(input_tokens=42, output_tokens=16, reasoning_tokens=12),
        ),
    ],
)
def test_responses_stream_usage_from_the_final_event(name: str, usage: Usage) -> None:
    stream = fixture(name)
    forwarded, result = relay(RESPONSES, stream, strip=True)
    assert forwarded == stream
    assert result.usage == usage
    assert result.upstream_id == "resp_6890a1f2c3d48191b2a3c4d5e6f708090a1b2c3d4e5f6a7b"


def test_responses_stream_without_event_lines() -> None:
    stream = b"".join(
        line + b"\n"
        for line in fixture("response_stream.sse").split(b"\n")[:-1]
        if not line.startswith(b"event:")
    )
    _, result = relay(RESPONSES, stream, strip=False)
    assert result.usage is not None and result.usage.input_tokens == 5120


def test_cut_responses_stream_keeps_id_and_text() -> None:
    stream = fixture("response_stream.sse")
    cut = stream[: stream.index(b"event: response.output_text.done")]
    _, result = relay(RESPONSES, cut, strip=False)
    assert result.usage is None
    assert result.upstream_id == "resp_6890a1f2c3d48191b2a3c4d5e6f708090a1b2c3d4e5f6a7b"
    assert result.produced_text == "Canberra is the capital of Australia."


def test_error_body_has_the_openai_shape() -> None:
    body = api.error_body(
        429, "insufficient_quota", "Monthly limit reached.", "insufficient_quota", None
    )
    assert orjson.loads(body) == {
        "error": {
            "message": "Monthly limit reached.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }


def test_prompt_text_per_endpoint() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "cat"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "A cat."},
        ],
    }
    assert api.prompt_text(CHAT, chat) == (
        'Be brief.\nWhat is in this image?\nlookup\n{"q": "cat"}\nA cat.'
    )
    assert api.prompt_text(COMPLETIONS, {"prompt": ["Say", "this"]}) == "Say\nthis"
    assert api.prompt_text(EMBEDDINGS, {"input": "hello"}) == "hello"
    responses = {
        "instructions": "Answer briefly.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Capital?"}]},
            {"type": "function_call_output", "call_id": "c", "output": "Canberra"},
        ],
    }
    assert api.prompt_text(RESPONSES, responses) == "Answer briefly.\nCapital?\nCanberra"
    assert api.prompt_text(RESPONSES, {"input": "Hi"}) == "Hi"
    assert api.prompt_text(CHAT, {"messages": "not a list"}) == ""


def test_token_array_inputs_count_by_length() -> None:
    counter = TokenCounter()
    single = api.prompt_text(EMBEDDINGS, {"input": [1212, 318, 257, 1332]})
    assert counter.count("text-embedding-3-small", single) == 4
    batch = api.prompt_text(COMPLETIONS, {"prompt": [[1, 2, 3], [4, 5]]})
    assert counter.count("gpt-4o", batch) == 3 + 1 + 2  # one newline joins the two


def test_max_output_tokens() -> None:
    assert api.max_output_tokens({"max_completion_tokens": 100, "max_tokens": 5}) == 100
    assert api.max_output_tokens({"max_tokens": 5}) == 5
    assert api.max_output_tokens({"max_output_tokens": 64}) == 64
    assert api.max_output_tokens({"max_tokens": True}) is None
    assert api.max_output_tokens({}) is None


_KEYS = st.sampled_from(
    [
        "id",
        "usage",
        "choices",
        "delta",
        "content",
        "text",
        "tool_calls",
        "function",
        "arguments",
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "input_tokens",
        "output_tokens",
        "output_tokens_details",
        "reasoning_tokens",
        "response",
        "type",
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
endpoints = st.sampled_from(api.endpoints)
event_names = st.one_of(
    st.none(),
    st.text(max_size=10),
    st.sampled_from(["response.created", "response.completed", "response.output_text.delta"]),
)


@settings(max_examples=300)
@given(endpoint=endpoints, body=payloads)
def test_usage_from_body_never_raises(endpoint: Endpoint, body: bytes) -> None:
    api.usage_from_body(endpoint, body)


@settings(max_examples=300)
@given(
    endpoint=endpoints,
    strip=st.booleans(),
    events=st.lists(st.tuples(event_names, payloads), max_size=8),
)
def test_stream_meter_never_raises(
    endpoint: Endpoint, strip: bool, events: list[tuple[str | None, bytes]]
) -> None:
    meter = api.stream_meter(endpoint, strip)
    for name, data in events:
        meter.observe(SSEEvent(name, data, b"data: " + data + b"\n\n"))
    meter.result()


@settings(max_examples=200)
@given(endpoint=endpoints, body=json_values)
def test_prompt_text_never_raises(endpoint: Endpoint, body: Any) -> None:
    api.prompt_text(endpoint, body if isinstance(body, dict) else {"messages": body})


def test_body_without_usage_yields_the_produced_text_for_an_estimate() -> None:
    api = OpenAIApi()
    chat = orjson.dumps(
        {
            "id": "c1",
            "choices": [
                {
                    "message": {
                        "content": "hello world",
                        "tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}],
                    }
                }
            ],
        }
    )
    found = api.usage_from_body(CHAT, chat)
    assert found.usage is None
    assert found.produced_text.split("\n") == ["hello world", "f", '{"a":1}']
    responses = orjson.dumps(
        {
            "id": "r1",
            "output": [
                {"type": "message", "content": [{"type": "output_text", "text": "hi there"}]}
            ],
        }
    )
    assert api.usage_from_body(RESPONSES, responses).produced_text == "hi there"
    with_usage = orjson.dumps(
        {
            "id": "c2",
            "choices": [{"message": {"content": "x"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
    )
    assert api.usage_from_body(CHAT, with_usage).produced_text == ""


_TEXTS = st.one_of(st.text(max_size=5), st.none(), st.integers(0, 3))
_DELTAS = st.dictionaries(
    st.sampled_from(["content", "role", "refusal", "reasoning_content", "reasoning"]), _TEXTS
) | st.fixed_dictionaries(
    {"tool_calls": st.just([{"index": 0, "function": {"name": "f", "arguments": "{}"}}])}
)
_CHOICES = st.fixed_dictionaries(
    {"index": st.just(0), "delta": _DELTAS | st.none()},
    optional={"text": _TEXTS, "finish_reason": st.none()},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_CHOICES, max_size=2) | st.none())
def test_the_content_only_chunk_shortcut_reads_what_the_full_walk_reads(
    choices: list[dict[str, Any]] | None,
) -> None:
    chunk = {"id": "c", "choices": choices}
    assert list(openai_stream._chat_texts(chunk)) == list(openai_stream._every_chat_text(chunk))
