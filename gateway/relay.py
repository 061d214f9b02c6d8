"""Relay an upstream stream to the client as it arrives, metering it on the side.

Upstream chunks are written to the client unchanged the moment they arrive, and a copy feeds
an incremental parser whose events go to the adapter's `StreamMeter`: SSE's
(`gateway.sse.SSEParser`) unless the adapter supplies a `Framer` for another framing (AWS
event-stream); either yields events with their exact bytes. Two exceptions:
- the usage chunk the gateway itself asked for (OpenAI include_usage the client did not
  request): then the relay forwards whole events only (the exact bytes of each, never
  re-serialized) and drops that one event; a partial event waits for its end;
- the stream's terminal event (`[DONE]`, `message_stop`, `response.completed`): its bytes are
  held back until `finalize` has recorded the usage event (journaled by the writer), so a
  client that saw its stream complete always has its usage recorded, even if the gateway is
  killed the next instant. Every other byte goes out without waiting.

`finalize(client_gone, upstream_broken)` runs exactly once: at the terminal event, or when the
stream ends without one (cut, truncated, client gone past the drain bound).

If the client goes away mid-stream, the relay keeps reading upstream for up to `drain_s`
seconds so the provider's final usage is still seen; past that bound, or if upstream breaks,
the meter's result has no usage and the caller estimates from what was produced.

Two implementations keep this contract. When the client's side can be written without
awaiting (the fast front's `FrontReply`, a `relay_push.PushSink`) and the upstream body is
sent as is, `relay_stream` hands the stream to `gateway.relay_push.relay_pushed`, which relays
each chunk from the upstream socket's callback. Otherwise (aiohttp's StreamResponse, a
compressed upstream body) the loop below does it, one awaited write per chunk: the reference,
against which the fast path is tested (tests/test_relay_push.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import aiohttp

from gateway.providers.base import SSEEvent
from gateway.relay_push import PushSink, PushSource, relay_pushed
from gateway.relay_types import (
    Finalize,
    RelayOutcome,
    RelayState,
    StreamPlan,
)
from gateway.reply import StreamSink
from gateway.upstream import UpstreamBroken, UpstreamResponse, iter_chunks

__all__ = [
    "Finalize",
    "RelayOutcome",
    "relay_reference",
    "relay_stream",
]

_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError)


class _Relay(RelayState):
    def __init__(self, response: StreamSink, plan: StreamPlan) -> None:
        super().__init__(plan)
        self.response = response
        self.drain_deadline: float | None = None

    async def write(self, data: bytes) -> None:
        if self.client_gone or not data:
            return
        try:
            await self.response.write(data)
        except _CLIENT_GONE:
            self.client_gone = True
            self.drain_deadline = time.monotonic() + self.drain_s
            return
        if self.first_byte_s is None:
            self.first_byte_s = time.perf_counter() - self.started

    async def chunk(self, chunk: bytes) -> None:
        carried = self.parser.buffered
        events = self.parser.feed(chunk)
        if self.strip_usage:
            await self._events(events)
            return
        # Pass-through: the chunk goes out as it came, except that a terminal event's bytes
        # wait for `finalize`. Event ends are found from the exact raw lengths: the first
        # `carried` bytes of the events belong to earlier chunks (already sent).
        end = -carried
        hold_from: int | None = None
        for event in events:
            end += len(event.raw)
            was_finished = self.meter.finished
            self.meter.observe(event)
            if hold_from is None and self.meter.finished and not was_finished:
                hold_from = max(0, end - len(event.raw))
        if hold_from is None:
            await self.write(chunk)
            return
        await self.write(chunk[:hold_from])
        await self.finish_once()
        await self.write(chunk[hold_from:])

    async def _events(self, events: list[SSEEvent]) -> None:
        out: list[bytes] = []
        for event in events:
            was_finished = self.meter.finished
            keep = self.meter.observe(event)
            if self.meter.finished and not was_finished:
                await self.write(b"".join(out))
                out = []
                await self.finish_once()
            if keep:
                out.append(event.raw)
        await self.write(b"".join(out))


async def relay_stream(
    response: StreamSink, upstream: UpstreamResponse, plan: StreamPlan
) -> RelayOutcome:
    """Relay `upstream` to `response` as `plan` says, by the fastest relay both sides allow."""
    # Duck-typed on purpose: isinstance against a runtime-checkable Protocol costs about as
    # much as relaying a hundred events.
    if hasattr(response, "write_now") and getattr(upstream, "pushable", False):
        return await relay_pushed(cast(PushSink, response), cast(PushSource, upstream), plan)
    return await relay_reference(response, upstream, plan)


async def relay_reference(
    response: StreamSink, upstream: UpstreamResponse, plan: StreamPlan
) -> RelayOutcome:
    """The awaited write loop: every sink, every upstream body."""
    relay = _Relay(response, plan)
    trailer = plan.trailer
    chunks = iter_chunks(upstream)
    try:
        while True:
            try:
                if relay.drain_deadline is None:
                    chunk = await chunks.__anext__()
                else:
                    remaining = relay.drain_deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    chunk = await asyncio.wait_for(chunks.__anext__(), remaining)
            except (StopAsyncIteration, TimeoutError):
                break
            except UpstreamBroken:
                relay.broken = True
                break
            await relay.chunk(chunk)
        torn = relay.parser.buffered > 0  # the client may hold part of an event
        tail = relay.parser.flush()
        if relay.strip_usage:
            await relay._events(tail)
        else:
            for event in tail:
                relay.meter.observe(event)
            # Pass-through already wrote these bytes as they came.
        await relay.finish_once()
        last = trailer() if trailer is not None else b""
        if last:
            await relay.write(b"\n\n" + last if torn else last)
        if not relay.client_gone:
            try:
                await response.write_eof()
            except _CLIENT_GONE:
                relay.client_gone = True
    finally:
        await chunks.aclose()
    return RelayOutcome(relay.client_gone, relay.broken, relay.first_byte_s)
