"""The forwarding client against real servers on loopback: an aiohttp app for well-formed
HTTP (JSON, chunked streams, gzip, keep-alive, TLS) and a raw socket server for the broken
kind (a reset before the head, a body cut short, silence). Bodies are read both ways: pulled
(`iter_chunks`, `read`) and pushed to a consumer (`push_to`)."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.upstream_client import (
    UnsafeHeaderError,
    UpstreamBodyError,
    UpstreamBodyTimeout,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamReadTimeout,
    UpstreamResponse,
)

BODY = b'{"model":"gpt-4o-mini","messages":[]}'


def client(**kw: float) -> UpstreamClient:
    return UpstreamClient(
        connect_timeout_s=kw.get("connect", 2.0), read_timeout_s=kw.get("read", 2.0)
    )


async def echo(request: web.Request) -> web.Response:
    data = await request.read()
    return web.json_response(
        {
            "path": request.path_qs,
            "body": data.decode(),
            "auth": request.headers.get("Authorization"),
            "host": request.headers.get("Host"),
            "peer": request.transport.get_extra_info("peername")[1] if request.transport else None,
        }
    )


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(5):
        await response.write(f"data: {i}\n\n".encode())
        await asyncio.sleep(0.01)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(b'{"usage": 1}' * 1000),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def raw_deflate(request: web.Request) -> web.Response:
    z = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return web.Response(
        body=z.compress(b"raw deflate body") + z.flush(), headers={"Content-Encoding": "deflate"}
    )


async def big(request: web.Request) -> web.Response:
    return web.Response(body=bytes(range(256)) * 8192)  # 2 MiB


@pytest.fixture
async def app_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/stream", stream)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/deflate", raw_deflate)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(script: Script) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/x"


async def test_a_json_answer_arrives_whole_with_our_headers_and_body(app_url: str) -> None:
    c = client()
    async with await c.request(
        "POST", app_url + "/echo?a=1", {"Authorization": "Bearer k"}, BODY
    ) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("application/json")
        echoed = json.loads(await response.read())
    assert echoed["path"] == "/echo?a=1" and echoed["body"] == BODY.decode()
    assert echoed["auth"] == "Bearer k" and echoed["host"] == app_url.removeprefix("http://")
    await c.close()


async def test_keep_alive_connections_are_reused(app_url: str) -> None:
    c = client()
    peers = set()
    for _ in range(5):
        async with await c.request("POST", app_url + "/echo", {}, BODY) as response:
            peers.add(json.loads(await response.read())["peer"])
    assert len(peers) == 1  # one connection, five requests
    await c.close()


async def test_a_chunked_stream_arrives_as_it_is_written(app_url: str) -> None:
    c = client()
    async with await c.request("POST", app_url + "/stream", {}, BODY) as response:
        chunks = [chunk async for chunk in response.iter_chunks()]
    assert (
        b"".join(chunks)
        == b"".join(f"data: {i}\n\n".encode() for i in range(5)) + b"data: [DONE]\n\n"
    )
    assert len(chunks) >= 5  # not buffered into one piece
    await c.close()


async def test_gzip_and_raw_deflate_bodies_are_decoded(app_url: str) -> None:
    c = client()
    async with await c.request("GET", app_url + "/gzip", {}, None) as response:
        assert await response.read() == b'{"usage": 1}' * 1000
    async with await c.request("GET", app_url + "/deflate", {}, None) as response:
        assert await response.read() == b"raw deflate body"
    await c.close()


async def test_a_large_body_is_read_exactly_through_back_pressure(app_url: str) -> None:
    c = client()
    async with await c.request("GET", app_url + "/big", {}, None) as response:
        received = bytearray()
        async for chunk in response.iter_chunks():
            received += chunk
            await asyncio.sleep(0)  # a slow consumer
    assert bytes(received) == bytes(range(256)) * 8192
    await c.close()


async def test_a_reset_before_the_head_is_a_connect_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    server, url = await raw_server(hang_up)
    c = client()
    with pytest.raises(UpstreamConnectError):
        await c.request("POST", url, {}, BODY)
    server.close()
    await c.close()


async def test_a_refused_connection_is_a_connect_error() -> None:
    c = client()
    with pytest.raises(UpstreamConnectError):
        await c.request("POST", "http://127.0.0.1:1/v1/x", {}, BODY)
    await c.close()


async def test_no_head_within_the_read_timeout_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1)

    server, url = await raw_server(silent)
    c = client(read=0.2)
    with pytest.raises(UpstreamReadTimeout):
        await c.request("POST", url, {}, BODY)
    server.close()
    await c.close()


async def test_a_body_cut_short_and_a_silent_body_are_body_errors() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    c = client(read=0.2)
    for script, error in ((short, UpstreamBodyError), (stalls, UpstreamBodyTimeout)):
        server, url = await raw_server(script)
        async with await c.request("POST", url, {}, BODY) as response:
            assert response.status == 200
            with pytest.raises(error):
                await response.read()
        server.close()
    await c.close()


async def test_a_broken_connection_is_never_pooled_or_reused() -> None:
    count = 0

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server, url = await raw_server(once_then_close)
    c = client()
    for _ in range(3):  # the server closes after each answer: each request needs a new one
        async with await c.request("POST", url, {}, BODY) as response:
            assert await response.read() == b"ok"
        await asyncio.sleep(0.05)
    assert count == 3
    server.close()
    await c.close()


async def test_header_values_with_line_breaks_are_refused_before_sending(app_url: str) -> None:
    c = client()
    with pytest.raises(UnsafeHeaderError):
        await c.request("POST", app_url + "/echo", {"x-evil": "a\r\nHost: other"}, BODY)
    await c.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_verifies_the_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    trusting = UpstreamClient(
        connect_timeout_s=2,
        read_timeout_s=2,
        ssl_context=ssl.create_default_context(cafile=str(cert)),
    )
    async with await trusting.request(
        "POST", f"https://localhost:{port}/echo", {}, BODY
    ) as response:
        assert response.status == 200
        assert b'"body"' in await response.read()
    await trusting.close()

    default = client()  # the system's roots do not trust a self-signed certificate
    with pytest.raises(UpstreamConnectError):
        await default.request("POST", f"https://localhost:{port}/echo", {}, BODY)
    await default.close()
    await runner.cleanup()


class Collector:
    """A `BodyConsumer` that keeps what is pushed; `pause_first_s` pauses the body on its
    first chunk for that long."""

    def __init__(self, response: UpstreamResponse | None = None, pause_first_s: float = 0) -> None:
        self.chunks: list[bytes] = []
        self.ends: list[UpstreamError | None] = []
        self.done = asyncio.get_running_loop().create_future()
        self._response = response
        self._pause_first_s = pause_first_s

    def body(self, data: bytes) -> None:
        self.chunks.append(data)
        if self._response is not None and self._pause_first_s and len(self.chunks) == 1:
            self._response.pause_body()
            asyncio.get_running_loop().call_later(self._pause_first_s, self._response.resume_body)

    def end(self, error: UpstreamError | None) -> None:
        self.ends.append(error)
        if not self.done.done():
            self.done.set_result(None)


async def test_a_pushed_stream_arrives_whole_and_its_connection_is_reused(app_url: str) -> None:
    c = client()
    async with await c.request("POST", app_url + "/echo", {}, BODY) as response:
        peer = json.loads(await response.read())["peer"]
    async with await c.request("POST", app_url + "/stream", {}, BODY) as response:
        assert response.pushable
        collector = Collector()
        response.push_to(collector)
        await asyncio.wait_for(collector.done, 5)
    assert b"".join(collector.chunks) == (
        b"".join(f"data: {i}\n\n".encode() for i in range(5)) + b"data: [DONE]\n\n"
    )
    assert len(collector.chunks) >= 5 and collector.ends == [None]
    async with await c.request("POST", app_url + "/echo", {}, BODY) as response:
        assert json.loads(await response.read())["peer"] == peer  # pooled again
    await c.close()


async def test_a_pushed_body_times_out_when_silent_but_not_while_paused() -> None:
    async def gap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.6)
        writer.write(b"5\r\nworld\r\n0\r\n\r\n")
        await writer.drain()

    c = client(read=0.3)
    server, url = await raw_server(gap)
    async with await c.request("POST", url, {}, BODY) as response:
        silent = Collector()
        response.push_to(silent)
        await asyncio.wait_for(silent.done, 5)
    assert silent.chunks == [b"hello"] and len(silent.ends) == 1
    assert isinstance(silent.ends[0], UpstreamBodyTimeout)
    async with await c.request("POST", url, {}, BODY) as response:
        paused = Collector(response, pause_first_s=0.5)  # idle counts from the resume
        response.push_to(paused)
        await asyncio.wait_for(paused.done, 5)
    assert b"".join(paused.chunks) == b"helloworld" and paused.ends == [None]
    server.close()
    await c.close()
