"""The Gemini API family (`kind: gemini`): generativelanguage.googleapis.com.

Routes, under `/v1beta/models/` and `/v1/models/` alike (google-genai calls `v1` by default,
`v1beta` when asked): `{model}:generateContent`, `{model}:streamGenerateContent` (with
`?alt=sse`: SSE; without it Gemini answers one JSON array, read whole), `{model}:countTokens`
(forwarded, never billed nor recorded), `{model}:embedContent` and
`{model}:batchEmbedContents` (what google-genai's `embed_content` calls). The model is named in
the path; the upstream path is the same under the provider's `base_url`.

The client's key comes in `x-goog-api-key` (google-genai), or `?key=` (REST habit), or as a
bearer token; the provider's key goes upstream in `x-goog-api-key`, and the client's `key`
query parameter is never passed on (the rest of the query, `alt=sse`, is).

Usage is read by `gemini_usage` (mapping in its docstring); an embedding answer without
`usageMetadata` yields no usage, and the caller estimates it (flagged `estimated`). Errors
have Gemini's shape, `{"error": {"code", "message", "status"}}`, with the canonical status
names Google's SDKs read; a 429 is `RESOURCE_EXHAUSTED` (google-genai retries a 429 only when
its retry options are set, and then whatever the headers say). Never raises on bad bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson

from gateway.providers.base import Call, Endpoint, ResponseUsage, StreamMeter
from gateway.providers.common import dump_json, forward_headers, items, load_object, obj, text_id
from gateway.providers.defaults import DefaultHooks, bearer_or_api_key, fill_path, header_key
from gateway.providers.gemini_usage import GeminiStreamMeter, candidate_texts, gemini_usage

if TYPE_CHECKING:
    from gateway.config import ProviderConfig

GENERATE = "generateContent"
STREAM = "streamGenerateContent"
COUNT_TOKENS = "countTokens"
EMBED = "embedContent"
BATCH_EMBED = "batchEmbedContents"
_EMBEDDINGS = frozenset({EMBED, BATCH_EMBED})
KEY_PARAM = "key"


def _routes(version: str) -> tuple[Endpoint, ...]:
    def route(method: str, *, streams: bool = False, metered: bool = True) -> Endpoint:
        path = f"/{version}/models/{{model}}:{method}"
        return Endpoint(
            method,
            "POST",
            path,
            path,
            metered=metered,
            streams=streams,
            needs_model=False,
            model_param="model",
        )

    return (
        route(GENERATE),
        route(STREAM, streams=True),
        route(COUNT_TOKENS, metered=False),
        route(EMBED),
        route(BATCH_EMBED),
    )


ENDPOINTS = (*_routes("v1beta"), *_routes("v1"))

# HTTP status -> the canonical status name Google APIs put in `error.status`.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def status_name(status: int) -> str:
    return _STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


class GeminiApi(DefaultHooks):
    """Adapter for the Gemini API. Stateless: one instance serves every request."""

    kind: str = "gemini"
    endpoints: tuple[Endpoint, ...] = ENDPOINTS

    def client_key(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        key = header_key(headers, "x-goog-api-key")
        if key is None:
            value = query.get(KEY_PARAM, "").strip()
            key = value or None
        return key or bearer_or_api_key(headers)

    def upstream_url(self, endpoint: Endpoint, provider: ProviderConfig, call: Call) -> str:
        url = provider.base_url.rstrip("/") + fill_path(endpoint.upstream_path, call.params)
        query = {name: value for name, value in call.query.items() if name != KEY_PARAM}
        return f"{url}?{urlencode(query)}" if query else url

    def upstream_headers(
        self, client_headers: Mapping[str, str], api_key: str | None
    ) -> dict[str, str]:
        return forward_headers(client_headers, ("x-goog-api-key", api_key) if api_key else None)

    def is_streaming(self, endpoint: Endpoint, body: Mapping[str, Any]) -> bool:
        return endpoint.streams

    def prepare_body(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        return False  # Gemini reports usage in every answer: nothing to ask for

    def usage_from_body(self, endpoint: Endpoint, body: bytes) -> ResponseUsage:
        if not endpoint.metered:
            return ResponseUsage(None, None)
        if endpoint.name == STREAM:  # no alt=sse: a JSON array of the chunks
            return self._array_usage(body)
        parsed = load_object(body)
        if parsed is None:
            return ResponseUsage(None, None)
        embedding = endpoint.name in _EMBEDDINGS
        usage = gemini_usage(parsed.get("usageMetadata"), embedding=embedding)
        produced = "" if usage is not None or embedding else "".join(candidate_texts(parsed))
        return ResponseUsage(usage, text_id(parsed.get("responseId")), produced)

    def _array_usage(self, body: bytes) -> ResponseUsage:
        try:
            chunks = orjson.loads(body)
        except ValueError:
            return ResponseUsage(None, None)
        chunks = [obj(chunk) for chunk in items(chunks)]
        usage = None
        for chunk in chunks:  # cumulative: the last one wins
            usage = gemini_usage(chunk.get("usageMetadata")) or usage
        upstream_id = next((text_id(c.get("responseId")) for c in chunks if c), None)
        produced = "" if usage else "".join(t for c in chunks for t in candidate_texts(c))
        return ResponseUsage(usage, upstream_id, produced)

    def stream_meter(self, endpoint: Endpoint, strip_usage: bool) -> StreamMeter:
        return GeminiStreamMeter()

    def prompt_text(self, endpoint: Endpoint, body: Mapping[str, Any]) -> str:
        return "\n".join(part for part in _prompt_parts(endpoint, body) if part)

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        value = obj(body.get("generationConfig")).get("maxOutputTokens")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        return None

    def error_body(
        self, status: int, error_type: str, message: str, code: str | None, param: str | None
    ) -> bytes:
        return orjson.dumps(
            {"error": {"code": status, "message": message, "status": status_name(status)}}
        )


def _prompt_parts(endpoint: Endpoint, body: Mapping[str, Any]) -> Iterator[str]:
    if endpoint.name == EMBED:
        yield from _content_texts(body.get("content"))
    elif endpoint.name == BATCH_EMBED:
        for request in items(body.get("requests")):
            yield from _content_texts(obj(request).get("content"))
    else:
        yield from _content_texts(body.get("systemInstruction"))
        for content in items(body.get("contents")):
            yield from _content_texts(content)
        tools = body.get("tools")
        if tools:  # tool declarations are part of the prompt the model reads
            yield dump_json(tools)


def _content_texts(content: Any) -> Iterator[str]:
    """Text of a `Content` (`{"role", "parts": [{"text"}...]}`), or of a bare string."""
    if isinstance(content, str):
        yield content
        return
    for part in items(obj(content).get("parts")):
        part = obj(part)
        text = part.get("text")
        if isinstance(text, str):
            yield text
        for field in ("functionCall", "functionResponse"):
            if field in part:
                yield dump_json(part[field])
