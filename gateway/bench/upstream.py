"""A raw uvloop upstream for the benchmark: the mock provider's chat answers, replayed.

The aiohttp mock provider spends a few hundred microseconds of CPU per request; on a small
machine it shares the cores with the gateway and caps what the gateway can show. This server
answers `POST /v1/chat/completions` from memory on a bare asyncio Protocol instead. At start
it asks the real mock app (in process, once per shape) for the three answers the benchmark
needs, so the bytes are exactly the mock's: the chat JSON, the chat stream, and the chat stream
with the usage chunk (`stream_options.include_usage`). Per request it parses the JSON body
(for `stream` and `stream_options`) and reads `x-mock-token-delay-ms`; a stream is sent
as one chunk (like the unpaced mock) or one chunk per event, the first at once and the i-th
i times that many milliseconds after the first: on the stream's own clock, like a provider
generating tokens, so a busy loop that runs a timer late does not stretch the stream (a late
event goes out at once and the next keeps its time); the body ends with the last event.
Answers carry the mock's headers, with the same `x-request-id` and response `id` on every
answer. The token counts follow `--output-tokens`.

`python -m gateway.bench.upstream --port 0 --output-tokens 35` prints
`bench upstream listening on http://127.0.0.1:PORT`, then serves until SIGINT/SIGTERM.

How it fails: a request it cannot frame, or any other path or method, gets a 400 or 404 JSON
answer and the connection is closed; it never checks the API key.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from gateway.bench.serving import run_on_uvloop, serve_until_stopped
from gateway.mock_provider import MockOptions, create_mock_app

_HEAD_END = b"\r\n\r\n"
_SKIP_HEADERS = {"date", "server", "content-length", "transfer-encoding", "connection"}
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
    b'Content-Length: 21\r\nConnection: close\r\n\r\n{"error":"not found"}'
)
_BAD = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
    b'Content-Length: 23\r\nConnection: close\r\n\r\n{"error":"bad request"}'
)


@dataclass(frozen=True)
class Canned:
    json_answer: bytes  # head and body
    sse_head: bytes
    events: list[bytes]  # the stream's events, chunk-framed one by one (paced)
    events_with_usage: list[bytes]  # the same with the usage chunk

    def whole_stream(self, usage: bool) -> bytes:
        """Head and the whole stream in one chunk, as the unpaced mock sends it."""
        events = self.events_with_usage if usage else self.events
        return self.sse_head + _chunk(b"".join(_unframe(e) for e in events)) + b"0\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _unframe(chunk: bytes) -> bytes:
    return chunk[chunk.index(b"\r\n") + 2 : -2]


def _head(headers: Mapping[str, str], extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK"]
    for name, value in headers.items():
        if name.lower() not in _SKIP_HEADERS:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n\r\n").encode("latin-1")


def _events(body: bytes) -> list[bytes]:
    return [_chunk(part + b"\n\n") for part in body.split(b"\n\n") if part.strip()]


async def record_answers(output_tokens: int) -> Canned:
    """The mock's own answers for the benchmark's three request shapes."""
    server = TestServer(
        create_mock_app(MockOptions(output_tokens=output_tokens, request_log_limit=0)),
        host="127.0.0.1",
    )
    await server.start_server()
    try:
        url = str(server.make_url("/v1/chat/completions"))
        base: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "benchmark"}],
        }
        auth = {"Authorization": "Bearer bench"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=base, headers=auth) as r:
                body = await r.read()
                json_answer = _head(r.headers, f"Content-Length: {len(body)}") + body
            async with session.post(url, json={**base, "stream": True}, headers=auth) as r:
                sse_head = _head(r.headers, "Transfer-Encoding: chunked")
                events = _events(await r.read())
            with_usage = {**base, "stream": True, "stream_options": {"include_usage": True}}
            async with session.post(url, json=with_usage, headers=auth) as r:
                events_with_usage = _events(await r.read())
    finally:
        await server.close()
    return Canned(json_answer, sse_head, events, events_with_usage)


class _Server(asyncio.Protocol):
    def __init__(self, canned: Canned, whole: dict[bool, bytes]) -> None:
        self._canned = canned
        self._whole = whole  # usage chunk or not -> the whole unpaced answer
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop: not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while not self._busy and self._transport is not None:
            end = self._buf.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(self._buf[:end]).lower()
            try:
                length = _header_int(head, b"\r\ncontent-length:")
            except ValueError:
                self._transport.write(_BAD)
                self._transport.close()
                return
            if len(self._buf) < end + 4 + length:
                return
            body = bytes(self._buf[end + 4 : end + 4 + length])
            del self._buf[: end + 4 + length]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self._transport is not None
        if not head.startswith(b"post /v1/chat/completions "):
            self._transport.write(_NOT_FOUND)
            self._transport.close()
            return
        try:
            request = orjson.loads(body)
            delay_ms = _header_int(head, b"\r\nx-mock-token-delay-ms:")
        except (orjson.JSONDecodeError, ValueError):
            self._transport.write(_BAD)
            self._transport.close()
            return
        if not isinstance(request, dict) or request.get("stream") is not True:
            self._transport.write(self._canned.json_answer)
            return
        options = request.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        if not delay_ms:
            self._transport.write(self._whole[usage])
            return
        events = self._canned.events_with_usage if usage else self._canned.events
        self._busy = True
        self._transport.write(self._canned.sse_head + events[0])
        loop = asyncio.get_running_loop()
        start, delay_s = loop.time(), delay_ms / 1000
        loop.call_at(start + delay_s, self._paced, events, 1, start, delay_s)

    def _paced(self, events: list[bytes], index: int, start: float, delay_s: float) -> None:
        if self._transport is None:
            return
        if index < len(events) - 1:
            self._transport.write(events[index])
            loop = asyncio.get_running_loop()
            loop.call_at(
                start + (index + 1) * delay_s, self._paced, events, index + 1, start, delay_s
            )
            return
        # The last event ([DONE]) and the end of the body go together, as a provider sends them.
        self._transport.write(events[index] + b"0\r\n\r\n")
        self._busy = False
        if self._buf:
            self.data_received(b"")


def _header_int(head: bytes, name: bytes) -> int:
    at = head.find(name)
    if at < 0:
        return 0
    stop = head.find(b"\r\n", at + 2)
    return int(head[at + len(name) : stop if stop >= 0 else None])


async def serve(host: str, port: int, output_tokens: int) -> None:
    canned = await record_answers(output_tokens)
    loop = asyncio.get_running_loop()
    whole = {usage: canned.whole_stream(usage) for usage in (False, True)}
    server = await loop.create_server(lambda: _Server(canned, whole), host, port)
    await serve_until_stopped(server, "bench upstream", host)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.bench.upstream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--output-tokens", type=int, default=35)
    args = parser.parse_args(argv)
    run_on_uvloop(serve(args.host, args.port, args.output_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
