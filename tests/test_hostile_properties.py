"""Property tests (hypothesis) for the parts of the gateway that read hostile bytes.

- The relay (`gateway.relay.relay_stream`, fed by a fake upstream and a fake client) forwards
  the same bytes and meters the same usage for every chunking of a recorded stream; a client
  that hangs up after any write still gets the provider's usage metered (the drain reads on);
  an upstream cut after any chunk never raises and forwards a prefix of the stream. Each
  holds for both relays: the awaited loop (the reference) and the pushed one
  (`gateway.relay_push`, fed by fakes of a pushing upstream and a client written at once).
- Usage extraction (`usage_from_body`, the stream meters, the SSE parser in front of them)
  never raises on any bytes, for every endpoint of both adapters, and what it reports is
  sane: counts non-negative, cached within input, reasoning within output.
- The request side (streaming flag, body rewrite, prompt text, max tokens) never raises on
  any JSON object a client can send, and the rewritten body still serializes; the token
  counter counts any text, special tokens included.
The per-adapter tests (`test_provider_*.py`, `test_sse.py`) hold the narrower versions.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.providers.base import Endpoint, ProviderApi, SSEEvent, StreamResult
from gateway.providers.registry import ALL_APIS
from gateway.sse import SSEParser
from gateway.tokens import TokenCounter
from pricing.models import Usage
from tests.helpers.relay_harness import (
    ANTHROPIC,
    OPENAI,
    STREAMS,
    cases,
    cut,
    offsets,
    relay,
    stream_bytes,
)

ENDPOINTS: list[tuple[ProviderApi, Endpoint]] = [
    (api, endpoint) for api in ALL_APIS for endpoint in api.endpoints
]


def summary(result: StreamResult) -> tuple[Usage | None, str | None, str]:
    return result.usage, result.upstream_id, result.produced_text


REFERENCE = {case: relay(case, [stream_bytes(case)]) for case in range(len(STREAMS))}
both_relays = pytest.mark.parametrize("push", [False, True], ids=["reference", "pushed"])


def test_the_reference_relay_forwards_everything_but_the_usage_it_asked_for() -> None:
    for case, (path, _, _, strip) in enumerate(STREAMS):
        run = REFERENCE[case]
        stream = stream_bytes(case)
        usage_events = [
            block + b"\n\n"
            for block in stream.split(b"\n\n")
            if re.search(rb'"choices": ?\[\]', block)
        ]
        if strip and usage_events:
            [usage_event] = usage_events
            assert run.received == stream.replace(usage_event, b""), path
            assert run.result.usage is not None, path
        else:
            assert run.received == stream, path
        assert run.ended and not run.outcome.client_gone and not run.outcome.upstream_broken
        assert run.finalized == 1, path


def terminal(case: int) -> bytes | None:
    """The terminal event of this stream (its exact bytes), if it has one."""
    stream = stream_bytes(case)
    for marker in (
        b"data: [DONE]",
        b"event: message_stop",
        b"event: response.completed",
        b"event: response.incomplete",
    ):
        start = stream.find(marker)
        if start >= 0:
            return stream[start : stream.index(b"\n\n", start) + 2]
    return None


def whole_events(received: bytes) -> bytes:
    """`received` without an unterminated last event (a client cannot dispatch that)."""
    end = received.rfind(b"\n\n")
    return received[: end + 2] if end >= 0 else b""


@both_relays
@settings(max_examples=300, deadline=None)
@given(case=cases, split=offsets)
def test_relay_is_the_same_for_every_chunking(push: bool, case: int, split: list[int]) -> None:
    reference = REFERENCE[case]
    run = relay(case, cut(stream_bytes(case), split), push=push)
    assert run.received == reference.received
    assert summary(run.result) == summary(reference.result)
    assert run.ended and run.finalized == 1
    end = terminal(case)
    if end is not None:  # the usage event was recorded before the client had the end
        assert end not in run.received_at_finalize
        assert reference.received.startswith(run.received_at_finalize)


@both_relays
@settings(max_examples=200, deadline=None)
@given(case=cases, split=offsets, hang_up_after=st.integers(min_value=0, max_value=40))
def test_a_client_hanging_up_after_any_write_still_gets_the_usage_metered(
    push: bool, case: int, split: list[int], hang_up_after: int
) -> None:
    reference = REFERENCE[case]
    run = relay(case, cut(stream_bytes(case), split), hang_up_after=hang_up_after, push=push)
    assert reference.received.startswith(run.received)
    assert run.outcome.client_gone == (not run.ended)
    assert run.result.usage == reference.result.usage  # the drain read to the end
    assert run.finalized == 1


@both_relays
@settings(max_examples=200, deadline=None)
@given(case=cases, split=offsets, cut_at=st.integers(min_value=0, max_value=40))
def test_an_upstream_cut_after_any_chunk_never_raises(
    push: bool, case: int, split: list[int], cut_at: int
) -> None:
    reference = REFERENCE[case]
    chunks = cut(stream_bytes(case), split)
    run = relay(case, chunks, cut_at=cut_at, push=push)
    assert reference.received.startswith(whole_events(run.received))
    assert run.outcome.upstream_broken == (cut_at < len(chunks))
    assert run.ended and run.finalized == 1  # the client's stream is ended, not left open
    assert run.result.usage in (None, reference.result.usage)
    assert_sane(run.result.usage)
    assert_sane(run.result.partial_usage)


def assert_sane(usage: Usage | None) -> None:
    if usage is None:
        return
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )
    assert all(isinstance(n, int) and n >= 0 for n in counts), usage
    assert usage.cached_input_tokens <= usage.input_tokens, usage
    assert usage.reasoning_tokens <= usage.output_tokens, usage


USAGE_WORDS = [
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "input_tokens_details",
    "output_tokens_details",
    "cached_tokens",
    "reasoning_tokens",
    "thinking_tokens",
    "id",
    "type",
    "choices",
    "message",
    "content",
    "text",
    "delta",
    "response",
    "output",
    "tool_calls",
    "function",
    "arguments",
    "name",
    "thinking",
    "partial_json",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["message_start", "message_delta", "[DONE]", "response.completed"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(USAGE_WORDS) | st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=15,
)
payloads = st.one_of(
    json_values.map(orjson.dumps),
    json_values.map(orjson.dumps).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
    st.binary(max_size=200),
)
event_names = st.sampled_from(
    [
        None,
        "message_start",
        "message_delta",
        "content_block_delta",
        "message_stop",
        "error",
        "ping",
        "response.created",
        "response.output_text.delta",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
) | st.text(max_size=10)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, len(ENDPOINTS) - 1), body=payloads)
def test_usage_from_any_body_never_raises_and_is_sane(index: int, body: bytes) -> None:
    api, endpoint = ENDPOINTS[index]
    found = api.usage_from_body(endpoint, body)
    assert_sane(found.usage)
    assert found.upstream_id is None or isinstance(found.upstream_id, str)


@settings(max_examples=100, deadline=None)
@given(
    index=st.integers(0, len(ENDPOINTS) - 1),
    strip=st.booleans(),
    events=st.lists(st.tuples(event_names, payloads), max_size=10),
)
def test_stream_meters_never_raise_on_any_events(
    index: int, strip: bool, events: list[tuple[str | None, bytes]]
) -> None:
    api, endpoint = ENDPOINTS[index]
    meter = api.stream_meter(endpoint, strip)
    for name, data in events:
        assert isinstance(meter.observe(SSEEvent(name, data, b"")), bool)
    result = meter.result()
    assert_sane(result.usage)
    assert_sane(result.partial_usage)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=cases,
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 40), st.binary(max_size=12)), max_size=6
    ),
    split=offsets,
)
def test_corrupted_streams_through_parser_and_meter_never_raise(
    case: int, edits: list[tuple[int, int, bytes]], split: list[int]
) -> None:
    """A recorded stream with bytes deleted and garbage spliced in, in any chunking."""
    data = bytearray(stream_bytes(case))
    for at, drop, insert in edits:
        at %= len(data) + 1
        data[at : at + drop] = insert
    _, api, endpoint, strip = STREAMS[case]
    meter = api.stream_meter(endpoint, strip)
    parser = SSEParser()
    for chunk in cut(bytes(data), split):
        for event in parser.feed(chunk):
            meter.observe(event)
    for event in parser.flush():
        meter.observe(event)
    assert_sane(meter.result().usage)


@settings(max_examples=80, deadline=None)
@given(
    index=st.integers(0, len(ENDPOINTS) - 1),
    body=st.dictionaries(
        st.sampled_from(
            [
                "model",
                "stream",
                "stream_options",
                "messages",
                "prompt",
                "input",
                "system",
                "instructions",
                "tools",
                "functions",
                "max_tokens",
                "max_completion_tokens",
                "max_output_tokens",
                "include_usage",
            ]
        )
        | st.text(max_size=4),
        json_values,
        max_size=8,
    ),
)
def test_request_side_never_raises_on_any_json_object(index: int, body: dict[str, Any]) -> None:
    api, endpoint = ENDPOINTS[index]
    assert isinstance(api.is_streaming(endpoint, body), bool)
    assert isinstance(api.prompt_text(endpoint, body), str)
    limit = api.max_output_tokens(body)
    assert limit is None or (isinstance(limit, int) and limit >= 0)
    rewritten = copy.deepcopy(body)
    asked = api.prepare_body(endpoint, rewritten)
    if asked:  # the proxy re-serializes exactly this body
        assert orjson.loads(orjson.dumps(rewritten))["stream_options"]["include_usage"] is True


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    tokens = TokenCounter()
    tokens.warm()
    return tokens


SPECIAL = st.sampled_from(["<|endoftext|>", "<|fim_prefix|>", "<|endofprompt|>", "<|im_start|>"])


def test_token_counter_counts_any_text(counter: TokenCounter) -> None:
    @settings(max_examples=300, deadline=None)
    @given(
        model=st.sampled_from(["gpt-4o", "gpt-4", "claude-sonnet-4-5", "", "ft:x"]),
        text=st.lists(st.text(max_size=30) | SPECIAL, max_size=6).map("".join),
    )
    def check(model: str, text: str) -> None:
        tokens = counter.count(model, text)
        assert tokens >= 0 and (tokens > 0) == bool(text)

    check()


@settings(max_examples=200, deadline=None)
@given(
    status=st.integers(100, 999),
    message=st.text(max_size=50),
    code=st.none() | st.text(max_size=10),
    param=st.none() | st.text(max_size=10),
)
def test_error_bodies_are_json_in_the_api_shape(
    status: int, message: str, code: str | None, param: str | None
) -> None:
    openai_error = orjson.loads(OPENAI.error_body(status, "api_error", message, code, param))
    assert openai_error["error"]["message"] == message
    anthropic_error = orjson.loads(ANTHROPIC.error_body(status, "api_error", message, code, param))
    assert anthropic_error["type"] == "error" and anthropic_error["error"]["message"] == message
