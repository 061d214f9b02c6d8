"""The graceful drain: what a gateway process does between SIGTERM and its exit.

Timeline, with t the moment SIGTERM (or SIGINT, SIGQUIT, a lost supervisor) arrives:
- t: `begin()`. `/health/ready` answers 503 with `"draining"` among its reasons from now on
  (gateway.probes); the process keeps serving new requests, so the load balancer has time to
  notice (`server.drain_grace_s`).
- t + drain_grace_s: `serve` closes the listener; idle connections close, busy ones after their
  response; requests and streams in flight go on.
- t + drain_timeout_s: `cut_all()` cuts whatever is still running (every forwarded exchange
  is tracked from the moment it goes upstream until it is recorded, `track`):
  - a response being relayed or read (its head arrived): its upstream connection is aborted.
    A stream ends with `cut_event` (an SSE `error` event in the called API's error shape)
    after its usage event is recorded; a JSON body not fully read becomes a 503;
  - a request still waiting for the provider's response head: its task is cancelled inside
    that wait, and the proxy turns the cancellation into a 503 (`cut_error`).
  Every cut exchange is recorded once, by the proxy, with `metadata.interrupted =
  "drain_timeout"` and `usage_source = estimated` unless the provider's usage had arrived.
- then: the usage writer is given what is left of drain_timeout_s + EXIT_MARGIN_S
  (`exit_budget_s`) to put every journaled event in Postgres; whatever Postgres does not take
  in that time stays in the journal, and the writer logs how many (storage.usage.writer).

Failure semantics: nothing here raises into a request. A cut never loses or doubles an event:
an exchange is recorded by the proxy's own path (the same `Recorder.finish` as any request),
and its provisional record is settled by that event. An exchange that somehow outlives its
cut is waited for by `Recorder.drain` and, if still running, left to its provisional record
(the next start records it as `gateway_stopped`, unless Postgres has its event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.errors import ServiceUnavailableError
from pricing.models import Usage

if TYPE_CHECKING:  # kept light: the supervisor reads EXIT_MARGIN_S
    from gateway.metering import Exchange, Recorder
    from gateway.providers.base import ProviderApi

log = logging.getLogger("tollbooth.drain")

INTERRUPTED = "drain_timeout"  # metadata.interrupted of an exchange the drain cut
EXIT_MARGIN_S = 5.0  # the process exits within drain_timeout_s + this
CUT_SETTLE_S = 2.0  # how long cut exchanges get to record and answer after the cut
_EXIT_RESERVE_S = 3.0  # of the exit margin: closing pools, the interpreter's own exit (~1 s)
CUT_MESSAGE = "The gateway is restarting and could not finish this request in time; retry it."


class Abortable(Protocol):
    def abort(self) -> None: ...


class Cut:
    """One forwarded exchange in flight, as the drain sees it. The proxy sets `upstream`
    once the provider's response head arrived, and reads `fired` to know it was cut."""

    __slots__ = ("_cuts", "_task", "fired", "upstream")

    def __init__(self, cuts: set[Cut], task: asyncio.Task[object] | None) -> None:
        self._cuts = cuts
        self._task = task
        self.fired = False
        self.upstream: Abortable | None = None

    @property
    def waiting_for_head(self) -> bool:
        """Cut while waiting for the provider's response head (the task was cancelled)."""
        return self.fired and self.upstream is None

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        if self.upstream is not None:
            self.upstream.abort()
        elif self._task is not None:
            self._task.cancel()

    def release(self) -> None:
        self._cuts.discard(self)


class Drain:
    def __init__(
        self, *, grace_s: float, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace_s = min(grace_s, timeout_s)
        self.timeout_s = timeout_s
        self._clock = clock
        self._began: float | None = None
        self._deadline_passed = False
        self._cuts: set[Cut] = set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def draining(self) -> bool:
        return self._began is not None

    @property
    def in_flight(self) -> int:
        return len(self._cuts)

    def begin(self) -> None:
        """Start draining (idempotent): readiness off now, the cut at t + timeout_s."""
        if self._began is not None:
            return
        self._began = self._clock()
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self.cut_all)
        log.warning(
            "draining: not ready; serving new requests for %.1f s, then finishing "
            "%d requests in flight for up to %.1f s after the signal",
            self.grace_s,
            len(self._cuts),
            self.timeout_s,
        )

    def track(self) -> Cut:
        """Track the calling task's exchange until `Cut.release()`; call just before it goes
        upstream. An exchange that starts after the cut is cut at once."""
        cut = Cut(self._cuts, asyncio.current_task())
        self._cuts.add(cut)
        if self._deadline_passed:
            cut.fire()
        return cut

    def cut_all(self) -> None:
        """Cut every exchange still running (at t + drain_timeout_s)."""
        self._deadline_passed = True
        running = list(self._cuts)
        if running:
            log.warning(
                "drain timeout (%.1f s): cutting %d requests still running",
                self.timeout_s,
                len(running),
            )
        for cut in running:
            cut.fire()

    def seconds_to_cut(self) -> float:
        """Seconds until the cut (drain_timeout_s when not draining)."""
        if self._began is None:
            return self.timeout_s
        return max(0.0, self._began + self.timeout_s - self._clock())

    def exit_budget_s(self, default_s: float, *, use_all: bool = False) -> float:
        """How long a closing step may take so the process still exits within
        drain_timeout_s + EXIT_MARGIN_S of the signal: at most `default_s`, or all that is
        left with `use_all` (the usage writer: every event in Postgres is worth the wait);
        `default_s` when not draining."""
        if self._began is None:
            return default_s
        left = self._began + self.timeout_s + EXIT_MARGIN_S - _EXIT_RESERVE_S - self._clock()
        return max(0.5, left if use_all else min(default_s, left))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def cut_event(api: ProviderApi) -> bytes:
    """The SSE event that ends a cut stream: an `error` event whose data is the called API's
    error body (both official SDKs raise on it)."""
    body = api.error_body(503, ServiceUnavailableError.error_type, CUT_MESSAGE, INTERRUPTED, None)
    return b"event: error\ndata: " + body + b"\n\n"


def cut_error() -> ServiceUnavailableError:
    """What a cut request that had no response yet answers (503, the API's shape)."""
    return ServiceUnavailableError(CUT_MESSAGE, code=INTERRUPTED)


async def record_cut(recorder: Recorder, ex: Exchange) -> None:
    """Record an exchange cut before its response began (a 503 to the client): estimated,
    the prompt estimate as input, priced like a failed request (its tokens, no fees)."""
    ex.metadata["interrupted"] = INTERRUPTED
    await recorder.finish(
        ex,
        status=cut_error().status,
        usage=None,
        upstream_id=None,
        partial_usage=Usage(input_tokens=ex.prompt_tokens),
    )
