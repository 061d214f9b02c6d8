"""Stream meters for the OpenAI API family, and the one reader of an OpenAI `usage` object.

`ChatStreamMeter` follows chat-completion and legacy-completion streams: usage arrives in one
chunk whose `usage` is not null (with `choices: []`) when `stream_options.include_usage` was
set. When the gateway set it on the client's behalf (`strip_usage`), that chunk, and only
that chunk, is hidden from the client. `ResponsesStreamMeter` follows Responses API streams,
whose usage arrives in `response.completed` / `response.incomplete` / `response.failed`.

Both are cheap on the hot path: a chunk is JSON-parsed only when it matters (the first chunk
for the response id, the usage chunk, the final Responses events); content deltas are kept
raw and decoded only when no usage came and the caller needs text for an estimate. Neither
ever raises on bad bytes: an unreadable event is forwarded and otherwise ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from gateway.providers.base import SSEEvent, StreamResult
from gateway.providers.common import (
    LazyText,
    count,
    function_texts,
    load_object,
    obj,
    text_id,
)
from pricing.models import Usage

_DONE = b"[DONE]"
_USAGE_KEY = b'"usage"'
_NULL_USAGE_COMPACT = b'"usage":null'
_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')

_RESPONSE_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.audio.transcript.delta",
    }
)
_RESPONSE_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSE_START = frozenset({"response.created", "response.queued", "response.in_progress"})


def openai_usage(value: Any) -> Usage | None:
    """Read a chat/completions/embeddings `usage` (prompt_tokens...) or a Responses API one
    (input_tokens...). None when `value` holds neither."""
    if not isinstance(value, dict):
        return None
    if "prompt_tokens" in value or "completion_tokens" in value:
        names = _CHAT_NAMES
    elif "input_tokens" in value or "output_tokens" in value:
        names = _RESPONSES_NAMES
    else:
        return None
    input_name, output_name, input_details, output_details = names
    input_tokens = _count(value.get(input_name))
    output_tokens = _count(value.get(output_name))
    details = value.get(input_details)
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    details = value.get(output_details)
    reasoning = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else 0
    return Usage(
        input_tokens, output_tokens, min(cached, input_tokens), 0, min(reasoning, output_tokens)
    )


_CHAT_NAMES = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
_RESPONSES_NAMES = (
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "output_tokens_details",
)


def _count(value: Any) -> int:
    """`count`, with the usual case (a plain non-negative int) first."""
    return value if type(value) is int and value >= 0 else count(value)


def _carries_usage(data: bytes) -> bool:
    """Cheap pre-check: does this chunk have a `usage` that is not null?"""
    if _USAGE_KEY not in data or _NULL_USAGE_COMPACT in data:
        return False
    return _NULL_USAGE.search(data) is None


class ChatStreamMeter:
    """Meters a chat.completions or completions stream."""

    __slots__ = ("_first_seen", "_strip_usage", "_text", "_upstream_id", "_usage", "finished")

    def __init__(self, *, strip_usage: bool) -> None:
        self.finished = False
        self._strip_usage = strip_usage
        self._usage: Usage | None = None
        self._upstream_id: str | None = None
        self._first_seen = False
        self._text = LazyText(_chat_texts)

    def observe(self, event: SSEEvent) -> bool:
        data = event.data
        if not data:
            return True
        if data == _DONE:
            self.finished = True
            return True
        if _carries_usage(data):
            chunk = load_object(data)
            usage = openai_usage(chunk.get("usage")) if chunk is not None else None
            if chunk is not None and usage is not None:
                return self._take_usage(chunk, usage)
        if not self._first_seen:
            # The first chunk names the completion; later chunks repeat the same id. Azure
            # opens with a content-filter chunk (`choices: []`, an empty id): then the next.
            chunk = load_object(data)
            if chunk is None:
                self._first_seen = True
            else:
                self._upstream_id = text_id(chunk.get("id"))
                self._first_seen = self._upstream_id is not None or bool(chunk.get("choices"))
                self._text.add_parsed(chunk)
                return True
        self._text.add(data)
        return True

    def _take_usage(self, chunk: Mapping[str, Any], usage: Usage) -> bool:
        self._usage = usage  # some servers repeat usage cumulatively: the last one wins
        self._first_seen = True
        if self._upstream_id is None:
            self._upstream_id = text_id(chunk.get("id"))
        if chunk.get("choices"):
            # Usage riding on a content chunk (vLLM continuous usage stats): never hide content.
            self._text.add_parsed(chunk)
            return True
        return not self._strip_usage

    def result(self) -> StreamResult:
        text = self._text.text() if self._usage is None else ""
        return StreamResult(self._usage, self._upstream_id, text)


class ResponsesStreamMeter:
    """Meters a Responses API stream. It never hides an event: usage is always sent."""

    __slots__ = ("_text", "_upstream_id", "_usage", "finished")

    def __init__(self) -> None:
        self.finished = False
        self._usage: Usage | None = None
        self._upstream_id: str | None = None
        self._text = LazyText(_response_texts)

    def observe(self, event: SSEEvent) -> bool:
        data = event.data
        if not data:
            return True
        name = event.event
        parsed: dict[str, Any] | None = None
        if name is None:  # some compatible servers send no `event:` line; read `type`
            parsed = load_object(data)
            if parsed is None:
                return True
            kind = parsed.get("type")
            name = kind if isinstance(kind, str) else ""
        if name in _RESPONSE_DELTAS:
            if parsed is not None:
                self._text.add_parsed(parsed)
            else:
                self._text.add(data)
        elif name in _RESPONSE_FINAL or (name in _RESPONSE_START and self._upstream_id is None):
            parsed = parsed if parsed is not None else load_object(data)
            response = obj(parsed.get("response")) if parsed is not None else {}
            self._upstream_id = text_id(response.get("id")) or self._upstream_id
            if name in _RESPONSE_FINAL:
                self._usage = openai_usage(response.get("usage")) or self._usage
                self.finished = True
        return True

    def result(self) -> StreamResult:
        text = self._text.text() if self._usage is None else ""
        return StreamResult(self._usage, self._upstream_id, text)


# A delta with these keys at most carries its text in `content` alone (most chunks).
_PLAIN_DELTA = frozenset({"content", "role"})


def _chat_texts(chunk: Mapping[str, Any]) -> Iterable[str]:
    """The text a chat chunk produced; the usual one-choice, content-only chunk is read
    without walking every field."""
    choices = chunk.get("choices")
    if type(choices) is list and len(choices) == 1:
        choice = choices[0]
        if type(choice) is dict and "text" not in choice:
            delta = choice.get("delta")
            if type(delta) is dict and delta.keys() <= _PLAIN_DELTA:
                content = delta.get("content")
                return (content,) if type(content) is str else ()
    return _every_chat_text(chunk)


def _every_chat_text(chunk: Mapping[str, Any]) -> Iterator[str]:
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        choice = obj(choice)
        text = choice.get("text")  # legacy completions
        if isinstance(text, str):
            yield text
        delta = obj(choice.get("delta"))
        for field in ("content", "reasoning_content", "reasoning", "refusal"):
            value = delta.get(field)
            if isinstance(value, str):
                yield value
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            yield from function_texts(obj(call).get("function"))
        yield from function_texts(delta.get("function_call"))


def _response_texts(event: Mapping[str, Any]) -> Iterator[str]:
    delta = event.get("delta")
    if isinstance(delta, str):
        yield delta
