"""Writing a mock answer, a JSON body or an SSE stream, with the 200-status faults applied.

A stream is built in full before the first byte (the answers are small and deterministic)
and written in one write, or one event at a time `token_delay_s` apart when paced. The
faults of `controls.py` cut or corrupt it here: `truncate` drops the events from
`terminal_at` on (the end of the text). The others strike half-way through the events before
`terminal_at`, so some text was produced: `reset` closes the connection there,
`stream-error` sends the provider's error event there and ends, `invalid-json` slips in an
event that is not JSON there and goes on.
A client that goes away mid-stream is not an error: the writer stops quietly.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.mock_provider.endpoint import Call

DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def sse(name: str | None, payload: object) -> bytes:
    """One SSE event: `event: NAME` (if named) and `data: JSON`, then a blank line."""
    data = orjson.dumps(payload)
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(frozen=True, slots=True)
class EventStream:
    """A whole stream; `events[terminal_at:]` are its final usage and terminal events.
    `content_type` is SSE's unless the API frames its streams otherwise (AWS event-stream)."""

    events: list[bytes]
    terminal_at: int
    content_type: str = SSE_HEADERS["Content-Type"]


async def send_json(call: Call, payload: dict[str, Any] | list[Any]) -> web.StreamResponse:
    mode = call.controls.mode
    if mode == "reset":
        return _close_connection(call.request)
    body = orjson.dumps(payload)
    if mode == "truncate":
        body = body[: len(body) // 2]
    elif mode == "invalid-json":
        body = body[:-1] + b",}"  # a trailing comma: not JSON
    return web.Response(
        body=body,
        headers=call.dialect.response_headers(call.request_id),
        content_type="application/json",
    )


async def send_stream(call: Call, stream: EventStream) -> web.StreamResponse:
    events = _faulty(call, stream)
    if call.stream_preamble:
        events = [call.stream_preamble, *events]
    response = web.StreamResponse(
        headers={
            **call.dialect.response_headers(call.request_id),
            **SSE_HEADERS,
            "Content-Type": stream.content_type,
        }
    )
    delay_s = call.token_delay_s
    try:
        await response.prepare(call.request)
        if delay_s > 0:
            for index, event in enumerate(events):
                if index:
                    await asyncio.sleep(delay_s)
                await response.write(event)
        else:
            await response.write(b"".join(events))
        if call.controls.mode == "reset":
            _close_connection(call.request)
            return response
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away mid-stream; there is nobody left to answer
    return response


def _faulty(call: Call, stream: EventStream) -> list[bytes]:
    mode = call.controls.mode
    events = stream.events
    strike_at = max(1, stream.terminal_at // 2)
    if mode == "truncate":
        return events[: stream.terminal_at]
    if mode == "reset":
        return events[:strike_at]
    if mode == "stream-error":
        return [*events[:strike_at], call.dialect.stream_error_event]
    if mode == "invalid-json":
        return [*events[:strike_at], call.dialect.broken_event, *events[strike_at:]]
    return events


def _close_connection(request: web.Request) -> web.StreamResponse:
    """Close the socket under the request; aiohttp then fails to write and drops it quietly."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()
