"""The fast front (gateway.front.server): what it serves itself, what it hands to aiohttp, and that
a
client cannot tell the difference.

Requests go over raw sockets so keep-alive, pipelining and framing are under the test's
control. Which server answered is visible: aiohttp sends a `Server` header, the front does not.
"""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from gateway.mock_provider.app import MockOptions
from tests.harness import Gateway, running_gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def from_aiohttp(self) -> bool:
        return "aiohttp" in self.headers.get("server", "")


def request(
    gw: Gateway,
    body: dict[str, object] | None = None,
    *,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    extra: bytes = b"",
    raw_body: bytes | None = None,
) -> bytes:
    data = raw_body if raw_body is not None else orjson.dumps(body or CHAT)
    framing = b"" if b"Transfer-Encoding" in extra else b"Content-Length: %d\r\n" % len(data)
    return (
        f"{method} {path} HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer {gw.key}\r\nContent-Type: application/json\r\n".encode()
        + extra
        + framing
        + b"\r\n"
        + data
    )


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One HTTP/1.1 response: Content-Length or chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        return Response(status, headers, b"".join(parts))
    return Response(status, headers, await reader.readexactly(int(headers["content-length"])))


async def exchange(gw: Gateway, *requests: bytes, pipelined: bool = False) -> list[Response]:
    """Send `requests` on one connection (one at a time, or all in one write) and read each
    response in turn."""
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        async with asyncio.timeout(10):
            if pipelined:
                writer.write(b"".join(requests))
                return [await read_response(reader) for _ in requests]
            responses = []
            for data in requests:
                writer.write(data)
                responses.append(await read_response(reader))
            return responses
    finally:
        writer.close()


async def event_ids(gw: Gateway, count: int) -> set[str]:
    rows = await gw.events(wait_for=count)
    return {str(row["id"]) for row in rows}


@pytest.fixture
async def gw(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, mock_options=MockOptions(latency_ms=0)
    ) as gateway:
        yield gateway


async def test_keep_alive_requests_are_served_by_the_front(gw: Gateway) -> None:
    responses = await exchange(gw, request(gw), request(gw), request(gw))
    assert [r.status for r in responses] == [200, 200, 200]
    assert not any(r.from_aiohttp for r in responses)
    assert all(
        "date" in r.headers and r.headers["content-type"].startswith("application/json")
        for r in responses
    )
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == 3
    assert await event_ids(gw, 3) == set(ids)
    assert all(orjson.loads(r.body)["usage"]["completion_tokens"] > 0 for r in responses)


async def test_another_route_hands_the_connection_to_aiohttp(gw: Gateway) -> None:
    health = b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n"
    first, second, third = await exchange(gw, request(gw), health, request(gw))
    assert (first.status, second.status, third.status) == (200, 200, 200)
    assert not first.from_aiohttp
    assert second.from_aiohttp and orjson.loads(second.body)["status"]
    assert third.from_aiohttp  # the connection stays with aiohttp
    assert await event_ids(gw, 2) == {first.headers["x-request-id"], third.headers["x-request-id"]}


async def test_chunked_and_compressed_bodies_are_served_by_aiohttp(gw: Gateway) -> None:
    body = orjson.dumps(CHAT)
    chunked = request(
        gw,
        extra=b"Transfer-Encoding: chunked\r\n",
        raw_body=b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body),
    )
    compressed = request(gw, extra=b"Content-Encoding: gzip\r\n", raw_body=gzip.compress(body))
    responses = [(await exchange(gw, data))[0] for data in (chunked, compressed)]
    assert [r.status for r in responses] == [200, 200]
    assert all(r.from_aiohttp for r in responses)
    assert await event_ids(gw, 2) == {r.headers["x-request-id"] for r in responses}


async def test_the_anthropic_v1_alias_is_served_by_both_servers(gw: Gateway) -> None:
    message = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello there"}],
    }
    body = orjson.dumps(message)
    version = b"anthropic-version: 2023-06-01\r\n"
    fast = request(gw, message, path="/v1/v1/messages", extra=version)
    chunked = request(
        gw,
        path="/v1/v1/messages",
        extra=version + b"Transfer-Encoding: chunked\r\n",
        raw_body=b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body),
    )
    stranger = chunked.replace(gw.key.encode(), b"tb_" + b"z" * 40)
    served, handed, refused = [(await exchange(gw, data))[0] for data in (fast, chunked, stranger)]
    assert (served.status, handed.status, refused.status) == (200, 200, 401)
    assert not served.from_aiohttp and handed.from_aiohttp and refused.from_aiohttp
    assert orjson.loads(refused.body)["error"]["type"] == "authentication_error"
    rows = await gw.events(wait_for=2)
    assert {str(row["id"]) for row in rows} == {
        served.headers["x-request-id"],
        handed.headers["x-request-id"],
    }
    assert [row["endpoint"] for row in rows] == ["messages", "messages"]
    assert [sent.path for sent in gw.mock_requests] == ["/v1/messages", "/v1/messages"]
    metrics = b"GET /metrics HTTP/1.1\r\nHost: gateway\r\n\r\n"
    (scrape,) = await exchange(gw, metrics)
    refusals = [
        line
        for line in scrape.body.decode().splitlines()
        if line.startswith("tollbooth_refused_requests_total{")
    ]
    assert refusals and all('route="/v1/messages"' in line for line in refusals), refusals


