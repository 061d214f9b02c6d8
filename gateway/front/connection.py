"""One connection of the fast front (see gateway.front.server): parse with httptools, serve a plain
forwarded POST through the proxy (and, while CORS is on, a preflight to one of those routes),
hand anything else to aiohttp, keep the client timeouts."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict

from gateway import keys
from gateway.cors import origin_refused, preflight_headers, response_headers
from gateway.error_response import count_refusal, internal_error, render_error
from gateway.errors import GatewayError, RequestTimeoutError
from gateway.front.aiohttp_private import hand_over, set_nodelay
from gateway.front.reply import FrontReply
from gateway.providers.base import NO_CALL_DETAILS, Call, Endpoint
from gateway.proxy import forward, prepare

if TYPE_CHECKING:
    from gateway.front.server import FrontServer
    from gateway.providers.registry import Route

MAX_HEAD = 16 * 1024
MAX_PENDING = 256 * 1024  # bytes of a pipelined request held while one is answered
LINGER_S = 2.0
# Headers that may appear once (as aiohttp's parser has them), and those that make a request
# one for aiohttp.
_SINGLETONS = frozenset(
    {
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "etag",
        "host",
        "max-forwards",
        "server",
        "user-agent",
    }
)
_NOT_FAST = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade"})


class _Stop(Exception):
    """Raised from a parser callback to stop parsing (a request is whole, or goes to aiohttp)."""


class FrontProtocol(asyncio.Protocol):
    def __init__(self, server: FrontServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._raw = bytearray()  # from the current request's first byte on
        self.busy = False
        self._gone = False
        self._close_after = False
        self._discarding = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._new_message()

    def _new_message(self) -> None:
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._head_end = -1
        self._length = 0
        self._route: Route | None = None
        self._call = NO_CALL_DETAILS
        self._complete = False
        self._preflight = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        set_nodelay(self._transport)
        self._server.front.add(self)
        self._arm(self._server.timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._gone = True
        self._server.front.discard(self)
        self._server.settled()
        self._wake_writer()

    def eof_received(self) -> bool:
        # The client will send nothing more: answer a request already in, then close.
        self._close_after = True
        return self.busy

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._raw += data
        if self.busy:
            if len(self._raw) > MAX_PENDING and not self._reading_paused:
                self._reading_paused = True
                assert self._transport is not None
                self._transport.pause_reading()
            return
        if self._route is None and len(self._raw) > MAX_HEAD:
            self._hand_over()  # a head this large is aiohttp's to refuse (or serve)
            return
        self._feed(data)

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        route = self._fast_route()
        if route is None:
            raise _Stop
        self._route = route
        assert self._parser is not None  # callbacks come from its feed_data
        if not self._parser.should_keep_alive():
            self._close_after = True
        self._arm(self._server.timeout_s)  # the body's deadline

    def on_message_complete(self) -> None:
        self._complete = True
        raise _Stop

    # parsing

    def _fast_route(self) -> Route | None:
        parser = self._parser
        assert parser is not None  # called from its feed_data
        method = parser.get_method()
        if method != b"POST":
            return self._preflight_route() if method == b"OPTIONS" else None
        if parser.get_http_version() != "1.1":
            return None
        route = self._server.routes.get(self._url)
        if route is None:  # a templated route, or a query string: the slower match
            found = self._server.match(self._url)
            if found is None:
                return None
            route, self._call = found
        length: int | None = None
        singletons: set[str] = set()
        for name, value in self._headers:
            lower = name.lower()
            if lower in _SINGLETONS:
                if lower in singletons:
                    return None  # aiohttp refuses a repeated one (400)
                singletons.add(lower)
                if lower == "content-length":
                    if not (value.isascii() and value.isdigit()):
                        return None
                    length = int(value)
            elif lower in _NOT_FAST:
                return None
        if length is None or length > self._server.max_body or not self._find_head(b"POST "):
            return None
        self._length = length
        return route

    def _preflight_route(self) -> Route | None:
        """A CORS preflight to a forwarded route, served here while CORS is on; anything else
        (CORS off, another OPTIONS, a body) is aiohttp's, which answers it as it would."""
        assert self._parser is not None  # called from its feed_data
        if (
            self._parser.get_http_version() != "1.1"
            or not self._server.runtime.current.settings.server.cors_origins
        ):
            return None
        route = self._server.routes.get(self._url)
        if route is None:
            found = self._server.match(self._url)
            if found is None:
                return None
            route = found[0]
        seen: set[str] = set()
        for name, value in self._headers:
            lower = name.lower()
            if (
                (lower in seen and lower in _SINGLETONS)
                or lower in _NOT_FAST
                or (lower == "content-length" and value != "0")
            ):
                return None
            seen.add(lower)
        if (
            "origin" not in seen
            or "access-control-request-method" not in seen
            or not self._find_head(b"OPTIONS ")
        ):
            return None
        self._length = 0
        self._preflight = True
        return route

    def _find_head(self, start: bytes) -> bool:
        """Where the head ends (`_head_end`), if that is plain to find."""
        raw = self._raw
        if not raw.startswith(start):
            return False  # leading empty lines: where the head ends is not a plain find
        end = raw.find(b"\r\n\r\n")
        if end < 0 or end + 4 > MAX_HEAD:
            return False
        end += 4
        if raw.count(b"\n", 0, end) != raw.count(b"\r\n", 0, end):
            return False  # bare LF line ends: where the body starts is the parser's guess
        self._head_end = end
        return True

    def _feed(self, data: bytes) -> None:
        assert self._parser is not None  # None only while busy, when nothing is fed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._complete:
                self._dispatch()
            else:
                self._hand_over()
        except httptools.HttpParserError:
            self._hand_over()

    def _hand_over(self) -> None:
        """aiohttp serves this connection from the current request on."""
        transport = self._transport
        assert transport is not None
        self._server.front.discard(self)
        self._deadline = None
        self.busy = True  # this protocol is done; a late timer finds nothing to do
        raw, self._raw = bytes(self._raw), bytearray()
        hand_over(
            self._server.aiohttp_protocol(), transport, raw, resume_reading=self._reading_paused
        )

    def _dispatch(self) -> None:
        route = self._route
        assert route is not None
        start, end = self._head_end, self._head_end + self._length
        body = bytes(self._raw[start:end])
        del self._raw[:end]
        headers = CIMultiDict(self._headers)
        # Parsed: neither the parser nor the header list is used again before `_done` makes
        # new ones, and a stream keeps this connection busy for minutes.
        self._headers = []
        self._parser = None
        self.busy = True
        self._deadline = None
        if self._preflight:  # answered soon, not here: pipelined ones must not recurse
            self._loop.call_soon(self._answer_preflight, route, headers)
            return
        recorder = self._server.app[keys.recorder]
        recorder.spawn(self._serve(route, self._call, headers, body))

    # serving

    async def _serve(
        self, route: Route, call: Call, headers: CIMultiDict[str], body: bytes
    ) -> None:
        started = time.perf_counter()
        api, endpoint = route
        request_id = uuid.uuid4()
        origins = self._server.runtime.current.settings.server.cors_origins
        reply = FrontReply(self, response_headers(origins, headers) if origins else None)
        app = self._server.app

        async def read_body() -> bytes:
            return body

        try:
            pending = await prepare(
                app, api, endpoint, headers, read_body, request_id, started, call
            )
            # Read: neither is held while the response streams (`body` is also in
            # `read_body`'s cell, emptied by rebinding it).
            del headers
            body = b""
            await forward(app, api, endpoint, pending, reply)
        except GatewayError as exc:
            self._refuse(reply, endpoint.path, exc, request_id)
        except Exception:
            self._answer_error(reply, endpoint.path, internal_error(request_id), request_id)
        finally:
            self._done()

    def _answer_preflight(self, route: Route, headers: CIMultiDict[str]) -> None:
        """204 with the CORS headers, or 403 for an origin not allowed (gateway.cors)."""
        origins = self._server.runtime.current.settings.server.cors_origins
        allowed = preflight_headers(origins, headers)
        reply = FrontReply(self)
        if allowed is None:
            self._refuse(reply, route[1].path, origin_refused(), uuid.uuid4())
        else:
            reply.write_no_content(allowed)
        self._done()

    def _refuse(
        self, reply: FrontReply, path: str, exc: GatewayError, request_id: uuid.UUID
    ) -> None:
        """Answer an error a handler raised on `path` (a forwarded route's own path), counted
        if it is a refusal."""
        count_refusal(self._server.app[keys.metrics], path, exc)
        self._answer_error(reply, path, exc, request_id)

    def _answer_error(
        self, reply: FrontReply, path: str, exc: GatewayError, request_id: uuid.UUID
    ) -> None:
        """Answer `exc` as `render_error` renders it, or cut a stream already under way."""
        if reply.head_sent:  # a stream already under way: it can only be cut
            reply.flush_head()  # the client sees a cut 200, never a connection without answer
            self._close_after = True
            return
        answer = render_error(path, exc, request_id)
        headers = answer.headers
        if "connection" in headers:  # a 408's `close`: the reply writes Connection itself
            self._close_after = True
            headers = {name: value for name, value in headers.items() if name != "connection"}
        reply.write_whole(answer.status, headers, answer.body)

    def _done(self) -> None:
        """The response is written: next request, or close."""
        transport = self._transport
        assert transport is not None
        self._server.settled()
        if self._gone:
            return
        if self._close_after or self._server.stopping:
            transport.close()
            return
        self.busy = False
        self._new_message()
        self._arm(self._server.timeout_s)
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._raw:
            self._feed(bytes(self._raw))

    def close_if_idle(self) -> None:
        if not self.busy:
            self.close()

    def close(self) -> None:
        if self._transport is not None and not self._gone:
            self._transport.close()

    # the client timeout

    def _arm(self, seconds: float) -> None:
        self._deadline = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._gone or self.busy:
            return
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._deadline = None
        if self._route is None:  # no request, or its head incomplete: nothing to answer
            self.close()
            return
        self._time_out(self._route[1])

    def _time_out(self, endpoint: Endpoint) -> None:
        transport = self._transport
        assert transport is not None
        self.busy = True
        self._close_after = True
        exc = RequestTimeoutError(
            f"The request body was not received within {self._server.timeout_s:g} seconds "
            "of its headers."
        )
        origins = self._server.runtime.current.settings.server.cors_origins
        cors = response_headers(origins, CIMultiDict(self._headers)) if origins else None
        self._refuse(FrontReply(self, cors), endpoint.path, exc, uuid.uuid4())
        self._discarding = True
        self._raw.clear()
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_S, self.close)

    # writing

    def write(self, data: bytes) -> None:
        if self._gone or self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self._transport.write(data)

    @property
    def writing_paused(self) -> bool:
        """The client's socket buffer is full: `drain` would wait."""
        return self._writing_paused

    async def drain(self) -> None:
        if self._gone:
            raise ConnectionResetError("the client closed the connection")
        if not self._writing_paused:
            return
        waiter = self._loop.create_future()
        self._drain = waiter
        await waiter

    def _wake_writer(self) -> None:
        waiter, self._drain = self._drain, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def closing_after(self) -> bool:
        return self._close_after or self._server.stopping

    def http_date(self) -> str:
        return self._server.http_date()
