"""The mock's Gemini API endpoints (generativelanguage.googleapis.com), under `/v1beta` and
`/v1`: `models/{model}:generateContent`, `:streamGenerateContent` (`?alt=sse`: SSE events
`data: {...}` each ended by `\\r\\n\\r\\n`, as Google sends them; without it one JSON array),
`:countTokens`, `:embedContent` and `:batchEmbedContents`.

Tokens follow `tokens.py`: a request's `contents` are a conversation (each content's `parts`
one message, `systemInstruction` one more); embeddings count `words(text)` per part.
`promptTokenCount` includes a cached prefix (`x-mock-cached-tokens: N` adds N to it and
reports `cachedContentTokenCount: N`). Models named `gemini-2.5*` think:
`thoughtsTokenCount` = half the answer's tokens, reported apart from `candidatesTokenCount`
as Gemini does. Every stream chunk carries the cumulative `usageMetadata`; the last one has
`finishReason`. `x-mock-no-usage: 1` leaves `usageMetadata` out everywhere.

The key is read from `x-goog-api-key` or `?key=`; none is Google's 403 `PERMISSION_DENIED`, a
wrong one its 400 `API_KEY_INVALID`. Errors are `{"error": {"code", "message", "status"}}`;
`x-mock-error: 429` is `RESOURCE_EXHAUSTED`, as is `insufficient-quota`.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web

from gateway.mock_provider.controls import Controls
from gateway.mock_provider.endpoint import Call, InvalidRequest, endpoint
from gateway.mock_provider.ids import base62
from gateway.mock_provider.replies import EventStream, send_json, send_stream
from gateway.mock_provider.tokens import content_words, conversation_tokens

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_STOCK = {
    400: "Request contains an invalid argument.",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
_UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established "
    "identity). Please use API Key or other form of API consumer identity to call "
    "this API."
)
_METHODS = (
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
    "batchEmbedContents",
)
EMBEDDING_DIMENSIONS = 768


def error_body(
    status: int, message: str | None = None, details: list[dict[str, Any]] | None = None
) -> bytes:
    name = _STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    stock = _STOCK.get(status, _STOCK[500] if status >= 500 else _STOCK[400])
    error: dict[str, Any] = {"code": status, "message": message or stock, "status": name}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


def sse_chunk(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


class GeminiDialect:
    broken_event = b'data: {"candidates": [\r\n\r\n'
    stream_error_event = b"data: " + error_body(500) + b"\r\n\r\n"

    def new_request_id(self) -> str:
        return base62(22)

    def response_headers(self, request_id: str) -> dict[str, str]:
        return {
            "x-goog-request-id": request_id,
            "server-timing": "gfet4t7; dur=1",
            "vary": "Origin, X-Origin, Referer",
        }

    def error(
        self, status: int, request_id: str, message: str | None = None, param: str | None = None
    ) -> web.Response:
        return self._reply(status, error_body(status, message), request_id)

    def refuse(
        self, request: web.Request, api_key: str | None, request_id: str
    ) -> web.Response | None:
        key = (request.headers.get("x-goog-api-key") or request.query.get("key") or "").strip()
        if not key:
            return self.error(403, request_id, _UNREGISTERED)
        if api_key is not None and not hmac.compare_digest(key.encode(), api_key.encode()):
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ]
            body = error_body(400, "API key not valid. Please pass a valid API key.", details)
            return self._reply(400, body, request_id)
        return None

    def injected_error(self, controls: Controls, request_id: str) -> web.Response:
        status = 429 if controls.mode == "insufficient-quota" else controls.error_status or 500
        response = self.error(status, request_id)
        if status == 429:
            response.headers["retry-after"] = str(controls.retry_after_s)
        return response

    def _reply(self, status: int, body: bytes, request_id: str) -> web.Response:
        return web.Response(
            status=status,
            body=body,
            content_type="application/json",
            headers=self.response_headers(request_id),
        )


def add_gemini_routes(app: web.Application) -> None:
    handle = endpoint(GeminiDialect(), _dispatch)
    for version in ("v1beta", "v1"):
        app.router.add_post(f"/{version}/models/{{target}}", handle)


async def _dispatch(call: Call) -> web.StreamResponse:
    model, _, method = call.request.match_info["target"].rpartition(":")
    if not model or method not in _METHODS:
        return call.dialect.error(404, call.request_id)
    if method == "countTokens":
        return await send_json(call, {"totalTokens": _prompt_tokens(call.body)})
    if method in ("embedContent", "batchEmbedContents"):
        return await _embed(call, model, batch=method == "batchEmbedContents")
    return await _generate(call, model, stream=method == "streamGenerateContent")


def _prompt_tokens(body: dict[str, Any]) -> int:
    contents = body.get("contents")
    messages = (
        [c.get("parts") for c in contents if isinstance(c, dict)]
        if isinstance(contents, list)
        else []
    )
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        messages.append(system.get("parts"))
    return conversation_tokens(messages)


def _usage(prompt: int, cached: int, candidates: int, thoughts: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


async def _generate(call: Call, model: str, *, stream: bool) -> web.StreamResponse:
    contents = call.body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("* GenerateContentRequest.contents: contents is not specified")
    config = call.body.get("generationConfig")
    limit = config.get("maxOutputTokens") if isinstance(config, dict) else None
    plan = call.plan(model, limit if isinstance(limit, int) else None, reasons=False)
    thoughts = plan.output_tokens // 2 if model.startswith("gemini-2.5") else 0
    cached = call.controls.cached_tokens
    prompt = _prompt_tokens(call.body) + cached
    finish = "MAX_TOKENS" if plan.hit_max_tokens else "STOP"
    response_id = base62(20)
    no_usage = call.controls.no_usage

    def chunk(text: str, produced: int, last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
        if last:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        body: dict[str, Any] = {"candidates": [candidate]}
        if not no_usage:
            body["usageMetadata"] = _usage(prompt, cached, produced, thoughts)
        body.update(modelVersion=model, responseId=response_id)
        return body

    words = plan.words
    if not stream:
        return await send_json(call, chunk("".join(words), len(words), True))
    if call.request.query.get("alt") != "sse":  # Gemini's non-SSE stream: one JSON array
        pieces = [chunk(word, i + 1, i == len(words) - 1) for i, word in enumerate(words)]
        return await send_json(call, pieces)
    events = [sse_chunk(chunk(word, i + 1, False)) for i, word in enumerate(words[:-1])]
    terminal_at = len(events)
    events.append(sse_chunk(chunk(words[-1] if words else "", len(words), True)))
    return await send_stream(call, EventStream(events, terminal_at, "text/event-stream"))


async def _embed(call: Call, model: str, *, batch: bool) -> web.StreamResponse:
    if batch:
        requests = call.body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise InvalidRequest("* BatchEmbedContentsRequest.requests: requests is required")
        contents = [r.get("content") for r in requests if isinstance(r, dict)]
    else:
        contents = [call.body.get("content")]
    tokens = sum(content_words(c.get("parts")) if isinstance(c, dict) else 0 for c in contents)
    vector = {"values": [((i % 16) - 7.5) / 64 for i in range(EMBEDDING_DIMENSIONS)]}
    body: dict[str, Any] = (
        {"embeddings": [vector] * len(contents)} if batch else {"embedding": vector}
    )
    if not call.controls.no_usage:
        body["usageMetadata"] = {"promptTokenCount": tokens, "totalTokenCount": tokens}
    return await send_json(call, body)
