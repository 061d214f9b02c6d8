"""The fast front's reply: a stream's head goes out with its first chunk, in one write.

A provider's first events usually arrive with its response head, and the relay writes them in
the same loop turn as `open_stream`: the client must get head and first event in one send
(one syscall, and the first event no later than the head). A head with no chunk in that turn
still goes out at the end of the turn, not with a later chunk.
"""

from __future__ import annotations

import asyncio
from typing import cast

import orjson
import pytest

from gateway.front.connection import FrontProtocol
from gateway.front.reply import FrontReply
from gateway.mock_provider.app import MockOptions
from gateway.providers.base import SSEEvent
from gateway.providers.openai_stream import ChatStreamMeter
from tests.harness import running_gateway


class _Connection:
    """What FrontReply uses of a FrontProtocol, recording each transport write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing_after = False
        self.writing_paused = False
        self.gone = False

    def write(self, data: bytes) -> None:
        if self.gone:
            raise ConnectionResetError("the client closed the connection")
        self.writes.append(data)

    def http_date(self) -> str:
        return "Fri, 04 Dec 2026 20:00:00 GMT"

    async def drain(self) -> None:
        return None


def _reply() -> tuple[FrontReply, _Connection]:
    conn = _Connection()
    return FrontReply(cast(FrontProtocol, conn)), conn


async def test_the_head_and_the_first_chunk_of_the_same_turn_are_one_write() -> None:
    reply, conn = _reply()
    await reply.open_stream(200, {"Content-Type": "text/event-stream"})
    assert conn.writes == []  # held for the first chunk
    assert reply.write_now(b"data: 1\n\n")
    [first] = conn.writes
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert first.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left to write
    reply.write_now(b"data: 2\n\n")
    assert conn.writes[1:] == [b"9\r\ndata: 2\n\n\r\n"]


async def test_a_head_without_a_chunk_goes_out_at_the_end_of_the_turn() -> None:
    reply, conn = _reply()
    await reply.open_stream(200, {"Content-Type": "text/event-stream"})
    await asyncio.sleep(0)
    [head] = conn.writes
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    reply.write_now(b"data: 1\n\n")
    assert conn.writes[1:] == [b"9\r\ndata: 1\n\n\r\n"]


async def test_an_empty_stream_sends_its_head_with_the_last_chunk() -> None:
    reply, conn = _reply()
    await reply.open_stream(200, {"Content-Type": "text/event-stream"})
    await reply.write_eof()
    [only] = conn.writes
    assert only.startswith(b"HTTP/1.1 200 OK\r\n") and only.endswith(b"\r\n\r\n0\r\n\r\n")
    await asyncio.sleep(0)
    assert len(conn.writes) == 1


async def test_a_client_gone_before_the_head_went_out_is_noticed_by_the_next_write() -> None:
    reply, conn = _reply()
    await reply.open_stream(200, {"Content-Type": "text/event-stream"})
    conn.gone = True
    await asyncio.sleep(0)  # the head's flush meets the closed connection quietly
    with pytest.raises(ConnectionResetError):
        reply.write_now(b"data: 1\n\n")
    assert conn.writes == []


async def test_a_stream_cut_before_its_first_chunk_still_sends_its_head() -> None:
    reply, conn = _reply()
    await reply.open_stream(200, {"Content-Type": "text/event-stream"})
    reply.flush_head()  # what the connection does before it cuts a failed stream
    [head] = conn.writes
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    await asyncio.sleep(0)
    assert len(conn.writes) == 1  # written once


async def test_a_stream_whose_relay_fails_at_once_answers_a_cut_200_not_nothing(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client must never see a connection closed without an answer after the provider was
    called: SDKs retry that, and the retry is billed again."""

    def broken_observe(self: ChatStreamMeter, event: SSEEvent) -> bool:
        raise RuntimeError("a meter bug")

    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        mock_options=MockOptions(latency_ms=0),
        extra_config={"server": {"host": "127.0.0.1", "port": 0}},
    ) as gw:
        monkeypatch.setattr(ChatStreamMeter, "observe", broken_observe)
        body = orjson.dumps(
            {
                "model": "gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
        )
        reader, writer = await asyncio.open_connection(gw.server.host, gw.server.port)
        try:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                b"Authorization: Bearer %b\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (gw.key.encode(), len(body), body)
            )
            async with asyncio.timeout(10):
                answer = await reader.read()  # until the gateway closes the connection
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
    assert b"\r\n0\r\n\r\n" not in answer  # cut: never a complete stream
