"""Turn one finished exchange into its usage event, its quota settlement and its price.

Before that, while it runs: `Recorder.open` journals the exchange's provisional event just
before it goes upstream (the event it gets if the gateway is killed before it finishes:
`status_code` 502, `usage_source = estimated`, `metadata.interrupted = "gateway_stopped"`,
the prompt-token estimate as input, no money), and while a stream runs (`track_stream` to
`untrack_stream`) it is journaled again with the output counted so far, once every
PROGRESS_INTERVAL_S: one timer for every open stream, whose lines go in one os.write
(`write_progress`; a stream with nothing new since its last line is skipped). Each is an
encoded line (storage.usage.journal_open), no pricing and no await; neither raises into the
request path. If the process dies, the next
start prices those events with `interrupted_pricer` and records the ones that never got a
real event (storage.usage.interrupted). 502 because the exchange did fail, from the client's side;
it is priced as a failed request: the tokens, no per-request or compute fee.

`Recorder.finish` runs exactly once per forwarded request, whatever happened (success,
provider error, client disconnect, broken stream), from the proxy's `finally`:
- usage the provider reported is taken as is (`usage_source = provider`);
- a successful response without usage is counted with tiktoken from the prompt and the text
  produced (`usage_source = estimated`), never recorded as a silent zero;
- a provider error records its status with zero tokens unless the provider reported usage, and
  is charged only for reported tokens (no per-request fee for a failed request);
- an unpriced model (`unknown_model: allow_unpriced`) is recorded with NULL money, logged.
The event goes to the `UsageWriter` (journaled before the response completes); the quota
reservation is then settled with the actual tokens and price by `QuotaPolicy.settle_soon`,
which queues it for the next Redis round trip (an admit's, or its own within 5 ms) and
returns, so no Redis wait sits in the client's latency; shutdown waits for it
(`QuotaPolicy.aclose`). Neither step raises into the request path. Metrics are updated and
one access-log line written (`gateway.logs.AccessLog`, buffered).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from gateway.logs import AccessLog
from gateway.metrics import Metrics
from gateway.providers.base import Endpoint, StreamMeter
from gateway.quotas import Admission, QuotaPolicy
from gateway.runtime import Runtime, Snapshot
from gateway.tokens import TokenCounter
from pricing.models import Charge, Usage
from storage.accounts import KeyPrincipal
from storage.usage.event import UsageEvent
from storage.usage.journal_format import encode_provisional
from storage.usage.writer import UsageWriter

log = logging.getLogger("tollbooth.metering")

T = TypeVar("T")

INTERRUPTED_STATUS = 502
INTERRUPTED = "gateway_stopped"  # metadata.interrupted of an exchange the gateway never finished
PROGRESS_INTERVAL_S = 1.0  # how often an open stream's output so far is journaled


@dataclass(slots=True)
class Exchange:
    """The facts of one forwarded request, gathered as it runs."""

    request_id: uuid.UUID
    created_at: datetime
    started: float  # time.perf_counter() at arrival
    principal: KeyPrincipal
    snapshot: Snapshot
    provider: str
    model: str
    endpoint: Endpoint
    streamed: bool
    prompt_text: str
    admission: Admission | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0  # the estimate the quota reserved (proxy), set by Recorder.open


class Recorder:
    def __init__(
        self,
        writer: UsageWriter,
        quotas: QuotaPolicy,
        tokens: TokenCounter,
        metrics: Metrics,
        access_log: AccessLog,
    ) -> None:
        self._writer = writer
        self._quotas = quotas
        self._tokens = tokens
        self._metrics = metrics
        self._access_log = access_log
        self._inflight: set[asyncio.Task[Any]] = set()
        # Open streams' progress lines (track_stream), journaled together by one timer.
        self._streams: dict[uuid.UUID, Callable[[], bytes | None]] = {}
        self._tick: asyncio.TimerHandle | None = None

    def spawn(self, exchange: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run one exchange as a tracked task, so shutdown can wait for it to be billed."""
        task = asyncio.ensure_future(exchange)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def open(self, ex: Exchange, prompt_tokens: int) -> None:
        """Journal the exchange's provisional event; call just before it goes upstream."""
        ex.prompt_tokens = prompt_tokens
        self._writer.provisional(ex.request_id, _provisional_line(ex, prompt_tokens, 0, 0))

    def track_stream(self, ex: Exchange, meter: StreamMeter) -> None:
        """Journal the stream's output so far with the next progress tick, and each one after,
        until `untrack_stream` (which `finish`'s caller calls first: no record may follow the
        real event)."""
        self._streams[ex.request_id] = self._progress_line(ex, meter)
        if self._tick is None:
            loop = asyncio.get_running_loop()
            self._tick = loop.call_later(PROGRESS_INTERVAL_S, self._on_tick)

    def untrack_stream(self, ex: Exchange) -> None:
        self._streams.pop(ex.request_id, None)

    def _on_tick(self) -> None:
        self._tick = None
        self.write_progress()
        if self._streams:
            loop = asyncio.get_running_loop()
            self._tick = loop.call_later(PROGRESS_INTERVAL_S, self._on_tick)

    def write_progress(self) -> None:
        """Journal every tracked stream that produced something since its last record, in one
        write."""
        records: list[tuple[uuid.UUID, bytes]] = []
        for request_id, line_of in self._streams.items():
            line = line_of()
            if line is not None:
                records.append((request_id, line))
        if records:
            self._writer.provisional_many(records)

    def _progress_line(self, ex: Exchange, meter: StreamMeter) -> Callable[[], bytes | None]:
        """The stream's provisional line with the output so far, or None when nothing changed
        since the last one. Tokens are counted on the text added since the last call only (a
        stream's text is never counted twice, so a long stream stays cheap)."""
        counted_chars = 0
        counted_tokens = 0  # tiktoken's count of the text so far
        last: tuple[int, int, int, int, str | None] | None = None

        def line() -> bytes | None:
            nonlocal counted_chars, counted_tokens, last
            try:
                result = meter.result()
                usage = result.usage
                if usage is None:
                    text = result.produced_text
                    if len(text) > counted_chars:
                        counted_tokens += self._tokens.count(ex.model, text[counted_chars:])
                        counted_chars = len(text)
                    usage = result.partial_usage or Usage(input_tokens=ex.prompt_tokens)
                    # Never below an output count the provider already reported.
                    usage = replace(usage, output_tokens=max(counted_tokens, usage.output_tokens))
                counts = (
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cached_input_tokens,
                    usage.cache_write_tokens,
                    result.upstream_id,
                )
                if counts == last:
                    return None
                last = counts
                latency_ms = int((time.perf_counter() - ex.started) * 1000)
                return _provisional_line(
                    ex,
                    usage.input_tokens,
                    usage.output_tokens,
                    latency_ms,
                    usage.cached_input_tokens,
                    usage.cache_write_tokens,
                    result.upstream_id,
                )
            except Exception:  # a bug: never break the stream for a progress record
                log.error("stream progress of %s not recorded", ex.request_id, exc_info=True)
                return None

        return line

    async def drain(self, timeout_s: float) -> None:
        """Wait for in-flight exchanges (and their events) before the writer closes."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout_s)
            if self._inflight:
                log.error("%d exchanges still running at shutdown", len(self._inflight))

    def _usage(
        self,
        ex: Exchange,
        status: int,
        usage: Usage | None,
        produced_text: str,
        partial: Usage | None,
    ) -> Usage:
        if usage is not None:
            return usage
        if status >= 400 and partial is None:
            return Usage()
        return self._tokens.estimate_usage(
            ex.model, ex.prompt_text, produced_text, reported=partial
        )

    def _charge(self, ex: Exchange, status: int, usage: Usage, duration_ms: int) -> Charge | None:
        # Priced like re-rating prices the stored event: its time, customer, tier, status and
        # latency_ms (the duration). A provider error pays reported tokens only, no fees.
        if usage.cache_write_1h_tokens:
            # Kept on the event so re-rating prices the 1-hour cache writes as they were.
            ex.metadata["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
        return ex.snapshot.pricing.charge(
            ex.model,
            usage,
            at=ex.created_at,
            customer_id=ex.principal.customer_id,
            tier=ex.principal.tier,
            duration_ms=duration_ms,
            succeeded=status < 400,
        )

    async def finish(
        self,
        ex: Exchange,
        *,
        status: int,
        usage: Usage | None,
        upstream_id: str | None,
        produced_text: str = "",
        partial_usage: Usage | None = None,
    ) -> UsageEvent:
        final = self._usage(ex, status, usage, produced_text, partial_usage)
        latency_ms = int((time.perf_counter() - ex.started) * 1000)
        charge = self._charge(ex, status, final, latency_ms)
        if charge is None:
            log.warning(
                "unpriced model recorded without money",
                extra={"request_id": str(ex.request_id), "model": ex.model},
            )
        event = UsageEvent(
            id=ex.request_id,
            created_at=ex.created_at,
            customer_id=ex.principal.customer_id,
            project_id=ex.principal.project_id,
            user_id=ex.principal.user_id,
            key_id=ex.principal.key_id,
            tier=ex.principal.tier,
            provider=ex.provider,
            model=ex.model,
            endpoint=ex.endpoint.name,
            status_code=status,
            streamed=ex.streamed,
            input_tokens=final.input_tokens,
            output_tokens=final.output_tokens,
            cached_input_tokens=final.cached_input_tokens,
            cache_write_tokens=final.cache_write_tokens,
            reasoning_tokens=final.reasoning_tokens,
            usage_source=final.source,
            cost_usd=charge.cost_usd if charge is not None else None,
            price_usd=charge.price_usd if charge is not None else None,
            price_version=charge.price_version if charge is not None else None,
            latency_ms=latency_ms,
            upstream_request_id=upstream_id,
            metadata={"config_hash": ex.snapshot.settings.source_hash, **ex.metadata},
        )
        await self._writer.submit(event)
        if ex.admission is not None:
            # Off the response path: the event is journaled already; the quota catches up a
            # moment later (the reservation ttl covers a crash in between).
            self._quotas.settle_soon(
                ex.admission,
                tokens=final.total_tokens,
                spend_usd=charge.price_usd if charge is not None else None,
            )
        self._observe(ex, event, final)
        return event

    def _observe(self, ex: Exchange, event: UsageEvent, usage: Usage) -> None:
        price = ex.snapshot.pricing.price(ex.model)
        model_label = price.model if price is not None else "other"  # bounded label values
        route = ex.endpoint.name
        self._metrics.observe_request(
            route, ex.provider, model_label, event.status_code, time.perf_counter() - ex.started
        )
        self._metrics.observe_usage(ex.provider, usage, event.cost_usd, event.price_usd)
        if self._access_log.enabled:
            self._access_log.write(
                {
                    "request_id": str(event.id),
                    "customer_id": event.customer_id,
                    "key_id": event.key_id,
                    "provider": event.provider,
                    "model": event.model,
                    "endpoint": route,
                    "status": event.status_code,
                    "streamed": event.streamed,
                    "input_tokens": event.input_tokens,
                    "output_tokens": event.output_tokens,
                    "usage_source": event.usage_source,
                    "price_usd": None if event.price_usd is None else str(event.price_usd),
                    "latency_ms": event.latency_ms,
                }
            )


def _provisional_line(
    ex: Exchange,
    input_tokens: int,
    output_tokens: int,
    latency_ms: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
    upstream_id: str | None = None,
) -> bytes:
    p = ex.principal
    return encode_provisional(
        ex.request_id,
        ex.created_at,
        p.customer_id,
        p.project_id,
        p.user_id,
        p.key_id,
        p.tier,
        ex.provider,
        ex.model,
        ex.endpoint.name,
        INTERRUPTED_STATUS,
        ex.streamed,
        input_tokens,
        output_tokens,
        cached_input_tokens,
        cache_write_tokens,
        latency_ms,
        upstream_id,
        {
            "config_hash": ex.snapshot.settings.source_hash,
            **ex.metadata,
            "interrupted": INTERRUPTED,
        },
    )


def interrupted_pricer(runtime: Runtime) -> Callable[[UsageEvent], UsageEvent]:
    """`UsageWriter(reprice=...)`: price the event of an exchange a stopped gateway left in
    flight (replayed with NULL money) as `Recorder.finish` prices a finished one, with the
    pricing in force now; an unpriced model keeps NULL money."""

    def reprice(event: UsageEvent) -> UsageEvent:
        pricing = runtime.current.pricing
        usage = Usage(
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            cached_input_tokens=event.cached_input_tokens,
            cache_write_tokens=event.cache_write_tokens,
            reasoning_tokens=event.reasoning_tokens,
            source="estimated",
        )
        charge = pricing.charge(
            event.model,
            usage,
            at=event.created_at,
            customer_id=event.customer_id,
            tier=event.tier,
            duration_ms=event.latency_ms,
            succeeded=event.status_code < 400,
        )
        if charge is None:
            return event
        return replace(
            event,
            cost_usd=charge.cost_usd,
            price_usd=charge.price_usd,
            price_version=charge.price_version,
        )

    return reprice
