"""A relay under test without sockets: every recorded stream, fakes of the upstream and the
client (awaited and pushed), and `relay(case, chunks)` running either relay over them.

The property tests of the relay (tests/test_hostile_properties.py) and the comparison of the
pushed relay with the reference loop (tests/test_relay_push.py) both drive relays through it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from hypothesis import strategies as st

from gateway.providers.anthropic import MESSAGES
from gateway.providers.base import Endpoint, ProviderApi, StreamResult
from gateway.providers.openai import CHAT, COMPLETIONS, RESPONSES
from gateway.providers.registry import api_for_kind
from gateway.relay import RelayOutcome, relay_stream
from gateway.relay_push import PushSink, PushSource
from gateway.relay_types import StreamPlan
from gateway.upstream import UpstreamResponse
from gateway.upstream_client import UpstreamBodyError

DATA = Path(__file__).parent.parent / "data"
OPENAI = api_for_kind("openai")
ANTHROPIC = api_for_kind("anthropic")
# (file, adapter, endpoint, strip_usage): every recorded stream, as the relay would meet it.
STREAMS: list[tuple[str, ProviderApi, Endpoint, bool]] = [
    ("openai/chat_stream_include_usage.sse", OPENAI, CHAT, True),
    ("openai/chat_stream_include_usage.sse", OPENAI, CHAT, False),
    ("openai/chat_stream_no_usage.sse", OPENAI, CHAT, True),
    ("openai/chat_stream_compatible_spaced.sse", OPENAI, CHAT, True),
    ("openai/completion_stream_include_usage.sse", OPENAI, COMPLETIONS, True),
    ("openai/response_stream.sse", OPENAI, RESPONSES, False),
    ("openai/response_stream_incomplete.sse", OPENAI, RESPONSES, False),
    ("anthropic/message_stream.sse", ANTHROPIC, MESSAGES, False),
    ("anthropic/message_stream_thinking_tools.sse", ANTHROPIC, MESSAGES, False),
    ("anthropic/message_stream_cut.sse", ANTHROPIC, MESSAGES, False),
    ("anthropic/message_stream_overloaded.sse", ANTHROPIC, MESSAGES, False),
]


class FakeUpstream:
    """What `iter_chunks` reads of an upstream response: `iter_chunks()`, which raises what
    the forwarding client raises when the connection breaks mid-body."""

    def __init__(self, chunks: list[bytes], cut_at: int | None = None) -> None:
        self._chunks = chunks
        self._cut_at = cut_at

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for index, chunk in enumerate(self._chunks):
            if index == self._cut_at:
                raise UpstreamBodyError("the provider closed the connection mid-body")
            yield chunk


class FakeClient:
    """What the relay writes to: a client that may hang up after `hang_up_after` writes."""

    def __init__(self, hang_up_after: int | None = None) -> None:
        self.received = bytearray()
        self.writes = 0
        self.ended = False
        self._hang_up_after = hang_up_after

    async def write(self, data: bytes) -> None:
        if self._hang_up_after is not None and self.writes >= self._hang_up_after:
            raise ConnectionResetError("client went away")
        self.writes += 1
        self.received += data

    async def write_eof(self) -> None:
        if self._hang_up_after is not None and self.writes >= self._hang_up_after:
            raise ConnectionResetError("client went away")
        self.ended = True


class FakePushUpstream:
    """A pushing upstream (`relay_push.PushSource`): a task hands the chunks to the consumer,
    one per loop turn, and never while paused (except `burst` chunks already parsed: a
    socket read that held several). `cut_at` ends the body with the client's error there."""

    pushable = True

    def __init__(self, chunks: list[bytes], cut_at: int | None = None, burst: int = 1) -> None:
        self._chunks = chunks
        self._cut_at = cut_at
        self._burst = max(1, burst)
        self._paused = False
        self._resumed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def push_to(self, consumer: Any) -> None:
        self.task = asyncio.get_running_loop().create_task(self._push(consumer))

    def pause_body(self) -> None:
        self._paused = True
        self._resumed.clear()

    def resume_body(self) -> None:
        self._paused = False
        self._resumed.set()

    async def _push(self, consumer: Any) -> None:
        for index, chunk in enumerate(self._chunks):
            if index % self._burst == 0:
                await asyncio.sleep(0)
                while self._paused:
                    await self._resumed.wait()
            if index == self._cut_at:
                consumer.end(UpstreamBodyError("the provider closed the connection mid-body"))
                return
            consumer.body(chunk)
        await asyncio.sleep(0)
        consumer.end(None)


class FakePushClient(FakeClient):
    """A client written at once (`relay_push.PushSink`); with `full_every`, every so many
    writes fill its buffer, which empties on the next loop turn."""

    def __init__(self, hang_up_after: int | None = None, full_every: int = 0) -> None:
        super().__init__(hang_up_after)
        self._full_every = full_every

    def write_now(self, data: bytes) -> bool:
        if self._hang_up_after is not None and self.writes >= self._hang_up_after:
            raise ConnectionResetError("client went away")
        self.writes += 1
        self.received += data
        return not self._full_every or self.writes % self._full_every != 0

    async def writable(self) -> None:
        await asyncio.sleep(0)
        if self._hang_up_after is not None and self.writes >= self._hang_up_after:
            raise ConnectionResetError("client went away")


@dataclass(frozen=True)
class Run:
    """One relay run: what the client got, what was metered, and what `finalize` saw."""

    outcome: RelayOutcome
    received: bytes
    ended: bool
    result: StreamResult
    finalized: int  # how many times the usage event was recorded
    received_at_finalize: bytes  # what the client had when it was


def relay(
    case: int,
    chunks: list[bytes],
    *,
    hang_up_after: int | None = None,
    cut_at: int | None = None,
    push: bool = False,
    burst: int = 1,
    full_every: int = 0,
) -> Run:
    """One run of `relay_stream`: the reference, or with `push` the pushed relay (`burst`
    and `full_every` shape its upstream and client, see the fakes)."""
    _, api, endpoint, strip = STREAMS[case]
    client = FakePushClient(hang_up_after, full_every) if push else FakeClient(hang_up_after)
    upstream = FakePushUpstream(chunks, cut_at, burst) if push else FakeUpstream(chunks, cut_at)
    assert isinstance(client, PushSink) == push and isinstance(upstream, PushSource) == push
    meter = api.stream_meter(endpoint, strip)
    at_finalize: list[bytes] = []

    async def finalize(client_gone: bool, upstream_broken: bool) -> None:
        await asyncio.sleep(0)  # chunks may arrive meanwhile: they must wait too
        at_finalize.append(bytes(client.received))

    async def run() -> RelayOutcome:
        plan = StreamPlan(meter, finalize, strip, drain_s=5.0, started=time.perf_counter())
        return await relay_stream(
            cast(web.StreamResponse, client), cast(UpstreamResponse, upstream), plan
        )

    outcome = asyncio.run(run())
    return Run(
        outcome,
        bytes(client.received),
        client.ended,
        meter.result(),
        len(at_finalize),
        at_finalize[0] if at_finalize else b"",
    )


def cut(stream: bytes, offsets: list[int]) -> list[bytes]:
    points = sorted({offset % (len(stream) + 1) for offset in offsets})
    return [stream[a:b] for a, b in itertools.pairwise([0, *points, len(stream)]) if b > a]


def stream_bytes(case: int) -> bytes:
    return (DATA / STREAMS[case][0]).read_bytes()


cases = st.integers(min_value=0, max_value=len(STREAMS) - 1)
offsets = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)
