"""The relay's fast path: each upstream chunk relayed from the socket callback that read it.

`relay_pushed` keeps the contract of `gateway.relay.relay_stream`, the reference (which still
serves aiohttp's responses and compressed streams): the client gets the same bytes, the meter
sees the same events, the terminal event waits for `finalize`, a client that leaves is
drained for `drain_s`, a cut is reported as `upstream_broken`, and the outcome is the same.
`tests/test_relay_push.py` checks that on every chunking of recorded streams.

What differs is who does the work. The upstream connection hands each body chunk to
`_PushRelay.body` from its `data_received` (`UpstreamResponse.push_to`); the chunk is split
into events (the same framer), metered, and written to the client's transport
(`PushSink.write_now`) right there: no task wakes, no future or timer is made per chunk.
The coroutine that called `relay_pushed` sleeps until the body ends. Two things still need a
task, and each pauses the upstream socket (`pause_body`) until it is done:
- the terminal event: the bytes before it go out, then `finalize` runs in a task; the rest
  of that chunk (and any chunk already parsed meanwhile) goes out once it has returned;
- back-pressure: when `write_now` says the client's buffer is full, reading stops until the
  client has taken it (`PushSink.writable`).

Failure semantics: an exception from the meter or the framer inside the callback ends the
relay and is raised by `relay_pushed`, as the reference raises it; one from `finalize` is
raised the same way. The client leaving (`ConnectionResetError`) is not an error: reading
continues, without writing, until the body ends or `drain_s` has passed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

import aiohttp

from gateway.providers.base import SSEEvent
from gateway.relay_types import RelayOutcome, RelayState, StreamPlan
from gateway.upstream_client import UpstreamError

_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError)


@runtime_checkable
class PushSink(Protocol):
    """A client connection the relay writes to without awaiting (the fast front's reply)."""

    def write_now(self, data: bytes) -> bool:
        """Write one chunk; False when the client's buffer is full (call `writable` before
        more). Raises ConnectionResetError once the client has gone."""
        ...

    async def writable(self) -> None:
        """Return once the client's buffer has room; ConnectionResetError if it has gone."""
        ...

    async def write_eof(self) -> None: ...


@runtime_checkable
class PushSource(Protocol):
    """An upstream body that can be pushed (`gateway.upstream_client.UpstreamResponse`)."""

    @property
    def pushable(self) -> bool: ...

    def push_to(self, consumer: _PushRelay) -> None: ...

    def pause_body(self) -> None: ...

    def resume_body(self) -> None: ...


class _PushRelay(RelayState):
    """One stream's relay state; `body` and `end` are the upstream connection's callbacks."""

    def __init__(self, sink: PushSink, source: PushSource, plan: StreamPlan) -> None:
        super().__init__(plan)
        self.sink = sink
        self.source = source
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.error: BaseException | None = None
        self.stopped = False  # the body is over for the relay: callbacks are ignored
        # The terminal event is held while `finalize` runs: what to write after it.
        self.holding = False
        self.held_bytes = b""  # pass-through: the rest of the chunk holding the terminal
        self.held_events: list[SSEEvent] = []  # stripping: its events not yet observed
        self.backlog: list[bytes] = []  # chunks that arrived while holding, not yet parsed
        self.finalizing: asyncio.Task[None] | None = None
        self.full = False  # the client's buffer is full
        self.waiting: asyncio.Task[None] | None = None  # for the client's buffer to empty
        self.reading_paused = False
        self.drain_timer: asyncio.TimerHandle | None = None

    # -- the upstream connection's callbacks --------------------------------------------

    def body(self, chunk: bytes) -> None:
        if self.stopped:
            return
        if self.holding:
            self.backlog.append(chunk)
            return
        try:
            self.relay(chunk)
        except Exception as exc:  # a bug in a meter or framer: raised by relay_pushed
            self.error = exc
            self.stop()

    def end(self, error: UpstreamError | None) -> None:
        if error is not None:
            self.broken = True
        self.stop()

    # -- relaying -------------------------------------------------------------------------

    def relay(self, chunk: bytes) -> None:
        """Parse, meter and write one chunk (what `gateway.relay._Relay.chunk` does)."""
        carried = self.parser.buffered
        events = self.parser.feed(chunk)
        if self.strip_usage:
            self.relay_events(events)
            return
        meter = self.meter
        if not events or meter.finished:
            for event in events:
                meter.observe(event)
            self.write(chunk)
            return
        # The first `carried` bytes of the events were in earlier chunks (already written).
        end = -carried
        for index, event in enumerate(events):
            end += len(event.raw)
            meter.observe(event)
            if meter.finished:
                for later in events[index + 1 :]:
                    meter.observe(later)
                hold_from = max(0, end - len(event.raw))
                self.write(chunk[:hold_from])
                self.hold(chunk[hold_from:], [])
                return
        self.write(chunk)

    def relay_events(self, events: list[SSEEvent]) -> None:
        """Stripping: whole events only, the injected usage event left out."""
        out: list[bytes] = []
        meter = self.meter
        for index, event in enumerate(events):
            was_finished = meter.finished
            keep = meter.observe(event)
            if meter.finished and not was_finished:
                self.write(b"".join(out))
                self.hold(event.raw if keep else b"", events[index + 1 :])
                return
            if keep:
                out.append(event.raw)
        self.write(b"".join(out))

    def write(self, data: bytes) -> None:
        if self.client_gone or not data:
            return
        try:
            room = self.sink.write_now(data)
        except _CLIENT_GONE:
            self.client_left()
            return
        if self.first_byte_s is None:
            self.first_byte_s = time.perf_counter() - self.started
        if not room and not self.full:
            self.full = True
            self.update_reading()
            self.waiting = self.loop.create_task(self.wait_writable())

    async def wait_writable(self) -> None:
        try:
            await self.sink.writable()
        except _CLIENT_GONE:
            self.client_left()
        self.full = False
        self.update_reading()

    def client_left(self) -> None:
        if self.client_gone:
            return
        self.client_gone = True
        self.full = False
        self.update_reading()
        self.drain_timer = self.loop.call_later(self.drain_s, self.stop)

    # -- holding the terminal event --------------------------------------------------------

    def hold(self, rest: bytes, rest_events: list[SSEEvent]) -> None:
        """The terminal event was seen: write nothing more until `finalize` has returned."""
        self.holding = True
        self.held_bytes = rest
        self.held_events = rest_events
        self.update_reading()
        self.finalizing = self.loop.create_task(self.finalize_then_release())

    async def finalize_then_release(self) -> None:
        try:
            await self.finish_once()
            self.holding = False
            self.write(self.held_bytes)
            if self.strip_usage:
                self.relay_events(self.held_events)
            self.held_bytes, self.held_events = b"", []
            backlog, self.backlog = self.backlog, []
            for chunk in backlog:
                self.relay(chunk)
        except BaseException:
            self.stop()  # raised again where relay_pushed awaits this task
            raise
        finally:
            self.update_reading()

    # -- the rest ---------------------------------------------------------------------------

    def update_reading(self) -> None:
        paused = (self.holding or self.full) and not self.stopped
        if paused != self.reading_paused:
            self.reading_paused = paused
            if paused:
                self.source.pause_body()
            else:
                self.source.resume_body()

    def stop(self) -> None:
        """The body ended, failed, or the drain bound passed: the relay reads no more."""
        if self.stopped:
            return
        self.stopped = True
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        if not self.done.done():
            self.done.set_result(None)

    async def tail(self, events: list[SSEEvent]) -> None:
        """The events `flush` returned (`gateway.relay._Relay._events` for stripping)."""
        if not self.strip_usage:
            for event in events:
                self.meter.observe(event)
            return  # pass-through wrote these bytes as they came
        out: list[bytes] = []
        for event in events:
            was_finished = self.meter.finished
            keep = self.meter.observe(event)
            if self.meter.finished and not was_finished:
                self.write(b"".join(out))
                out = []
                await self.finish_once()
            if keep:
                out.append(event.raw)
        self.write(b"".join(out))


async def relay_pushed(sink: PushSink, source: PushSource, plan: StreamPlan) -> RelayOutcome:
    """`gateway.relay.relay_stream` for a `PushSink` and a pushable upstream."""
    relay = _PushRelay(sink, source, plan)
    try:
        source.push_to(relay)
        await relay.done
        if relay.finalizing is not None:
            await relay.finalizing  # writes what it held, and the backlog, when it returns
        if relay.error is not None:
            raise relay.error
    finally:
        relay.stop()
        if relay.finalizing is not None and not relay.finalizing.done():
            relay.finalizing.cancel()  # this coroutine was cancelled: so is its finalize
        relay.update_reading()
    torn = relay.parser.buffered > 0  # the client may hold part of an event
    await relay.tail(relay.parser.flush())
    await relay.finish_once()
    last = plan.trailer() if plan.trailer is not None else b""
    if last:
        relay.write(b"\n\n" + last if torn else last)
    if not relay.client_gone:
        try:
            await sink.write_eof()
        except _CLIENT_GONE:
            relay.client_gone = True
    if relay.waiting is not None:
        relay.waiting.cancel()  # the body is over: nothing more waits for the client
    return RelayOutcome(relay.client_gone, relay.broken, relay.first_byte_s)
