"""The Gemini adapter, fed with recorded bodies and SSE bytes: usage mapping (prompt + tool-use
prompt in, candidates + thoughts out), the last cumulative stream usage, a cut stream as
partial usage, embeddings with and without `usageMetadata`, where the client's key is read,
the upstream URL without it, and Gemini's error shape."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ProviderConfig
from gateway.providers.base import Call
from gateway.providers.gemini import GeminiApi, status_name
from gateway.providers.gemini_usage import GeminiStreamMeter
from gateway.providers.registry import match
from gateway.sse import SSEParser
from pricing.models import Usage

API = GeminiApi()
PROVIDER = ProviderConfig(
    kind="gemini",
    base_url="https://generativelanguage.googleapis.com/",
    api_key_env="GEMINI_API_KEY",
)
USAGE = {
    "promptTokenCount": 120,
    "candidatesTokenCount": 30,
    "toolUsePromptTokenCount": 7,
    "cachedContentTokenCount": 100,
    "thoughtsTokenCount": 45,
    "totalTokenCount": 202,
}


def route(target: str) -> tuple[object, Call]:
    found = match(target)
    assert found is not None
    return found[0][1], found[1]


def sse(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


def chunk(text: str, candidates: int, finish: bool = False) -> dict[str, object]:
    candidate: dict[str, object] = {
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = "STOP"
    usage = {
        "promptTokenCount": 12,
        "candidatesTokenCount": candidates,
        "thoughtsTokenCount": 4,
        "totalTokenCount": 16 + candidates,
    }
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1",
    }


STREAM = sse(chunk("Rhine", 1)) + sse(chunk(" Danube", 2)) + sse(chunk(" Elbe", 3, finish=True))
FINAL = Usage(input_tokens=12, output_tokens=7, reasoning_tokens=4)


def meter_over(pieces: list[bytes]) -> GeminiStreamMeter:
    meter, parser = GeminiStreamMeter(), SSEParser()
    for piece in pieces:
        for event in parser.feed(piece):
            meter.observe(event)
    for event in parser.flush():
        meter.observe(event)
    return meter


def test_generate_content_usage_follows_the_one_convention() -> None:
    endpoint, _ = route("/v1beta/models/gemini-2.5-pro:generateContent")
    body = orjson.dumps({"candidates": [], "usageMetadata": USAGE, "responseId": "abc"})
    found = API.usage_from_body(endpoint, body)  # type: ignore[arg-type]
    assert found.usage == Usage(
        input_tokens=127, output_tokens=75, cached_input_tokens=100, reasoning_tokens=45
    )
    assert found.upstream_id == "abc"


def test_answer_without_usage_gives_its_text_for_an_estimate() -> None:
    endpoint, _ = route("/v1/models/gemini-2.0-flash:generateContent")
    body = orjson.dumps(chunk("only text", 1) | {"usageMetadata": None})
    found = API.usage_from_body(endpoint, body)  # type: ignore[arg-type]
    assert found.usage is None and found.produced_text == "only text"


def test_embeddings_read_prompt_tokens_or_nothing() -> None:
    endpoint, _ = route("/v1/models/gemini-embedding-001:batchEmbedContents")
    with_usage = orjson.dumps(
        {"embeddings": [{"values": [0.1]}], "usageMetadata": {"promptTokenCount": 9}}
    )
    assert API.usage_from_body(endpoint, with_usage).usage == Usage(input_tokens=9)  # type: ignore[arg-type]
    bare = orjson.dumps({"embeddings": [{"values": [0.1]}]})
    assert API.usage_from_body(endpoint, bare).usage is None  # type: ignore[arg-type]
    request = {
        "requests": [
            {"content": {"parts": [{"text": "a b"}]}},
            {"content": {"parts": [{"text": "c"}]}},
        ]
    }
    assert API.prompt_text(endpoint, request) == "a b\nc"  # type: ignore[arg-type]


def test_stream_takes_the_last_cumulative_usage_and_finishes_on_it() -> None:
    meter = meter_over([STREAM])
    assert meter.finished
    result = meter.result()
    assert result.usage == FINAL and result.upstream_id == "resp-1"


def test_cut_stream_reports_partial_usage_and_its_text() -> None:
    cut = STREAM[: STREAM.rindex(b"data: ")]
    result = meter_over([cut]).result()
    assert result.usage is None
    assert result.partial_usage == Usage(input_tokens=12, output_tokens=6, reasoning_tokens=4)
    assert result.produced_text == "Rhine Danube"


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_split_of_the_stream_gives_the_same_usage(data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(STREAM)), max_size=6)))
    pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    assert meter_over(pieces).result().usage == FINAL


def test_every_single_split_position_gives_the_same_usage() -> None:
    for at in range(len(STREAM) + 1):
        assert meter_over([STREAM[:at], STREAM[at:]]).result().usage == FINAL, at


def test_non_sse_stream_is_a_json_array_read_whole() -> None:
    endpoint, _ = route("/v1/models/gemini-2.5-flash:streamGenerateContent")
    body = orjson.dumps([chunk("a", 1), chunk(" b", 2, finish=True)])
    found = API.usage_from_body(endpoint, body)  # type: ignore[arg-type]
    assert found.usage == Usage(input_tokens=12, output_tokens=6, reasoning_tokens=4)


def test_client_key_from_header_then_query_then_bearer() -> None:
    assert API.client_key({"x-goog-api-key": " tb_h "}, {"key": "tb_q"}) == "tb_h"
    assert API.client_key({}, {"key": "tb_q"}) == "tb_q"
    assert API.client_key({"Authorization": "Bearer tb_b"}, {}) == "tb_b"
    assert API.client_key({}, {"key": " "}) is None


def test_upstream_url_keeps_alt_and_drops_the_clients_key() -> None:
    endpoint, call = route(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=tb_secret"
    )
    url = API.upstream_url(endpoint, PROVIDER, call)  # type: ignore[arg-type]
    assert url == (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    headers = API.upstream_headers({"x-goog-api-key": "tb_secret", "x-custom": "1"}, "AIza-p")
    assert headers["x-goog-api-key"] == "AIza-p" and headers["x-custom"] == "1"


def test_errors_have_geminis_shape() -> None:
    body = orjson.loads(
        API.error_body(
            429, "insufficient_quota", "Monthly limit reached.", "insufficient_quota", None
        )
    )
    assert body == {
        "error": {"code": 429, "message": "Monthly limit reached.", "status": "RESOURCE_EXHAUSTED"}
    }
    assert status_name(401) == "UNAUTHENTICATED" and status_name(599) == "INTERNAL"


def test_generation_limit_and_prompt_text() -> None:
    endpoint, _ = route("/v1/models/gemini-2.5-flash:generateContent")
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "generationConfig": {"maxOutputTokens": 64},
    }
    assert API.prompt_text(endpoint, body) == "Be brief.\nHi"  # type: ignore[arg-type]
    assert API.max_output_tokens(body) == 64
    assert API.is_streaming(endpoint, body) is False  # type: ignore[arg-type]
