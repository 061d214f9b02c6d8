"""The load generator against a real loopback server: how it counts SSE events when event
boundaries fall across HTTP chunks, and how it spreads its connections' starts."""

from __future__ import annotations

import asyncio
import time

from gateway.bench.loadgen import build_request, generate

# One SSE answer, chunk by chunk: the first event's blank line is cut between two chunks, the
# third event's data and its blank line arrive apart.
CHUNKS = (b"data: a\n", b"\ndata: b\n\n", b"data: c", b"\n\n", b"data: [DONE]\n\n")
EVENTS_PER_ANSWER = 4
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(HEAD)
            for chunk in CHUNKS:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0.001)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_events_are_counted_across_chunk_boundaries() -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = build_request("127.0.0.1", port, "POST", "/v1/chat/completions", [], b"{}")
    async with server:
        result = await generate(
            "127.0.0.1", port, request, 2, time.monotonic() + 0.05, 0.4, stagger_s=0.02
        )

    completed = sum(result.statuses.values())
    assert completed > 2 and result.statuses == {200: completed}
    assert result.failures == 0
    assert result.events == completed * EVENTS_PER_ANSWER
    assert 0 < result.window_events <= result.events
    assert len(result.ttfb_us) == len(result.latency_us) > 0


async def test_staggered_connections_start_one_after_another() -> None:
    accepted: list[float] = []

    async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        await _serve(reader, writer)

    server = await asyncio.start_server(note, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = build_request("127.0.0.1", port, "POST", "/v1/chat/completions", [], b"{}")
    async with server:
        started = time.monotonic()
        await generate("127.0.0.1", port, request, 4, started + 0.5, 0.2, stagger_s=0.4)

    # Four connections over 0.4 s: the i-th never starts before i * 0.1 s (a busy machine
    # may start any of them later).
    first_four = sorted(accepted)[:4]
    assert len(first_four) == 4
    for i, at in enumerate(first_four):
        assert at - started >= i * 0.1 - 0.005
