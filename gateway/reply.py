"""How the proxy answers its client, whichever server took the request.

The forwarded routes are served by two servers: the fast front (`gateway.front.server`) for the
plain requests SDKs send, and aiohttp for everything else (`gateway.front.server` hands it those
connections). The proxy writes its answer through a `Reply`, so one exchange logic serves both:
- `send(status, headers, body)`: a whole response (JSON, an error from the provider);
- `open_stream(status, headers)`: the head of a streamed response, returning the `StreamSink`
  the relay writes the body to, chunk by chunk.

A `StreamSink`'s `write` raises `ConnectionResetError` (or aiohttp's subclass of it, or
RuntimeError for a closed aiohttp response) once the client has gone; the relay treats that as
the client leaving and keeps draining the provider.

`AiohttpReply` is the aiohttp implementation: `send` builds the `web.Response` the handler
returns; `open_stream` prepares a `web.StreamResponse` (a client that left already is noticed
by the relay's first write).
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from aiohttp import web


class StreamSink(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def write_eof(self) -> None: ...


class Reply(Protocol):
    async def send(self, status: int, headers: dict[str, str], body: bytes) -> None: ...

    async def open_stream(self, status: int, headers: dict[str, str]) -> StreamSink: ...


class AiohttpReply:
    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.response: web.StreamResponse | None = None

    async def send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.response = web.Response(status=status, body=body, headers=headers)

    async def open_stream(self, status: int, headers: dict[str, str]) -> StreamSink:
        response = web.StreamResponse(status=status, headers=headers)
        self.response = response
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.prepare(self._request)
        return response
