"""The mock's Anthropic endpoints: messages (plain and streamed), count_tokens, models.

Auth is `x-api-key` (or `Authorization: Bearer`); a request without `anthropic-version`
gets the real API's 400. Errors are `{"type": "error", "error": {"type", "message"},
"request_id"}`. A stream is the real sequence, each event `event: NAME` + `data: JSON`:
message_start (usage: input and cache tokens, `output_tokens` 1), content_block_start, ping,
one content_block_delta (text_delta) per word, content_block_stop, message_delta (stop
reason and usage with the input and cache counts and the CUMULATIVE `output_tokens`, as the
API sends today), message_stop. `input_tokens` excludes cache reads and writes, which are
reported apart; the counts follow `tokens.py`.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from gateway.mock_provider.controls import Controls
from gateway.mock_provider.endpoint import Call, Handler, InvalidRequest, endpoint
from gateway.mock_provider.ids import base62
from gateway.mock_provider.replies import EventStream, send_json, send_stream, sse
from gateway.mock_provider.tokens import conversation_tokens, message_contents

MODELS = (
    ("claude-opus-4-6", "Claude Opus 4.6"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
)
RATE_LIMIT_HEADERS = {
    "anthropic-ratelimit-requests-limit": "4000",
    "anthropic-ratelimit-requests-remaining": "3999",
    "anthropic-ratelimit-tokens-limit": "2000000",
    "anthropic-ratelimit-tokens-remaining": "1999000",
}
_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def error_body(status: int, request_id: str, message: str | None = None) -> bytes:
    kind, stock = _ERRORS.get(status, _ERRORS[500] if status >= 500 else _ERRORS[400])
    error = {"type": kind, "message": message or stock}
    return orjson.dumps({"type": "error", "error": error, "request_id": request_id})


class AnthropicDialect:
    broken_event = b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'
    stream_error_event = sse(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )

    def new_request_id(self) -> str:
        return "req_011C" + base62(20)

    def response_headers(self, request_id: str) -> dict[str, str]:
        reset = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            **RATE_LIMIT_HEADERS,
            "anthropic-ratelimit-requests-reset": reset,
            "request-id": request_id,
        }

    def error(
        self, status: int, request_id: str, message: str | None = None, param: str | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            body=error_body(status, request_id, message),
            headers=self.response_headers(request_id),
            content_type="application/json",
        )

    def refuse(
        self, request: web.Request, api_key: str | None, request_id: str
    ) -> web.Response | None:
        key = request.headers.get("x-api-key", "").strip()
        if not key:
            scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
            key = bearer.strip() if scheme.lower() == "bearer" else ""
        if not key:
            return self.error(401, request_id, "x-api-key header is required")
        if api_key is not None and not hmac.compare_digest(key.encode(), api_key.encode()):
            return self.error(401, request_id)
        if not request.headers.get("anthropic-version"):
            return self.error(400, request_id, "anthropic-version: header is required")
        return None

    def injected_error(self, controls: Controls, request_id: str) -> web.Response:
        status = controls.error_status or 429  # `insufficient-quota` is OpenAI's; a 429 here
        response = self.error(status, request_id)
        if status in (429, 529):
            response.headers["retry-after"] = str(controls.retry_after_s)
        if status == 429:
            response.headers["anthropic-ratelimit-requests-remaining"] = "0"
        return response


def add_anthropic_routes(app: web.Application) -> Handler:
    """Add the POST routes; return the GET /v1/models handler (shared with OpenAI)."""
    dialect = AnthropicDialect()
    app.router.add_post("/v1/messages", endpoint(dialect, create_message))
    app.router.add_post("/v1/messages/count_tokens", endpoint(dialect, count_tokens))
    return endpoint(dialect, list_models, reads_body=False)


def input_tokens(call: Call) -> int:
    messages = call.body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: Field required")
    contents = message_contents(messages)
    if call.body.get("system") is not None:
        contents.append(call.body["system"])
    return conversation_tokens(contents)


async def create_message(call: Call) -> web.StreamResponse:
    model = call.model()
    max_tokens = call.optional_int("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required")
    uncached = input_tokens(call)
    plan = call.plan(model, max_tokens, reasons=False)
    read, write = call.controls.cached_tokens, call.controls.cache_write_tokens
    cache = {"cache_creation_input_tokens": write, "cache_read_input_tokens": read}
    usage: dict[str, Any] = {
        "input_tokens": uncached,
        **cache,
        "cache_creation": {"ephemeral_5m_input_tokens": write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": plan.output_tokens,
        "service_tier": "standard",
    }
    stop_reason = "max_tokens" if plan.hit_max_tokens else "end_turn"
    message: dict[str, Any] = {
        "id": "msg_01" + base62(22),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": plan.text}] if plan.words else [],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    if call.controls.no_usage:
        del message["usage"]
    if not call.body.get("stream"):
        return await send_json(call, message)

    started = {**message, "content": [], "stop_reason": None}
    if not call.controls.no_usage:
        started["usage"] = {**usage, "output_tokens": min(1, plan.output_tokens)}
    events = [
        sse("message_start", {"type": "message_start", "message": started}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse("ping", {"type": "ping"}),
    ]
    events.extend(
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": word},
            },
        )
        for word in plan.words
    )
    terminal_at = len(events)
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if not call.controls.no_usage:
        delta["usage"] = {"input_tokens": uncached, **cache, "output_tokens": plan.output_tokens}
    events += [
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", delta),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return await send_stream(call, EventStream(events, terminal_at))


async def count_tokens(call: Call) -> web.StreamResponse:
    call.model()
    return await send_json(call, {"input_tokens": input_tokens(call)})


async def list_models(call: Call) -> web.StreamResponse:
    data = [
        {"type": "model", "id": model, "display_name": name, "created_at": "2025-10-01T00:00:00Z"}
        for model, name in MODELS
    ]
    return await send_json(
        call,
        {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]},
    )
