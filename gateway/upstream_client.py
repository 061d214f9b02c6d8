"""`UpstreamClient`: the HTTP/1.1 client the proxy forwards with, lean enough for the hot path.

One request per call over a pool of keep-alive connections per origin (scheme, host, port),
TLS with the system's default verification for https. Responses are parsed by httptools
(llhttp, the parser Node.js uses): Content-Length, chunked and close-delimited bodies,
decoded from gzip or deflate when a provider compresses although asked for identity. The body
is handed out as it arrives (`iter_chunks`) or whole (`read`); reading pauses the socket when
the consumer falls behind (back-pressure, bounded memory per stream).

A stream can instead be pushed (`UpstreamResponse.push_to(consumer)`, identity encoding only):
each body chunk goes to `consumer.body` from the socket's own callback, with no task woken and
no future made per chunk, and the end of the body (or its failure, as the exception below)
to `consumer.end`, exactly once. The consumer applies back-pressure itself
(`pause_body` / `resume_body`). The read timeout is then one timer per stream, re-armed from
the time of the last data, instead of one per chunk; a paused body never times out.

Compared with aiohttp's client this skips cookie jars, redirects, tracing, proxies and
per-request objects the proxy never uses (docs/benchmarks.md has what the gateway costs per
request with it).

Failure semantics (translated by `gateway.upstream` into the gateway's errors):
- no connection within `connect_timeout_s`: `UpstreamConnectTimeout`; refused, reset or
  DNS failure before the response head: `UpstreamConnectError`;
- no response head within `read_timeout_s` of sending: `UpstreamReadTimeout`;
- after the head, the connection closing before the body's end, or a body that cannot be
  parsed or decoded: `UpstreamBodyError` (the stream was cut); no data for `read_timeout_s`:
  `UpstreamBodyTimeout`, a subclass;
- a request is never sent twice (not even on a pooled connection the provider closed at the
  same moment: that is a 502, as with aiohttp for a POST). Header values with CR or LF are
  refused with `UnsafeHeaderError` (a ValueError) before anything is sent.
A connection goes back to the pool only after a complete response the provider allows to be
kept alive; anything else closes it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

_PAUSE_BYTES = 256 * 1024  # buffered and not yet consumed: stop reading the socket
_MAX_IDLE_PER_ORIGIN = 256
_MAX_HEAD_BYTES = 64 * 1024
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())

Origin = tuple[str, str, int]


class UnsafeHeaderError(ValueError):
    """A header to forward holds CR, LF (or a colon in its name): never sent."""


class UpstreamError(Exception):
    """Base of what `UpstreamClient` raises; the message never holds a header or body."""


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamConnectTimeout(UpstreamError):
    pass


class UpstreamReadTimeout(UpstreamError):
    pass


class UpstreamBodyError(UpstreamError):
    pass


class UpstreamBodyTimeout(UpstreamBodyError):
    pass


class BodyConsumer(Protocol):
    """Receives a pushed body (`UpstreamResponse.push_to`). Both are called from the event
    loop's socket callback and must not block; `body` must not raise."""

    def body(self, data: bytes) -> None: ...

    def end(self, error: UpstreamError | None) -> None:
        """The body ended (None) or failed (the error); called once, last."""
        ...


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[Origin, str, bytes]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = port == (443 if parts.scheme == "https" else 80)
    host = parts.hostname if default else f"{parts.hostname}:{port}"
    if ":" in parts.hostname and not parts.hostname.startswith("["):  # IPv6 literal
        host = f"[{parts.hostname}]" if default else f"[{parts.hostname}]:{port}"
    return (parts.scheme, parts.hostname, port), target, host.encode("idna")


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise `UnsafeHeaderError` if a header could not be sent as one header line."""
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise UnsafeHeaderError("a header name or value holds CR, LF or a colon")


def _head(
    method: str, target: str, host: bytes, headers: Mapping[str, str], body_length: int
) -> bytes:
    check_headers(headers)
    lines = [f"{method} {target} HTTP/1.1\r\n".encode(), b"Host: " + host + b"\r\n"]
    for name, value in headers.items():
        lower = name.lower()
        if lower in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        # The bytes the client sent: aiohttp decodes header bytes as UTF-8 with
        # surrogateescape, so this gives back exactly what arrived.
        lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    lines.append(b"Content-Length: %d\r\n\r\n" % body_length)
    return b"".join(lines)


class _Decoder:
    def __init__(self, encoding: str) -> None:
        self._gzip = encoding == "gzip" or encoding == "x-gzip"
        wbits = 16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)
        self._first = True

    def feed(self, data: bytes) -> bytes:
        if self._first and not self._gzip:
            self._first = False
            try:
                return self._z.decompress(data)
            except zlib.error:  # "deflate" sent as a raw stream, as some servers do
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._z.decompress(data)

    def flush(self) -> bytes:
        return self._z.flush()


class _Connection(asyncio.Protocol):
    """One socket; one response at a time."""

    def __init__(self, client: UpstreamClient, origin: Origin) -> None:
        self._client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._head: asyncio.Future[None] | None = None
        # Body chunks not yet read (`next_chunk`); made on first use: an empty deque is
        # 760 bytes, and a pushed stream never buffers.
        self._chunks: collections.deque[bytes] | None = None
        self._buffered = 0
        self._paused = False
        self._complete = False
        self._error: UpstreamError | None = None
        self._wake: asyncio.Future[None] | None = None
        self.status = 0
        self.keep_alive = False
        # Push mode (`push_to`): the consumer, its pause, and the idle-body watchdog.
        self._consumer: BodyConsumer | None = None
        self._consumer_paused = False
        self._idle_s = 0.0
        self._last_data = 0.0
        self._clock: Callable[[], float] = time.monotonic  # the loop's clock once pushing
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self._head is None:  # idle in the pool: anything now is a protocol error
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamBodyError("the provider's response could not be parsed"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._client._forget(self)
        if self._head is not None and not self._complete:
            if not self._head.done():
                self._fail(UpstreamConnectError("the provider closed the connection"))
            else:
                self._fail(UpstreamBodyError("the provider closed the connection mid-body"))

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise httptools.HttpParserError("response head too large")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        consumer = self._consumer
        if consumer is not None:
            self._last_data = self._clock()
            consumer.body(body)
            return
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = collections.deque()
        chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wakeup()

    def on_message_complete(self) -> None:
        self._complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wakeup()
        self._end_push(None)

    # -- used by UpstreamClient / UpstreamResponse -------------------------------------

    def start(self, data: bytes) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._head_bytes = 0
        self._chunks = None
        self._buffered = 0
        self._complete = False
        self._error = None
        self.status = 0
        self.stop_push()
        self._head = loop.create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self._head

    def take_headers(self) -> list[tuple[str, str]]:
        """The response head's headers, handed over (the connection keeps no copy: a stream
        holds its connection for minutes)."""
        headers, self._headers = self._headers, []
        return headers

    async def next_chunk(self, timeout_s: float) -> bytes | None:
        """The next body bytes as received; None at the end of the body."""
        while True:
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= _PAUSE_BYTES // 2:
                    self._paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._wake
            except TimeoutError:
                raise UpstreamBodyTimeout(f"no data from the provider for {timeout_s:g}s") from None
            finally:
                self._wake = None

    def push_to(self, consumer: BodyConsumer, idle_s: float) -> None:
        """Hand the body to `consumer` from now on: what is buffered first, then each chunk
        as it arrives. Fails with `UpstreamBodyTimeout` after `idle_s` without data."""
        chunks, self._chunks = self._chunks, None
        while chunks:
            chunk = chunks.popleft()
            self._buffered -= len(chunk)
            consumer.body(chunk)
        if self._error is not None or self._complete:
            consumer.end(self._error)
            return
        self._consumer = consumer
        self._idle_s = idle_s
        self._clock = asyncio.get_running_loop().time  # bound once: read per chunk
        self._last_data = self._clock()
        self._arm_watchdog()
        self._paused = False  # nothing is buffered any more: only the consumer pauses
        self._set_reading()

    def pause_body(self) -> None:
        self._consumer_paused = True
        self._set_reading()

    def resume_body(self) -> None:
        self._consumer_paused = False
        self._last_data = self._clock()  # idle counts from now
        self._set_reading()

    def stop_push(self) -> None:
        """No more calls to the consumer (it has finished with the body); its pause ends,
        so a connection that goes back to the pool reads again."""
        self._consumer = None
        if self._consumer_paused:
            self._consumer_paused = False
            self._set_reading()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _set_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if self._consumer_paused or self._paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_at(self._last_data + self._idle_s, self._check_idle)

    def _check_idle(self) -> None:
        self._watchdog = None
        if self._consumer is None:
            return
        now = asyncio.get_running_loop().time()
        if self._consumer_paused:
            self._last_data = now  # paused by the consumer: the provider is not idle
        elif now - self._last_data >= self._idle_s:
            self._fail(UpstreamBodyTimeout(f"no data from the provider for {self._idle_s:g}s"))
            return
        self._arm_watchdog()

    def _end_push(self, error: UpstreamError | None) -> None:
        consumer = self._consumer
        if consumer is not None:
            self.stop_push()
            consumer.end(error)

    @property
    def reusable(self) -> bool:
        return (
            self._complete
            and self.keep_alive
            and not self.closed
            and self._error is None
            and not self._chunks
        )

    def idle(self) -> None:
        self._head = None
        self.stop_push()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: the awaiting request re-raises it
        self._wakeup()
        self._end_push(self._error)

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


class UpstreamResponse:
    """A response whose head has arrived; its body is read with `read` or `iter_chunks`.
    Use `async with` (or `release()`) so the connection is pooled or closed."""

    def __init__(
        self, connection: _Connection, client: UpstreamClient, read_timeout_s: float
    ) -> None:
        self._connection = connection
        self._client = client
        self._read_timeout_s = read_timeout_s
        self.status = connection.status
        head = CIMultiDict(connection.take_headers())
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(head)
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            self._decoder: _Decoder | None = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = _Decoder(encoding)
        else:
            self._decoder = None
            self._unsupported = encoding
        self._released = False
        self._ended = False
        self._pushed = False

    @property
    def pushable(self) -> bool:
        """Whether `push_to` may be used: the body is sent as is (no content encoding)."""
        return self._decoder is None and not getattr(self, "_unsupported", None)

    def push_to(self, consumer: BodyConsumer) -> None:
        """Push the body to `consumer` (see the module docstring); only if `pushable`."""
        assert self.pushable
        self._pushed = True
        self._connection.push_to(consumer, self._read_timeout_s)

    def pause_body(self) -> None:
        """Stop reading the socket (chunks already parsed may still be pushed)."""
        self._connection.pause_body()

    def resume_body(self) -> None:
        self._connection.resume_body()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if getattr(self, "_unsupported", None):
            raise UpstreamBodyError(f"unsupported content encoding {self._unsupported!r}")
        decoder = self._decoder
        while True:
            chunk = await self._connection.next_chunk(self._read_timeout_s)
            if chunk is None:
                break
            if decoder is not None:
                try:
                    chunk = decoder.feed(chunk)
                except zlib.error:
                    raise UpstreamBodyError("the provider's compressed body is corrupt") from None
            if chunk:
                yield chunk
        self._ended = True
        if decoder is not None:
            try:
                tail = decoder.flush()
            except zlib.error:
                raise UpstreamBodyError("the provider's compressed body is corrupt") from None
            if tail:
                yield tail

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def abort(self) -> None:
        """Close the connection now (the drain cuts an exchange): a read in progress, or the
        next, raises `UpstreamBodyError`; the connection is never pooled again."""
        self._connection._fail(UpstreamBodyError("the gateway cut the response (drain)"))
        self._connection.close()

    def forget_headers(self) -> None:
        """Drop the head's headers once the caller has read them (a stream keeps its
        response for minutes); `headers` is empty from then on."""
        self.headers = _NO_HEADERS

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._connection.stop_push()
        # A pushed body was all delivered if it completed (`reusable` checks that).
        self._client._give_back(self._connection, self._ended or self._pushed)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()


class UpstreamClient:
    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse:
        """Send the request; return once the response head has arrived."""
        origin, target, host = _split(url)
        data = _head(method, target, host, headers, len(body or b"")) + (body or b"")
        connection = self._take_idle(origin) or await self._connect(origin)
        head = connection.start(data)
        try:
            async with asyncio.timeout(self.read_timeout_s):
                await head
        except TimeoutError:
            connection.close()
            raise UpstreamReadTimeout(
                f"no response head from the provider within {self.read_timeout_s:g}s"
            ) from None
        except BaseException:
            connection.close()
            raise
        return UpstreamResponse(connection, self, self.read_timeout_s)

    async def close(self) -> None:
        for connection in list(self._all):
            connection.close()
        self._idle.clear()
        self._all.clear()

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, hostname, port = origin
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    hostname,
                    port,
                    ssl=context,
                    server_hostname=hostname if context is not None else None,
                )
        except TimeoutError:
            raise UpstreamConnectTimeout(
                f"could not connect to the provider within {self.connect_timeout_s:g}s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(
                f"could not connect to the provider ({type(exc).__name__})"
            ) from None
        self._all.add(protocol)
        return protocol

    def _give_back(self, connection: _Connection, body_read: bool) -> None:
        if body_read and connection.reusable:
            connection.idle()
            idle = self._idle.setdefault(connection.origin, [])
            if len(idle) < _MAX_IDLE_PER_ORIGIN:
                idle.append(connection)
                return
        connection.close()

    def _forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
