"""How the fast front answers: a response's bytes on the connection (`proxy.Reply`)."""

from __future__ import annotations

import asyncio
import contextlib
from http import HTTPStatus
from typing import TYPE_CHECKING

from gateway.reply import StreamSink

if TYPE_CHECKING:
    from gateway.front.connection import FrontProtocol


class FrontReply:
    """`proxy.Reply` for the front: the response as bytes on the connection. `cors`: the
    CORS headers every response of this request carries (`gateway.cors`), or None."""

    def __init__(self, conn: FrontProtocol, cors: dict[str, str] | None = None) -> None:
        self._conn = conn
        self._cors = cors
        self.head_sent = False
        self._head = b""  # a stream's head, not written yet: it goes with the first chunk

    async def send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.write_whole(status, headers, body)

    def write_whole(self, status: int, headers: dict[str, str], body: bytes) -> None:
        head = _head(
            status,
            headers,
            self._conn.closing_after,
            f"Content-Length: {len(body)}\r\n",
            self._conn.http_date(),
            self._cors,
        )
        self.head_sent = True
        with contextlib.suppress(ConnectionResetError):  # gone; the exchange is recorded anyway
            self._conn.write(head + body)

    def write_no_content(self, headers: dict[str, str]) -> None:
        """A 204: no body and, as RFC 9110 requires, no Content-Length."""
        head = _head(204, headers, self._conn.closing_after, "", self._conn.http_date(), None)
        self.head_sent = True
        with contextlib.suppress(ConnectionResetError):
            self._conn.write(head)

    async def open_stream(self, status: int, headers: dict[str, str]) -> StreamSink:
        head = _head(
            status,
            headers,
            self._conn.closing_after,
            "Transfer-Encoding: chunked\r\n",
            self._conn.http_date(),
            self._cors,
        )
        self.head_sent = True
        # The head waits for the end of this loop turn: the upstream's first events usually
        # came with its head and are relayed in this turn, so the client gets the head and
        # the first event in one write (one send, and the first event no later).
        self._head = head
        asyncio.get_running_loop().call_soon(self.flush_head)
        return self

    def flush_head(self) -> None:
        """Write a stream's head now if it is still held (before the connection is cut)."""
        head, self._head = self._head, b""
        if head:
            with contextlib.suppress(ConnectionResetError):  # noticed by the relay's next write
                self._conn.write(head)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self.write_now(data)
        await self._conn.drain()

    def write_now(self, data: bytes) -> bool:
        """`gateway.relay_push.PushSink`: one body chunk, written at once; False when the
        client's buffer is full (wait for `writable` before writing more)."""
        chunk = b"%b%x\r\n%b\r\n" % (self._head, len(data), data)
        self._head = b""
        self._conn.write(chunk)
        return not self._conn.writing_paused

    async def writable(self) -> None:
        await self._conn.drain()

    async def write_eof(self) -> None:
        last, self._head = self._head + b"0\r\n\r\n", b""
        self._conn.write(last)


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _head(
    status: int,
    headers: dict[str, str],
    close: bool,
    framing: str,
    date: str,
    cors: dict[str, str] | None,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n",
        f"Date: {date}\r\n",
        framing,
    ]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n")
    if cors is not None:  # lines of their own: a provider's Vary stays beside ours
        lines.extend(f"{name}: {value}\r\n" for name, value in cors.items())
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")
