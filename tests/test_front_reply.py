"""The fast front's reply: a stream's head goes out with its first chunk, in one write.

A provider's first events usually arrive with its response head, and the relay writes them in
the same loop turn as `open_stream`: the client must get head and first event in one send
(one syscall, and the first event no later than the head). A head with no chunk in that turn
still goes out at the end of the turn, not with a later chunk.
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from gateway.front.connection import FrontProtocol
from gateway.front.reply import FrontReply


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
