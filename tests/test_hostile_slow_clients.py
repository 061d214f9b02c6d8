"""Slow clients against a real gateway with a short `server.client_timeout_s`: a body that
stalls or trickles past the deadline is answered 408 in the called API's shape, on time, with
`Connection: close`; headers that never finish (or trickle) get the connection closed on time;
a slow but timely body and a response that streams for longer than the timeout are served.

Nothing a timed-out client sent may reach the provider or leave a usage event ("none" is proved
with the sentinel of `events_with_sentinel`), and ordinary clients are served meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import aiohttp
import orjson
import pytest

from tests.harness import Gateway, running_gateway
from tests.helpers.raw_http import (
    CHAT,
    CHAT_BODY,
    SERVER,
    RawResponse,
    events_with_sentinel,
    http_request,
    raw_exchange,
)

TIMEOUT_S = 0.6
SLACK_S = 1.0  # the event loop's timers on a loaded CI machine
ROUTE = "/v1/chat/completions"


def slow_server() -> dict[str, Any]:
    return {"server": {**SERVER, "client_timeout_s": TIMEOUT_S}}


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length body, or b"" if the server closes first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    return head + await reader.readexactly(length)


async def send_and_dribble(
    gw: Gateway, head: bytes, trickle: bytes = b"", every_s: float = 0.1
) -> tuple[bytes, float]:
    """Send `head`, then `trickle` one byte every `every_s` (still going when the answer
    comes); return the answer (b"" when the server closed without one) and its seconds."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    started = time.monotonic()

    async def dribble() -> None:
        for byte in trickle:
            await asyncio.sleep(every_s)
            writer.write(bytes([byte]))

    dribbling = asyncio.create_task(dribble())
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(TIMEOUT_S + 5):
            received = await read_answer(reader)
    finally:
        dribbling.cancel()
        writer.close()
    return received, time.monotonic() - started


def parse(received: bytes) -> RawResponse:
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), f"no HTTP answer: {received[:200]!r}"
    return RawResponse(int(head.split(b" ", 2)[1]), head, body)


def announced_but_unsent(gw: Gateway, route: str) -> bytes:
    """Headers announcing a 100 000-byte body, then its first byte only."""
    return http_request(gw, "POST", route, b"{", b"Content-Length: 100000\r\n", length=False)


def timeout_problem(label: str, received: bytes, elapsed: float, *, anthropic: bool) -> str:
    """ "" if this is a 408 in the API's shape, with Connection: close, on time."""
    reply = parse(received)
    seen = f"{label}: {reply.status} after {elapsed:.2f}s {reply.head!r} {reply.body[:160]!r}"
    if reply.status != 408 or not TIMEOUT_S <= elapsed < TIMEOUT_S + SLACK_S:
        return seen
    headers = reply.head.lower()
    if b"\r\nconnection: close" not in headers or b"\r\nx-request-id: " not in headers:
        return seen
    error = orjson.loads(reply.body)
    if anthropic:
        shaped = error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    else:
        shaped = (
            error["error"]["code"] == "request_timeout"
            and error["error"]["type"] == "invalid_request_error"
        )
    return "" if shaped and error["error"]["message"] else seen


async def refused_408_count(gw: Gateway) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.base_url + "/metrics") as response,
    ):
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tollbooth_refused_requests_total{") and 'status="408"' in line
    )


async def test_a_stalled_or_trickling_body_gets_408_in_the_api_shape_and_reaches_nothing(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config=slow_server()
    ) as gw:
        chunked = (
            http_request(gw, "POST", ROUTE, b"", b"Transfer-Encoding: chunked\r\n", length=False)
            + b"40\r\n{"
        )
        cases = [  # label, what is sent at once, what is trickled after, anthropic
            ("openai, body stalled", announced_but_unsent(gw, ROUTE), b"", False),
            ("anthropic, body stalled", announced_but_unsent(gw, "/v1/messages"), b"", True),
            (
                "openai, body trickled past the deadline",
                announced_but_unsent(gw, ROUTE),
                b" " * 100,
                False,
            ),
            ("openai, chunked body stalled", chunked, b"", False),
        ] * 5
        # What is timed below is serving beside the slow clients, not a cold start: the key
        # is looked up once first. And this process carries the garbage of every test before
        # it: its collector runs now, not as a pause of a second inside the timed window.
        warm = await raw_exchange(gw, http_request(gw, "POST", ROUTE, CHAT_BODY))
        assert warm.status == 200
        gc.collect()
        gc.disable()
        try:
            stalled = [
                asyncio.create_task(send_and_dribble(gw, head, trickle))
                for _, head, trickle, _ in cases
            ]
            # Ordinary clients are served while the slow ones hold their connections.
            started = time.monotonic()
            replies = await asyncio.gather(
                *(raw_exchange(gw, http_request(gw, "POST", ROUTE, CHAT_BODY)) for _ in range(10))
            )
            served_in = time.monotonic() - started
        finally:
            gc.enable()
        assert [r.status for r in replies] == [200] * 10
        assert served_in < TIMEOUT_S
        results = await asyncio.gather(*stalled)
        problems = [
            timeout_problem(label, received, elapsed, anthropic=anthropic)
            for (label, _, _, anthropic), (received, elapsed) in zip(cases, results, strict=True)
        ]
        assert not [p for p in problems if p], "\n".join(p for p in problems if p)
        print(
            f"\n{len(cases)} slow clients: 408 after {min(e for _, e in results):.2f}"
            f"-{max(e for _, e in results):.2f}s (timeout {TIMEOUT_S}s); 10 ordinary "
            f"requests served meanwhile in {served_in:.2f}s"
        )
        assert len(gw.mock_requests) == 11  # the ordinary ones only: the first, then ten
        assert len(await events_with_sentinel(gw, 11)) == 11
        assert await refused_408_count(gw) == len(cases)


