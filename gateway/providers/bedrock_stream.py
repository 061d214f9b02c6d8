"""Reading Bedrock Converse usage: the one reader of a `usage` object, the event-stream framer
the relay splits a ConverseStream with, and the stream meter.

Usage (`converse_usage`), in the gateway's convention: `input_tokens` = `inputTokens` +
`cacheReadInputTokens` + `cacheWriteInputTokens` (Bedrock reports the uncached part apart),
`cached_input_tokens` = `cacheReadInputTokens`, `cache_write_tokens` =
`cacheWriteInputTokens`, of which `cacheDetails` entries with `ttl: "1h"` are the 1-hour
writes (priced at their own rate), `output_tokens` = `outputTokens`. A usage object without
`inputTokens` or `outputTokens` is not usage (the caller estimates).

`EventStreamFramer` turns the event-stream frames (`gateway.providers.eventstream`) into the
relay's events: `event` is the frame's `:event-type` (or `:exception-type`), `data` its
payload, `raw` its exact bytes, so the relay still forwards bytes untouched and can hold
back the terminal frame. A stream whose framing breaks (a CRC mismatch, garbage, a frame cut
by the end of the stream) yields nothing more; its bytes still reach the client as they came.

`ConverseStreamMeter`: the stream's usage is in its last event, `metadata`, which is also its
terminal event (the relay records the usage before the client sees it). Text deltas are kept
raw and decoded only when no usage came (a cut or broken stream is then estimated from them).
Nothing here raises on bad bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.providers.base import SSEEvent, StreamResult
from gateway.providers.common import LazyText, count, items, load_object, obj
from gateway.providers.eventstream import EventStreamDecoder, EventStreamMessage
from pricing.models import Usage

_CACHE_1H = "1h"


def converse_usage(usage: Any) -> Usage | None:
    """A Converse `usage` object as the gateway counts it; None if it is not one."""
    fields = obj(usage)
    if fields.get("inputTokens") is None or fields.get("outputTokens") is None:
        return None
    uncached = count(fields.get("inputTokens"))
    cache_read = count(fields.get("cacheReadInputTokens"))
    cache_write = count(fields.get("cacheWriteInputTokens"))
    one_hour = sum(
        count(obj(detail).get("inputTokens"))
        for detail in items(fields.get("cacheDetails"))
        if obj(detail).get("ttl") == _CACHE_1H
    )
    return Usage(
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=count(fields.get("outputTokens")),
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=min(one_hour, cache_write),
    )


def _as_event(message: EventStreamMessage) -> SSEEvent:
    return SSEEvent(message.event_type, message.payload, message.raw)


class EventStreamFramer:
    """The relay's `Framer` for `application/vnd.amazon.eventstream` bodies."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    @property
    def broken(self) -> bool:
        return self._decoder.broken

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return [_as_event(message) for message in self._decoder.feed(chunk)]

    def flush(self) -> list[SSEEvent]:
        return [_as_event(message) for message in self._decoder.flush()]


class ConverseStreamMeter:
    """Meters a ConverseStream. It never hides an event."""

    __slots__ = ("_text", "_usage", "finished")

    def __init__(self) -> None:
        self.finished = False
        self._usage: Usage | None = None
        self._text = LazyText(_delta_texts)

    def observe(self, event: SSEEvent) -> bool:
        name = event.event
        if name == "contentBlockDelta":
            self._text.add(event.data)
        elif name == "metadata":
            parsed = load_object(event.data)
            if parsed is not None:
                self._usage = converse_usage(parsed.get("usage"))
            self.finished = True
        return True

    def result(self) -> StreamResult:
        if self._usage is not None:
            return StreamResult(self._usage, None, "")
        return StreamResult(None, None, self._text.text())


def _delta_texts(event: Mapping[str, Any]) -> Iterator[str]:
    delta = obj(event.get("delta"))
    text = delta.get("text")
    if isinstance(text, str):
        yield text
    tool_use = obj(delta.get("toolUse")).get("input")
    if isinstance(tool_use, str):
        yield tool_use
    reasoning = obj(delta.get("reasoningContent")).get("text")
    if isinstance(reasoning, str):
        yield reasoning
