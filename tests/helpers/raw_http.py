"""Raw HTTP/1.1 against a test gateway, below any client library: a request written as bytes,
sent on its own connection and read until the server closes it, and the sentinel request
that proves how many usage events the requests before it left. A helper that fails raises
AssertionError."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from tests.harness import Gateway

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}
CHAT_BODY = orjson.dumps(CHAT)
MESSAGE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hello there"}],
}
SERVER = {"host": "127.0.0.1", "port": 0, "disconnect_drain_s": 5, "max_body_mb": 1}


@dataclass(frozen=True)
class RawResponse:
    status: int
    head: bytes
    body: bytes


def http_request(
    gw: Gateway,
    method: str,
    target: str,
    body: bytes = b"",
    headers: bytes = b"",
    *,
    key: str | None = None,
    anonymous: bool = False,
    length: bool = True,
) -> bytes:
    """One HTTP/1.1 request as bytes, with `key` (default: the gateway's) unless anonymous."""
    key = gw.key if key is None else key
    auth = b"" if anonymous else b"Authorization: Bearer " + key.encode() + b"\r\n"
    size = b"Content-Length: %d\r\n" % len(body) if length else b""
    return (
        method.encode()
        + b" "
        + target.encode()
        + b" HTTP/1.1\r\nHost: gateway\r\n"
        + auth
        + b"Content-Type: application/json\r\nanthropic-version: 2023-06-01\r\n"
        + headers
        + size
        + b"Connection: close\r\n\r\n"
        + body
    )


async def raw_exchange(gw: Gateway, data: bytes, *, timeout_s: float = 5.0) -> RawResponse:
    """Send `data` on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            received = await reader.read()
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), f"not an HTTP response: {received[:200]!r}"
    return RawResponse(int(head.split(b" ", 2)[1]), head, body)


async def events_with_sentinel(gw: Gateway, forwarded: int) -> list[Any]:
    """The events written so far, which must be exactly `forwarded` (none lost, none doubled).

    A sentinel request goes through last; once its event is in the table every earlier one is.
    Returns the events without the sentinel's."""
    reply = await raw_exchange(gw, http_request(gw, "POST", "/v1/chat/completions", CHAT_BODY))
    assert reply.status == 200, reply.body[:300]
    rows = await gw.events(wait_for=forwarded + 1)
    await asyncio.sleep(0.3)  # anything doubled by a retry would land now
    rows = await gw.events(wait_for=forwarded + 1)
    assert len(rows) == forwarded + 1, [(r["endpoint"], r["status_code"]) for r in rows]
    assert len({row["id"] for row in rows}) == len(rows)
    return rows[:-1]
