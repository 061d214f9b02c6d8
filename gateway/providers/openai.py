"""The OpenAI API family: api.openai.com and every OpenAI-compatible server (vLLM, Ollama...).

Routes: chat completions, legacy completions, embeddings, the Responses API, and the model
list (answered by the gateway itself, declared here so routing knows it). Upstream base URLs
end in /v1, so an endpoint's `upstream_path` omits it.

Usage follows the metering rules (docs/metering-and-pricing.md): `prompt_tokens` /
`input_tokens` is every prompt token (cached ones included), `completion_tokens` /
`output_tokens` includes reasoning tokens. For streamed chat and completions the gateway asks
for `stream_options.include_usage` when the client did not, and the stream meter hides that one
extra chunk (see `openai_stream`). Reading usage never raises: an unreadable body yields
`ResponseUsage(None, None)` and the caller estimates.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from gateway.providers.base import Endpoint, ResponseUsage, StreamMeter
from gateway.providers.common import (
    dump_json,
    forward_headers,
    function_texts,
    load_object,
    obj,
    strings_or_tokens,
    text_id,
)
from gateway.providers.common import (
    items as _items,
)
from gateway.providers.defaults import DefaultHooks
from gateway.providers.openai_stream import ChatStreamMeter, ResponsesStreamMeter, openai_usage

CHAT = Endpoint(
    "chat.completions", "POST", "/v1/chat/completions", "/chat/completions", streams=True
)
COMPLETIONS = Endpoint("completions", "POST", "/v1/completions", "/completions", streams=True)
EMBEDDINGS = Endpoint("embeddings", "POST", "/v1/embeddings", "/embeddings")
RESPONSES = Endpoint("responses", "POST", "/v1/responses", "/responses", streams=True)
MODELS = Endpoint("models", "GET", "/v1/models", "/models", metered=False, needs_model=False)

# Endpoints whose streams carry usage only when asked (stream_options.include_usage).
_USAGE_ON_REQUEST = frozenset({CHAT.name, COMPLETIONS.name})
_OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class OpenAIApi(DefaultHooks):
    """Adapter for OpenAI-shaped APIs. Stateless: one instance serves every request."""

    kind: str = "openai"
    endpoints: tuple[Endpoint, ...] = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MODELS)

    def upstream_headers(
        self, client_headers: Mapping[str, str], api_key: str | None
    ) -> dict[str, str]:
        credential = ("Authorization", f"Bearer {api_key}") if api_key else None
        return forward_headers(client_headers, credential)

    def is_streaming(self, endpoint: Endpoint, body: Mapping[str, Any]) -> bool:
        return endpoint.streams and body.get("stream") is True

    def prepare_body(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        if endpoint.name not in _USAGE_ON_REQUEST or not self.is_streaming(endpoint, body):
            return False
        options = body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        if options.get("include_usage") is True:
            return False
        body["stream_options"] = {**options, "include_usage": True}
        return True

    def usage_from_body(self, endpoint: Endpoint, body: bytes) -> ResponseUsage:
        if not endpoint.metered:
            return ResponseUsage(None, None)
        parsed = load_object(body)
        if parsed is None:
            return ResponseUsage(None, None)
        usage = openai_usage(parsed.get("usage"))
        produced = "" if usage is not None else "\n".join(_output_texts(parsed))
        return ResponseUsage(usage, text_id(parsed.get("id")), produced)

    def stream_meter(self, endpoint: Endpoint, strip_usage: bool) -> StreamMeter:
        if endpoint.name == RESPONSES.name:
            return ResponsesStreamMeter()
        return ChatStreamMeter(strip_usage=strip_usage)

    def prompt_text(self, endpoint: Endpoint, body: Mapping[str, Any]) -> str:
        if endpoint.name == CHAT.name:
            parts = _chat_prompt(body)
        elif endpoint.name == COMPLETIONS.name:
            parts = strings_or_tokens(body.get("prompt"))
        elif endpoint.name == EMBEDDINGS.name:
            parts = strings_or_tokens(body.get("input"))
        elif endpoint.name == RESPONSES.name:
            parts = _responses_prompt(body)
        else:
            return ""
        return "\n".join(part for part in parts if part)

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        for field in _OUTPUT_LIMIT_FIELDS:
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    def error_body(
        self, status: int, error_type: str, message: str, code: str | None, param: str | None
    ) -> bytes:
        return orjson.dumps(
            {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        )


def _output_texts(body: Mapping[str, Any]) -> Iterator[str]:
    """What a complete response produced: chat messages and tool calls, completion text,
    Responses output items."""
    for choice in _items(body.get("choices")):
        choice = obj(choice)
        if isinstance(choice.get("text"), str):
            yield choice["text"]
        message = obj(choice.get("message"))
        if isinstance(message.get("content"), str):
            yield message["content"]
        for call in _items(message.get("tool_calls")):
            yield from function_texts(obj(call).get("function"))
    for item in _items(body.get("output")):
        item = obj(item)
        yield from function_texts(item) if item.get("type") == "function_call" else ()
        for part in _items(item.get("content")):
            text = obj(part).get("text")
            if isinstance(text, str):
                yield text


def _chat_prompt(body: Mapping[str, Any]) -> Iterator[str]:
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        message = obj(message)
        yield from _content_texts(message.get("content"))
        tool_calls = message.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else ():
            yield from function_texts(obj(call).get("function"))
        yield from function_texts(message.get("function_call"))
    yield from _tool_definitions(body)


def _responses_prompt(body: Mapping[str, Any]) -> Iterator[str]:
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        yield instructions
    items = body.get("input")
    if isinstance(items, str):
        yield items
    for item in items if isinstance(items, list) else ():
        item = obj(item)
        yield from _content_texts(item.get("content"))
        for field in ("arguments", "output"):
            value = item.get(field)
            if isinstance(value, str):
                yield value
            else:
                yield from _content_texts(value)
    yield from _tool_definitions(body)


def _content_texts(content: Any) -> Iterator[str]:
    """Text of a message `content`: a string, or the text of each part of a list."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            text = obj(part).get("text")
            if isinstance(text, str):
                yield text


def _tool_definitions(body: Mapping[str, Any]) -> Iterator[str]:
    """Tool schemas are part of the prompt the model reads, so they count toward it."""
    for field in ("tools", "functions"):
        value = body.get(field)
        if value:
            yield dump_json(value)
