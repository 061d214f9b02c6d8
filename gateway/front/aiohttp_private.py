"""Every use the fast front makes of aiohttp's private or undocumented API, in one place.

aiohttp has no public hook to put another protocol in front of its server, so the front
(`gateway.front.server`, `gateway.front.connection`) relies on what aiohttp 3.14 does inside:

1. `web.AppRunner._make_server()` (private): `setup()` builds the runner's `web.Server` there and
   keeps what it returns as `runner.server`, the protocol factory its sites listen with.
   `WrappingRunner` overrides it to wrap that server.
2. `web.Server._kwargs` (private), `request_handler`, `request_factory` and
   `handler_cancellation` (undocumented attributes), and `web.Server(handler, *,
   request_factory, handler_cancellation, loop, **kwargs)`: the arguments a server was built
   with, the `**kwargs` being the handler arguments (access log, keep-alive timeout, header
   limits...) each `RequestHandler` gets. `server_arguments` reads them so the front's server
   makes the very handlers the runner's would.
3. A `RequestHandler` (what calling a `web.Server` gives) takes over a connection that is
   already open and read from (`hand_over`): `transport.set_protocol(handler)`,
   `handler.connection_made(transport)`, then `handler.data_received(the bytes read)`. Its
   `connection_made` registers it with the server, so the runner's shutdown closes it.
4. The runner's `cleanup()` calls `server.pre_shutdown()` (undocumented), closes its sites, then
   awaits `server.shutdown(shutdown_timeout)`; the front's server overrides both to close its
   own connections.
5. `aiohttp.tcp_helpers.tcp_nodelay` (an internal module): `set_nodelay` calls it.

How it fails: an aiohttp that drops or renames one of these makes the runner's `setup()` (or
the first hand-over) raise `AttributeError` or `TypeError`; one that keeps the names but
changes what they do could break the front quietly. `tests/test_front_aiohttp.py` checks each
point against the installed aiohttp, by signature and by behaviour, and names the one that
changed: an upgrade that fails it needs this module brought in line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.tcp_helpers import tcp_nodelay

__all__ = ["RequestHandler", "WrappingRunner", "hand_over", "server_arguments", "set_nodelay"]

RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class WrappingRunner(web.AppRunner):
    """An `AppRunner` whose server is `wrap_server(the server aiohttp built)`."""

    async def _make_server(self) -> web.Server:
        return self.wrap_server(await super()._make_server())

    def wrap_server(self, inner: web.Server) -> web.Server:
        return inner


def server_arguments(inner: web.Server) -> tuple[RequestHandler, dict[str, Any]]:
    """The handler and keyword arguments `inner` was built with, to build its like:
    `web.Server(handler, loop=..., **kwargs)`."""
    return inner.request_handler, {
        "request_factory": inner.request_factory,
        "handler_cancellation": inner.handler_cancellation,
        **inner._kwargs,  # the RequestHandler arguments, kept there by aiohttp
    }


def set_nodelay(transport: asyncio.Transport) -> None:
    """Disable Nagle's algorithm on `transport`'s socket, as aiohttp does on its own."""
    tcp_nodelay(transport, True)


def hand_over(
    handler: asyncio.Protocol,
    transport: asyncio.Transport,
    received: bytes,
    *,
    resume_reading: bool,
) -> None:
    """`handler` (a `RequestHandler` fresh from a `web.Server`) serves `transport` from now on,
    starting with `received`, the bytes read from it since the current request began.
    `resume_reading`: reading was paused, and `handler` reads again."""
    transport.set_protocol(handler)
    handler.connection_made(transport)
    if resume_reading:
        transport.resume_reading()
    if received:
        handler.data_received(received)
