"""Reading Gemini's `usageMetadata`, and the meter of its `:streamGenerateContent?alt=sse`
streams.

Usage follows the gateway's one convention: input = `promptTokenCount` (cached content
included, as Gemini counts it) + `toolUsePromptTokenCount`, cached = `cachedContentTokenCount`,
output = `candidatesTokenCount` + `thoughtsTokenCount` (Gemini reports thinking apart from the
answer), reasoning = `thoughtsTokenCount`. Embeddings report only `promptTokenCount`.

A Gemini stream is a series of `data: {GenerateContentResponse}` events with no terminal
event; every chunk's `usageMetadata` is cumulative, so the last one is the usage (never a
sum). The meter keeps the raw bytes of the last chunk that carries usage and parses it only
when asked; it calls the stream finished at the chunk whose candidate has a `finishReason`
and that carries usage (the relay records before that chunk reaches the client). A stream
cut before a `finishReason` has only a running count: it is reported as `partial_usage`
(its prompt side kept, the output estimated and never below the count so far), so the event
is flagged `estimated`. Content is kept raw and decoded only when the final usage is missing
(for an estimate). Never raises on bad bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.providers.base import SSEEvent, StreamResult
from gateway.providers.common import (
    LazyText,
    count,
    dump_json,
    items,
    load_object,
    obj,
    text_id,
)
from pricing.models import Usage

_USAGE_KEY = b'"usageMetadata"'
_FINISH_KEY = b'"finishReason"'


def gemini_usage(value: Any, *, embedding: bool = False) -> Usage | None:
    """A `usageMetadata` object as Usage; None when `value` holds no token count."""
    if not isinstance(value, dict) or (
        "promptTokenCount" not in value
        and not ("candidatesTokenCount" in value or "totalTokenCount" in value)
    ):
        return None
    prompt = count(value.get("promptTokenCount")) + count(value.get("toolUsePromptTokenCount"))
    if embedding:
        return Usage(input_tokens=prompt)
    thoughts = count(value.get("thoughtsTokenCount"))
    output = count(value.get("candidatesTokenCount")) + thoughts
    cached = min(count(value.get("cachedContentTokenCount")), prompt)
    return Usage(prompt, output, cached, 0, thoughts)


def candidate_texts(response: Mapping[str, Any]) -> Iterator[str]:
    """The text a response (or a stream chunk) produced: parts' text, function calls."""
    for candidate in items(response.get("candidates")):
        for part in items(obj(obj(candidate).get("content")).get("parts")):
            part = obj(part)
            text = part.get("text")
            if isinstance(text, str):
                yield text
            call = obj(part.get("functionCall"))
            if call:
                name, args = call.get("name"), call.get("args")
                if isinstance(name, str):
                    yield name
                if args is not None:
                    yield dump_json(args)


def _finished(chunk: Mapping[str, Any]) -> bool:
    return any(obj(candidate).get("finishReason") for candidate in items(chunk.get("candidates")))


class GeminiStreamMeter:
    """Meters a `streamGenerateContent?alt=sse` stream; it never hides an event."""

    __slots__ = ("_ended", "_last_usage", "_text", "_upstream_id", "finished")

    def __init__(self) -> None:
        self.finished = False
        self._ended = False  # a candidate's finishReason was seen
        self._last_usage: bytes | None = None
        self._upstream_id: str | None = None
        self._text = LazyText(candidate_texts)

    def observe(self, event: SSEEvent) -> bool:
        data = event.data
        if not data:
            return True
        if self._upstream_id is None or _FINISH_KEY in data:
            chunk = load_object(data)
            if chunk is None:
                return True
            if self._upstream_id is None:
                self._upstream_id = text_id(chunk.get("responseId"))
            ended = _finished(chunk)
            self._ended = self._ended or ended
            if _USAGE_KEY in data and gemini_usage(chunk.get("usageMetadata")) is not None:
                self._last_usage = data
                self.finished = self.finished or ended
            self._text.add_parsed(chunk)
            return True
        if _USAGE_KEY in data:
            self._last_usage = data  # cumulative: the last one wins (read in result)
        self._text.add(data)
        return True

    def _usage(self) -> Usage | None:
        if self._last_usage is None:
            return None
        chunk = load_object(self._last_usage)
        return gemini_usage(chunk.get("usageMetadata")) if chunk is not None else None

    def result(self) -> StreamResult:
        usage = self._usage()
        if usage is not None and self._ended:
            return StreamResult(usage, self._upstream_id, "")
        return StreamResult(None, self._upstream_id, self._text.text(), partial_usage=usage)