async def held_until_closed(gw: Gateway, head: bytes, trickle: bytes) -> tuple[bytes, float]:
    """Send `head`, trickle `trickle` a byte every 0.1 s; everything received until the
    server closed the connection (a reset counts as closed), and the seconds that took."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    started = time.monotonic()
    writer.write(head)
    received = b""

    async def dribble() -> None:
        for byte in trickle:
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))

    dribbling = asyncio.create_task(dribble())
    try:
        async with asyncio.timeout(TIMEOUT_S + 5):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    finally:
        dribbling.cancel()
        writer.close()
    return received, time.monotonic() - started


async def test_headers_that_never_finish_get_the_connection_closed(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's keep-alive timer, set to client_timeout_s, bounds the header phase: from the
    connection's opening, and from the end of the previous response on a reused connection."""
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config=slow_server()
    ) as gw:
        request_line = f"POST {ROUTE} HTTP/1.1\r\nHost: gateway\r\n".encode()
        keep_alive = http_request(gw, "POST", ROUTE, CHAT_BODY).replace(
            b"Connection: close\r\n", b""
        )
        cases = [
            ("silent connection", b"", b""),
            ("headers stalled", request_line, b""),
            ("headers trickled", request_line, b"X" * 100),
            ("second request's headers stalled", keep_alive + request_line, b""),
        ]
        results = await asyncio.gather(
            *(held_until_closed(gw, head, trickle) for _, head, trickle in cases)
        )
        for (label, _, _), (received, elapsed) in zip(cases, results, strict=True):
            print(f"\n{label}: closed after {elapsed:.2f}s, {len(received)} bytes answered")
            assert TIMEOUT_S <= elapsed < TIMEOUT_S + SLACK_S, (label, elapsed)
        # Closed without an answer, but for the reused connection's first (served) request.
        assert [received for received, _ in results[:3]] == [b"", b"", b""]
        assert parse(results[3][0]).status == 200
        assert len(gw.mock_requests) == 1
        assert len(await events_with_sentinel(gw, 1)) == 1


async def test_a_slow_timely_body_and_a_long_stream_are_served_whole(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, extra_config=slow_server()
    ) as gw:
        full = http_request(gw, "POST", ROUTE, CHAT_BODY)
        body_at = full.index(b"\r\n\r\n") + 4
        # The body in 4 pieces over 0.3 s: inside the deadline, so served.
        pieces = [full[body_at + i * 20 : body_at + (i + 1) * 20] for i in range(3)]
        rest = full[body_at + 60 :]
        reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
        writer.write(full[:body_at])
        for piece in pieces:
            await asyncio.sleep(0.1)
            writer.write(piece)
        writer.write(rest)
        async with asyncio.timeout(5):
            slow_body = parse(await reader.read())
        writer.close()
        assert slow_body.status == 200, slow_body.body[:300]
        # A response streaming for 20 x 60 ms, twice the timeout: never cut.
        streamed = await raw_exchange(
            gw,
            http_request(
                gw,
                "POST",
                ROUTE,
                orjson.dumps({**CHAT, "stream": True}),
                b"x-mock-token-delay-ms: 60\r\n",
            ),
        )
        assert streamed.status == 200
        assert b"data: [DONE]" in streamed.body, streamed.body[-200:]
        rows = await events_with_sentinel(gw, 2)
        assert [(r["status_code"], r["usage_source"]) for r in rows] == [(200, "provider")] * 2
