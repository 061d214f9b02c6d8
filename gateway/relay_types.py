"""What both relays share (`gateway.relay`, the reference, and `gateway.relay_push`): the
plan of a stream they are given, the state they keep of it, and the outcome they return."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.providers.base import Framer, StreamMeter
from gateway.sse import SSEParser

# finalize(client_gone, upstream_broken): record the stream's usage event; awaited once.
Finalize = Callable[[bool, bool], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    client_gone: bool
    upstream_broken: bool
    first_byte_s: float | None


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """How one stream is relayed. `started`: `time.perf_counter()` when the request arrived
    (for the time to first byte). `framer`: how the stream's bytes split into events; None
    for SSE. `trailer`: called once the stream ended and was recorded; what it returns is
    written last, on a new event (the drain's error event for a stream it cut,
    gateway.drain)."""

    meter: StreamMeter
    finalize: Finalize
    strip_usage: bool
    drain_s: float
    started: float
    framer: Framer | None = None
    trailer: Callable[[], bytes] | None = None


class RelayState:
    """What either relay knows of one stream, and the one place it is recorded."""

    def __init__(self, plan: StreamPlan) -> None:
        self.meter = plan.meter
        self.finalize = plan.finalize
        self.strip_usage = plan.strip_usage
        self.drain_s = plan.drain_s
        self.started = plan.started
        self.parser: Framer = SSEParser() if plan.framer is None else plan.framer
        self.client_gone = False
        self.broken = False
        self.finalized = False
        self.first_byte_s: float | None = None

    async def finish_once(self) -> None:
        if not self.finalized:
            self.finalized = True
            await self.finalize(self.client_gone, self.broken)
