"""Relay an upstream SSE stream to the client as it arrives, metering it on the side.

Upstream chunks are written to the client unchanged the moment they arrive, and a copy feeds
an incremental SSE parser whose events go to the adapter's `StreamMeter`. The one exception is
the usage chunk the gateway itself asked for (OpenAI include_usage the client did not request):
then the relay forwards whole events only (the exact bytes of each, never re-serialized) and
drops that one event; a partial event waits for its end, which costs nothing a client could use.

If the client goes away mid-stream, the relay keeps reading upstream for up to `drain_s`
seconds so the provider's final usage is still seen; past that bound, or if upstream breaks,
the meter's result has no usage and the caller estimates from what was produced.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.providers.base import SSEEvent, StreamMeter, StreamResult
from gateway.sse import SSEParser
from gateway.upstream import UpstreamBroken, iter_chunks


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    result: StreamResult
    client_gone: bool
    upstream_broken: bool
    first_byte_s: float | None


def _forwardable(events: list[SSEEvent], meter: StreamMeter) -> bytes:
    kept = [event.raw for event in events if meter.observe(event)]
    return b"".join(kept)


async def relay_stream(
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    meter: StreamMeter,
    *,
    strip_usage: bool,
    drain_s: float,
    started: float,
) -> RelayOutcome:
    parser = SSEParser()
    client_gone = False
    broken = False
    first_byte_s: float | None = None
    drain_deadline: float | None = None
    chunks = iter_chunks(upstream)
    try:
        while True:
            try:
                if drain_deadline is None:
                    chunk = await chunks.__anext__()
                else:
                    remaining = drain_deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    chunk = await asyncio.wait_for(chunks.__anext__(), remaining)
            except StopAsyncIteration:
                break
            except TimeoutError:
                break
            except UpstreamBroken:
                broken = True
                break
            events = parser.feed(chunk)
            if strip_usage:
                out = _forwardable(events, meter)
            else:
                for event in events:
                    meter.observe(event)
                out = chunk
            if client_gone or not out:
                continue
            try:
                await response.write(out)
            except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
                client_gone = True
                drain_deadline = time.monotonic() + drain_s
                continue
            if first_byte_s is None:
                first_byte_s = time.perf_counter() - started
        tail = parser.flush()
        out = _forwardable(tail, meter) if strip_usage else b""
        if not strip_usage:
            for event in tail:
                meter.observe(event)
        if not client_gone:
            try:
                if out:
                    await response.write(out)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError):
                client_gone = True
    finally:
        await chunks.aclose()
    return RelayOutcome(
        result=meter.result(),
        client_gone=client_gone,
        upstream_broken=broken,
        first_byte_s=first_byte_s,
    )
