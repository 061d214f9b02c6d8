"""The private and undocumented aiohttp API the fast front relies on is still there and still
behaves as `gateway.front.aiohttp_private` says: each test checks one of the five points of its
docstring against the installed aiohttp and, when it fails, says what changed. The last test
checks the one the test harness adds (`TestServer._make_runner`, how `tests.harness` serves a
gateway through the front).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_protocol import RequestHandler

from gateway.front.aiohttp_private import (
    WrappingRunner,
    hand_over,
    server_arguments,
    set_nodelay,
)


def changed(what: str) -> str:
    return (
        f"aiohttp {aiohttp.__version__} changed: {what}. The fast front relies on it; bring "
        "gateway/front/aiohttp_private.py (and its docstring) in line with the new aiohttp."
    )


async def hello(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="hello from aiohttp")


def hello_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    return app


class Recorded(web.Server):
    """A server that notes the calls the runner makes to it at cleanup."""

    def __init__(self, inner: web.Server, calls: list[tuple[Any, ...]]) -> None:
        handler, options = server_arguments(inner)
        super().__init__(handler, loop=asyncio.get_running_loop(), **options)
        self.calls = calls

    def pre_shutdown(self) -> None:
        self.calls.append(("pre_shutdown",))
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's
        self.calls.append(("shutdown", timeout))
        await super().shutdown(timeout)


class RecordingRunner(WrappingRunner):
    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.inner: web.Server | None = None
        self.calls: list[tuple[Any, ...]] = []

    def wrap_server(self, inner: web.Server) -> web.Server:
        self.inner = inner
        return Recorded(inner, self.calls)


def test_the_runner_builds_its_server_in_make_server() -> None:
    make_server = getattr(web.AppRunner, "_make_server", None)
    assert make_server is not None, changed("web.AppRunner has no _make_server method")
    assert inspect.iscoroutinefunction(make_server), changed(
        "web.AppRunner._make_server is no longer a coroutine function"
    )
    assert list(inspect.signature(make_server).parameters) == ["self"], changed(
        f"web.AppRunner._make_server takes {inspect.signature(make_server)}, not (self)"
    )


async def test_setup_serves_with_the_server_make_server_returns() -> None:
    runner = RecordingRunner(hello_app())
    await runner.setup()
    try:
        assert runner.inner is not None, changed("AppRunner.setup() no longer calls _make_server")
        assert isinstance(runner.server, Recorded), changed(
            "AppRunner.setup() no longer serves with the server _make_server returns"
        )
    finally:
        await runner.cleanup()


def test_the_server_takes_its_handler_arguments_as_keywords() -> None:
    parameters = inspect.signature(web.Server.__init__).parameters
    expected = {
        "handler": inspect.Parameter.POSITIONAL_OR_KEYWORD,
        "request_factory": inspect.Parameter.KEYWORD_ONLY,
        "handler_cancellation": inspect.Parameter.KEYWORD_ONLY,
        "loop": inspect.Parameter.KEYWORD_ONLY,
        "kwargs": inspect.Parameter.VAR_KEYWORD,
    }
    found = {name: p.kind for name, p in parameters.items() if name != "self"}
    assert found == expected, changed(f"web.Server.__init__ is now {inspect.signature(web.Server)}")


async def test_a_rebuilt_server_makes_the_handlers_of_the_runners(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = RecordingRunner(
        hello_app(), keepalive_timeout=12.5, max_line_size=9000, handler_cancellation=True
    )
    await runner.setup()
    try:
        inner, rebuilt = runner.inner, runner.server
        assert inner is not None and rebuilt is not None
        for name in ("_kwargs", "request_handler", "request_factory", "handler_cancellation"):
            assert hasattr(inner, name), changed(f"web.Server has no attribute {name}")
        assert isinstance(inner._kwargs, dict), changed("web.Server._kwargs is not a dict")
        assert {"keepalive_timeout": 12.5, "max_line_size": 9000}.items() <= (
            inner._kwargs.items()
        ), changed(f"web.Server._kwargs no longer holds the runner's handler args: {inner._kwargs}")
        assert inner.handler_cancellation is True, changed(
            "web.Server.handler_cancellation no longer holds the runner's handler_cancellation"
        )
        assert rebuilt._kwargs == inner._kwargs, changed("server_arguments lost handler args")
        assert rebuilt.request_handler == inner.request_handler
        assert rebuilt.request_factory == inner.request_factory
        assert rebuilt.handler_cancellation is True
        with caplog.at_level(logging.WARNING):
            handler = rebuilt()
        assert isinstance(handler, RequestHandler), changed(
            "calling a web.Server no longer gives a web_protocol.RequestHandler"
        )
        assert not caplog.records, changed(
            "RequestHandler refused the handler args a web.Server keeps in _kwargs: "
            + "; ".join(record.getMessage() for record in caplog.records)
        )
    finally:
        await runner.cleanup()


async def test_cleanup_pre_shuts_down_then_shuts_down_with_the_timeout() -> None:
    runner = RecordingRunner(hello_app(), shutdown_timeout=1.5)
    await runner.setup()
    await runner.cleanup()
    assert runner.calls == [("pre_shutdown",), ("shutdown", 1.5)], changed(
        f"AppRunner.cleanup() called the server's {runner.calls}, not pre_shutdown() then "
        "shutdown(shutdown_timeout)"
    )


@asynccontextmanager
async def connected(
    protocol: Callable[[], asyncio.Protocol],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A loopback listener whose connections start in `protocol`, and one client of it; the
    body of the `async with` has ten seconds."""
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(protocol, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            yield reader, writer
    finally:
        writer.close()
        listener.close()
        await listener.wait_closed()


async def test_a_request_handler_takes_over_an_open_connection() -> None:
    """The first bytes of a request are read by another protocol, which then hands the
    connection over: aiohttp tracks the connection and answers the whole request."""
    server = web.Server(hello)
    handed = asyncio.get_running_loop().create_future()

    class Reader(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            assert isinstance(self.transport, asyncio.Transport)
            hand_over(server(), self.transport, data, resume_reading=False)
            handed.set_result(None)

    try:
        async with connected(Reader) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            await handed
            assert len(server.connections) == 1, changed(
                "RequestHandler.connection_made no longer registers the connection with its server"
            )
            writer.write(b"Connection: close\r\n\r\n")
            response = await reader.read()
    finally:
        await server.shutdown(1)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n"), changed(
        f"a RequestHandler given an open connection answered {response[:80]!r}"
    )
    assert response.endswith(b"hello from aiohttp"), changed(
        "a RequestHandler given an open connection lost the bytes read before"
    )


async def test_set_nodelay_sets_tcp_nodelay() -> None:
    seen = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            set_nodelay(transport)
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async with connected(Probe):
        assert await seen, changed("aiohttp.tcp_helpers.tcp_nodelay no longer sets TCP_NODELAY")


async def test_the_test_server_serves_with_the_runner_make_runner_returns() -> None:
    class Wrapped(TestServer):
        async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
            return RecordingRunner(self.app, **kwargs)

    make_runner = getattr(TestServer, "_make_runner", None)
    assert make_runner is not None and inspect.iscoroutinefunction(make_runner), changed(
        "aiohttp.test_utils.TestServer._make_runner is gone or no longer a coroutine function"
    )
    server = Wrapped(hello_app(), host="127.0.0.1")
    await server.start_server()
    try:
        assert isinstance(server.runner, RecordingRunner), changed(
            "TestServer.start_server() no longer serves with the runner _make_runner returns"
        )
        async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as got:
            assert await got.text() == "hello from aiohttp"
    finally:
        await server.close()
