"""The Anthropic Messages API: POST /v1/messages (streaming or not) and count_tokens.

Anthropic base URLs carry no /v1, so `upstream_path` keeps it. A client whose base URL ends
in /v1 calls /v1/v1/messages: that path is an alias of /v1/messages (and likewise for
count_tokens), served and metered the same. The provider key travels in
`x-api-key`; `anthropic-version` and `anthropic-beta` pass through untouched (absent stays
absent: the provider answers a request that lacks them).

Usage follows the metering rules (docs/metering-and-pricing.md): `input_tokens` here is
Anthropic's `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` (Anthropic
reports the uncached part only), cache reads are `cached_input_tokens`, cache creation is
`cache_write_tokens`. Anthropic folds thinking into `output_tokens`; `reasoning_tokens` is
filled only where a response splits it out (`output_tokens_details.thinking_tokens`), else 0.
In a stream, input and cache tokens come from `message_start` and output from the last
`message_delta`, whose usage is cumulative (the last one is taken, never a sum); a
`message_delta` that repeats input or cache counts carries final values, which win. Reading
usage never raises on bad bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from gateway.providers.base import Endpoint, ResponseUsage, SSEEvent, StreamMeter, StreamResult
from gateway.providers.common import (
    LazyText,
    count,
    dump_json,
    forward_headers,
    load_object,
    obj,
    text_id,
)
from gateway.providers.common import (
    items as _items,
)
from gateway.providers.defaults import DefaultHooks
from pricing.models import Usage

# The SDK appends /v1/messages to its base URL; a base URL ending in /v1 (the OpenAI SDK's
# habit) makes that /v1/v1/messages, served as /v1/messages.
MESSAGES = Endpoint(
    "messages", "POST", "/v1/messages", "/v1/messages", streams=True, aliases=("/v1/v1/messages",)
)
COUNT_TOKENS = Endpoint(
    "count_tokens",
    "POST",
    "/v1/messages/count_tokens",
    "/v1/messages/count_tokens",
    metered=False,
    aliases=("/v1/v1/messages/count_tokens",),
)

# https://docs.claude.com/en/api/errors: the `error.type` a client's SDK expects per status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_INPUT_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
_THINKING = "thinking_tokens"
# The 1-hour part of cache_creation_input_tokens (priced higher than 5-minute writes).
_CACHE_1H = "ephemeral_1h_input_tokens"


class AnthropicApi(DefaultHooks):
    """Adapter for the Anthropic Messages API. Stateless: one instance serves every request."""

    kind: str = "anthropic"
    endpoints: tuple[Endpoint, ...] = (MESSAGES, COUNT_TOKENS)

    def upstream_headers(
        self, client_headers: Mapping[str, str], api_key: str | None
    ) -> dict[str, str]:
        return forward_headers(client_headers, ("x-api-key", api_key) if api_key else None)

    def is_streaming(self, endpoint: Endpoint, body: Mapping[str, Any]) -> bool:
        return endpoint.streams and body.get("stream") is True

    def prepare_body(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        return False  # Anthropic streams always carry usage: nothing to ask for, nothing to strip

    def usage_from_body(self, endpoint: Endpoint, body: bytes) -> ResponseUsage:
        if not endpoint.metered:
            return ResponseUsage(None, None)
        parsed = load_object(body)
        if parsed is None:
            return ResponseUsage(None, None)
        usage = parsed.get("usage")
        reported = _reported_counts(usage) if isinstance(usage, dict) else {}
        found = anthropic_usage(reported) if reported else None
        produced = "" if found is not None else "\n".join(_output_texts(parsed))
        return ResponseUsage(found, text_id(parsed.get("id")), produced)

    def stream_meter(self, endpoint: Endpoint, strip_usage: bool) -> StreamMeter:
        return MessagesStreamMeter()

    def prompt_text(self, endpoint: Endpoint, body: Mapping[str, Any]) -> str:
        return "\n".join(part for part in _prompt_parts(body) if part)

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        value = body.get("max_tokens")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        return None

    def error_body(
        self, status: int, error_type: str, message: str, code: str | None, param: str | None
    ) -> bytes:
        anthropic_type = _ERROR_TYPES.get(
            status, "invalid_request_error" if 400 <= status < 500 else "api_error"
        )
        return orjson.dumps(
            {"type": "error", "error": {"type": anthropic_type, "message": message}}
        )


def anthropic_usage(reported: Mapping[str, int]) -> Usage:
    """Normalise Anthropic's counts (uncached input apart from cache reads and writes)."""
    uncached = reported.get("input_tokens", 0)
    cache_read = reported.get("cache_read_input_tokens", 0)
    cache_write = reported.get("cache_creation_input_tokens", 0)
    output = reported.get("output_tokens", 0)
    return Usage(
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=output,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=min(reported.get(_CACHE_1H, 0), cache_write),
        reasoning_tokens=min(reported.get(_THINKING, 0), output),
    )


