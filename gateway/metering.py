"""Turn one finished exchange into its usage event, its quota settlement and its price.

`Recorder.finish` runs exactly once per forwarded request, whatever happened (success,
provider error, client disconnect, broken stream), from the proxy's `finally`:
- usage the provider reported is taken as is (`usage_source = provider`);
- a successful response without usage is counted with tiktoken from the prompt and the text
  produced (`usage_source = estimated`), never recorded as a silent zero;
- a provider error records its status with zero tokens unless the provider reported usage, and
  is charged only for reported tokens (no per-request fee for a failed request);
- an unpriced model (`unknown_model: allow_unpriced`) is recorded with NULL money, logged.
The event goes to the `UsageWriter` (journaled before the response completes); the quota
reservation is then settled with the actual tokens and price in a tracked background task, so
no Redis round trip sits in the client's latency. Neither step raises into the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from gateway.metrics import Metrics
from gateway.providers.base import Endpoint
from gateway.quotas import Admission, QuotaPolicy
from gateway.runtime import Snapshot
from gateway.tokens import TokenCounter
from pricing.models import Charge, Usage
from storage.accounts import KeyPrincipal
from storage.usage_event import UsageEvent
from storage.usage_writer import UsageWriter

log = logging.getLogger("tollbooth.metering")
access_log = logging.getLogger("tollbooth.access")

T = TypeVar("T")


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


class Recorder:
    def __init__(self, writer: UsageWriter, quotas: QuotaPolicy, tokens: TokenCounter,
                 metrics: Metrics) -> None:
        self._writer = writer
        self._quotas = quotas
        self._tokens = tokens
        self._metrics = metrics
        self._inflight: set[asyncio.Task[Any]] = set()

    def spawn(self, exchange: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run one exchange as a tracked task, so shutdown can wait for it to be billed."""
        task = asyncio.ensure_future(exchange)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def drain(self, timeout_s: float) -> None:
        """Wait for in-flight exchanges (and their events) before the writer closes."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=timeout_s)
            if self._inflight:
                log.error("%d exchanges still running at shutdown", len(self._inflight))

    def _usage(
        self, ex: Exchange, status: int, usage: Usage | None, produced_text: str,
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
            # moment later (a tracked task, drained at shutdown; the reservation ttl covers a
            # crash in between).
            self.spawn(self._quotas.settle(
                ex.admission,
                tokens=final.total_tokens,
                spend_usd=charge.price_usd if charge is not None else None,
            ))
        self._observe(ex, event, final)
        return event

    def _observe(self, ex: Exchange, event: UsageEvent, usage: Usage) -> None:
        price = ex.snapshot.pricing.price(ex.model)
        model_label = price.model if price is not None else "other"  # bounded label values
        metrics = self._metrics
        route = ex.endpoint.name
        metrics.requests.labels(route, ex.provider, model_label, str(event.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - ex.started)
        metrics.observe_usage(ex.provider, usage, event.cost_usd, event.price_usd)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"fields": {
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
            }})
