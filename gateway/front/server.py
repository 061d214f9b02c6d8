"""The fast front: the forwarded POST routes served straight off the socket; the rest to aiohttp.

Every connection starts in a `FrontProtocol`, which parses requests with httptools. A request
that is what SDKs send — `POST` to a forwarded route (its exact path: one dict lookup; a
templated path or a query string: `registry.match` after the lookup missed), HTTP/1.1, its
body framed by one `Content-Length` of at most `FAST_MAX_BODY`, no `Transfer-Encoding`,
`Content-Encoding`, `Expect` or `Upgrade`, a head under `MAX_HEAD` with CRLF line ends — is
run by the proxy (`proxy.prepare` and `proxy.forward`) with a `FrontReply` that writes the
response to the transport: no aiohttp request, response, router or middleware objects, and one
task per request. Anything else (another route or method, chunked or compressed bodies, large
bodies, HTTP/1.0, a head the parser rejects) is handed over: the connection's protocol becomes
aiohttp's `RequestHandler`, fed the bytes received since the current request began, and aiohttp
serves it, and every later request on that connection, with its full behaviour (413, 100-continue,
its 400s, the lingering close). A hand-over happens only between requests, before anything of
the current one was answered, so the client cannot tell.

While `server.cors_origins` lists origins, a CORS preflight (`OPTIONS` with `Origin` and
`Access-Control-Request-Method`, no body) to one of those routes is answered here too, and
every response the front writes carries the CORS headers of its request (`gateway.cors`); the
runtime snapshot is read per request, so a reload applies at once. While it is empty, the
cost on the POST path is one check.

The front keeps aiohttp's behaviour for what it serves itself:
- errors rendered and refusals counted by the functions aiohttp's middleware uses
  (`gateway.error_response`), so both servers answer an error with the same bytes; a bug
  answers 500 with no detail;
- `server.client_timeout_s`: a connection whose next request's head is not complete that long
  after it opened (or after the previous response) is closed; a body not complete that long
  after its head gets a 408 with `Connection: close`, then the connection is half-closed and
  what the client still sends is read and dropped for `LINGER_S` (so it reads the 408);
- keep-alive per HTTP/1.1 (`Connection: close` honoured), one request at a time: bytes of a
  pipelined request wait, reading paused past `MAX_PENDING`, until the response is written;
- back-pressure: a stream's writes wait while the transport's buffer is full;
- a client that leaves makes the stream's next write raise `ConnectionResetError` (the relay
  then drains the provider); a whole response to a gone client is dropped;
- shutdown (`pre_shutdown`, `shutdown`): idle connections close at once, busy ones after their
  response, within the runner's shutdown timeout.

`FrontRunner` is aiohttp's `AppRunner` with the front in front of the app's server (`serve`
and the test harness run it with the sites they would use anyway). Every private or
undocumented part of aiohttp the front relies on is reached through
`gateway.front.aiohttp_private`. This module holds the runner and the server (the protocol
factory, shutdown); one connection is `gateway.front.connection.FrontProtocol` (where
`MAX_HEAD`, `MAX_PENDING` and `LINGER_S` live), and its answers are
`gateway.front.reply.FrontReply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.web_server import Server

from gateway import keys
from gateway.front.aiohttp_private import WrappingRunner, server_arguments
from gateway.front.connection import FrontProtocol
from gateway.providers.base import Call
from gateway.providers.registry import FORWARDED, Route, match

FAST_MAX_BODY = 1024 * 1024  # larger bodies go to aiohttp, which streams them in


def fast_routes() -> dict[bytes, Route]:
    """The forwarded POST routes by exact path, aliases included (the table
    `app.create_app` registers with aiohttp too)."""
    return {
        path.encode(): (api, endpoint)
        for path, (api, endpoint) in FORWARDED.items()
        if endpoint.method == "POST"
    }


class FrontRunner(WrappingRunner):
    def wrap_server(self, inner: Server) -> Server:
        return FrontServer(inner, self.app)


class FrontServer(Server):
    """aiohttp's protocol factory whose connections start in the front."""

    def __init__(self, inner: Server, app: web.Application) -> None:
        handler, options = server_arguments(inner)  # the handlers `inner` would make
        super().__init__(handler, loop=asyncio.get_running_loop(), **options)
        self.app = app
        self.routes = fast_routes()
        self.runtime = app[keys.runtime]  # the live settings (server.cors_origins)
        server = app[keys.runtime].current.settings.server
        self.timeout_s = float(server.client_timeout_s)
        self.max_body = min(FAST_MAX_BODY, server.max_body_mb * 1024 * 1024)
        self.front: set[FrontProtocol] = set()
        self.stopping = False
        self._date = (0, "")
        self._settled = asyncio.Event()  # set when a connection finishes a response

    def match(self, url: bytes) -> tuple[Route, Call] | None:
        """A POST route `routes` misses: a templated path, or a path with a query string."""
        try:
            target = url.decode("ascii")
        except UnicodeDecodeError:
            return None  # not what an SDK sends: aiohttp's to answer
        found = match(target)
        if found is None or found[0][1].method != "POST":
            return None
        return found

    def http_date(self) -> str:
        """The `Date` header's value, formatted once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    def __call__(self) -> Any:  # a FrontProtocol; aiohttp types the factory's product
        return FrontProtocol(self)

    def aiohttp_protocol(self) -> asyncio.Protocol:
        return super().__call__()

    def pre_shutdown(self) -> None:
        self.stopping = True
        for conn in list(self.front):
            conn.close_if_idle()
        super().pre_shutdown()

    def settled(self) -> None:
        self._settled.set()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while any(conn.busy for conn in self.front):
                    self._settled.clear()
                    await self._settled.wait()
        for conn in list(self.front):
            conn.close()
        await super().shutdown(timeout)