def _reported_counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """The counts a `usage` object actually carries; null or absent fields are left out."""
    reported = {
        field: count(usage[field])
        for field in (*_INPUT_FIELDS, "output_tokens")
        if usage.get(field) is not None
    }
    one_hour = obj(usage.get("cache_creation")).get(_CACHE_1H)
    if one_hour is not None:
        reported[_CACHE_1H] = count(one_hour)
    thinking = obj(usage.get("output_tokens_details")).get(_THINKING)
    if thinking is not None:
        reported[_THINKING] = count(thinking)
    return reported


class MessagesStreamMeter:
    """Meters a Messages stream. It never hides an event."""

    __slots__ = ("_final_seen", "_reported", "_text", "_upstream_id", "finished")

    def __init__(self) -> None:
        self.finished = False
        self._reported: dict[str, int] = {}
        self._final_seen = False
        self._upstream_id: str | None = None
        self._text = LazyText(_delta_texts)

    def observe(self, event: SSEEvent) -> bool:
        data = event.data
        if not data:
            return True
        name = event.event
        parsed: dict[str, Any] | None = None
        if name is None:  # Anthropic always names events; tolerate servers that do not
            parsed = load_object(data)
            if parsed is None:
                return True
            kind = parsed.get("type")
            name = kind if isinstance(kind, str) else ""
        if name == "content_block_delta":
            if parsed is not None:
                self._text.add_parsed(parsed)
            else:
                self._text.add(data)
        elif name == "message_start":
            parsed = parsed if parsed is not None else load_object(data)
            message = obj(parsed.get("message")) if parsed is not None else {}
            self._upstream_id = text_id(message.get("id")) or self._upstream_id
            self._reported.update(_reported_counts(obj(message.get("usage"))))
        elif name == "message_delta":
            parsed = parsed if parsed is not None else load_object(data)
            usage = obj(parsed.get("usage")) if parsed is not None else {}
            counts = _reported_counts(usage)
            delta = obj(parsed.get("delta")) if parsed is not None else {}
            # Only the last message_delta (the one with a stop_reason) closes the count: a
            # stream cut after an earlier one has produced more than it reported so far.
            if "output_tokens" in counts and delta.get("stop_reason") is not None:
                self._final_seen = True
            self._reported.update(counts)  # cumulative totals: replace, never add
        elif name == "message_stop":
            self.finished = True
            if "output_tokens" in self._reported:
                self._final_seen = True
        return True

    def result(self) -> StreamResult:
        if self._final_seen:
            return StreamResult(anthropic_usage(self._reported), self._upstream_id, "")
        partial = None
        if any(field in self._reported for field in _INPUT_FIELDS):
            # The input side, and the output reported so far (a floor for the estimate).
            so_far = {
                field: self._reported.get(field, 0)
                for field in (*_INPUT_FIELDS, _CACHE_1H, "output_tokens")
            }
            partial = anthropic_usage(so_far)
        return StreamResult(None, self._upstream_id, self._text.text(), partial)


def _delta_texts(event: Mapping[str, Any]) -> Iterator[str]:
    delta = obj(event.get("delta"))
    for field in ("text", "thinking", "partial_json"):
        value = delta.get(field)
        if isinstance(value, str):
            yield value


def _output_texts(body: Mapping[str, Any]) -> Iterator[str]:
    """What a complete message produced: its text, thinking and tool-use blocks."""
    for block in _items(body.get("content")):
        thinking = obj(block).get("thinking")
        if isinstance(thinking, str):
            yield thinking
    yield from _block_texts(body.get("content"))


def _prompt_parts(body: Mapping[str, Any]) -> Iterator[str]:
    yield from _block_texts(body.get("system"))
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        yield from _block_texts(obj(message).get("content"))
    tools = body.get("tools")
    if tools:
        yield dump_json(tools)  # tool schemas are part of the prompt the model reads


def _block_texts(content: Any) -> Iterator[str]:
    """Text of a `system` or message `content`: a string or a list of content blocks."""
    if isinstance(content, str):
        yield content
        return
    for block in content if isinstance(content, list) else ():
        block = obj(block)
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            yield block["text"]
        elif kind in ("tool_use", "server_tool_use"):
            name = block.get("name")
            if isinstance(name, str):
                yield name
            yield dump_json(block.get("input"))
        elif kind == "tool_result":
            yield from _block_texts(block.get("content"))
