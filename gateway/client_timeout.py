"""The client read timeout: a request's body must arrive whole within `server.client_timeout_s`
of its headers, or the client gets a 408 (slow-loris defence).

This module is aiohttp's half, for the requests the fast front hands over; `gateway.front.server`
applies the same two deadlines (head, then body) to the requests it serves itself.

`client_timeout_middleware(timeout_s)` runs the handler under an `asyncio.timeout` armed when
the handler chain starts (the headers are in), unless the body is already complete. The moment
the body's last byte arrives (the payload stream's `on_eof`), the deadline is lifted: the rest
of the request, upstream call and streamed response included, is never bounded by it. If the
deadline passes first, the handler is cancelled where it waits (reading the body, as a rule)
and the middleware raises `RequestTimeoutError` (408, `Connection: close`), which
`middleware.error_middleware` renders in the called API's shape and counts as a refusal; it
must therefore sit *outside* this middleware.

The body is still read by the handler, after the key is checked, so an anonymous client's body
is never buffered here, and the handler's own reading errors (400 for bad framing, 413) stay
where they are. The proxy reads the whole body before anything goes upstream, so a timed-out
request reaches no provider, reserves no quota and records no usage event.

Failure semantics: a handler that is still waiting for its body at the deadline is cancelled;
one that answered without reading the body has returned already. After the 408, aiohttp's
lingering close reads and discards what the client still sends (up to its `lingering_time`,
10 s) before closing, so a client still uploading receives the 408 rather than a reset.

The header half of the defence is aiohttp's own (checked on 3.14.5; aio-libs/aiohttp#13681):
its `keepalive_timeout` timer runs from the moment a connection opens and from the end of each
response, and closes a connection whose next request's headers are not complete by then, even
if bytes keep trickling in (create_app passes `client_timeout_s` through `handler_args`). No
response is possible there: no request exists yet.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import RequestTimeoutError


def client_timeout_middleware(timeout_s: float) -> Middleware:
    """A middleware answering 408 to a request whose body is not complete `timeout_s` after
    its headers. Register it inside (after) `error_middleware`."""

    @web.middleware
    async def client_timeout(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = request.content
        if body.is_eof():  # no body, or all of it here already
            return await handler(request)
        deadline = asyncio.timeout(timeout_s)
        handling = True

        def body_complete() -> None:
            # Called by aiohttp when the body's last byte arrives, possibly after this
            # request was answered (aiohttp drains an unread body) or the deadline fired.
            if handling and not deadline.expired():
                deadline.reschedule(None)

        try:
            async with deadline:
                body.on_eof(body_complete)
                return await handler(request)
        except TimeoutError:
            if not deadline.expired():
                raise  # the handler's own timeout, not the client's
            raise RequestTimeoutError(
                f"The request body was not received within {timeout_s:g} seconds of its headers."
            ) from None
        finally:
            handling = False

    return client_timeout