async def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    models = ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
    responses = await exchange(
        gw, *(request(gw, {**CHAT, "model": m}) for m in models), pipelined=True
    )
    assert [r.status for r in responses] == [200, 200, 200]
    assert all(
        orjson.loads(r.body)["model"].startswith(m) for r, m in zip(responses, models, strict=True)
    )
    rows = await gw.events(wait_for=3)
    by_id = {str(row["id"]): row["model"] for row in rows}
    assert [by_id[r.headers["x-request-id"]] for r in responses] == models


async def test_connection_close_is_honoured(gw: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        writer.write(request(gw, extra=b"Connection: close\r\n"))
        async with asyncio.timeout(10):
            response = await read_response(reader)
            assert await reader.read() == b""  # the server closed the connection
    finally:
        writer.close()
    assert response.status == 200 and response.headers["connection"] == "close"
    assert not response.from_aiohttp


async def test_a_client_that_half_closes_gets_its_answer(gw: Gateway) -> None:
    reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
    try:
        writer.write(request(gw))
        writer.write_eof()  # sent everything: shutdown(SHUT_WR)
        async with asyncio.timeout(10):
            response = await read_response(reader)
            assert await reader.read() == b""  # then the server closes
    finally:
        writer.close()
    assert response.status == 200 and response.headers["connection"] == "close"
    assert await event_ids(gw, 1) == {response.headers["x-request-id"]}


async def test_refusals_on_the_front_keep_the_api_shape_and_the_connection(gw: Gateway) -> None:
    bad_key = request(gw).replace(gw.key.encode(), b"tb_" + b"x" * 40)
    no_model = request(gw, {"messages": []})
    anthropic = request(
        gw, {"model": "claude-sonnet-4-5", "messages": []}, path="/v1/messages"
    ).replace(gw.key.encode(), b"tb_" + b"y" * 40)
    refused_key, refused_model, refused_anthropic, ok = await exchange(
        gw, bad_key, no_model, anthropic, request(gw)
    )
    assert (refused_key.status, refused_model.status, refused_anthropic.status) == (401, 400, 401)
    assert orjson.loads(refused_key.body)["error"]["code"] == "invalid_api_key"
    assert orjson.loads(refused_model.body)["error"]["param"] == "model"
    assert orjson.loads(refused_anthropic.body)["type"] == "error"
    assert all(uuid.UUID(r.headers["x-request-id"]) for r in (refused_key, refused_model))
    assert ok.status == 200 and not ok.from_aiohttp
    assert await event_ids(gw, 1) == {ok.headers["x-request-id"]}


async def test_a_stream_is_chunked_and_whole(gw: Gateway) -> None:
    (response,) = await exchange(gw, request(gw, {**CHAT, "stream": True}))
    assert response.status == 200 and not response.from_aiohttp
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.body.split(b"\n\n") if line]
    assert events[-1] == b"data: [DONE]"
    assert b'"usage":{' not in response.body  # the usage chunk the gateway asked for is stripped
    (row,) = await gw.events(wait_for=1)
    assert row["streamed"] and row["output_tokens"] > 0 and row["usage_source"] == "provider"


async def test_shutdown_finishes_the_request_in_flight(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, mock_options=MockOptions(latency_ms=400)
    ) as gw:
        reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
        idle_reader, idle_writer = await asyncio.open_connection(gw.server.host, gw.server.port)
        writer.write(request(gw))
        await asyncio.sleep(0.1)  # the request is upstream now
        closing = asyncio.ensure_future(gw.server.close())
        async with asyncio.timeout(10):
            response = await read_response(reader)
            assert await idle_reader.read() == b""  # an idle connection is closed
            await closing
        writer.close()
        idle_writer.close()
        assert response.status == 200 and response.headers["connection"] == "close"
        assert await event_ids(gw, 1) == {response.headers["x-request-id"]}
