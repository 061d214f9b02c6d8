"""Prometheus metrics of one gateway process, in a registry of its own (no module globals).

Label values are bounded: route names come from the route table, providers from the config,
models from the price catalog (any other model string is "other"), statuses are HTTP codes,
limits are the five tier limit names. No key, customer id, request id or other string a
client chooses ever becomes a label. Money is counted in integer micro-dollars.

With `serve --workers N` a scrape on any worker answers the sum over every worker
(gateway.metrics_multiprocess): `render` then reads every worker's files, and the values
read at scrape time (gateway.live_metrics) are published by each worker every
`PUBLISH_INTERVAL_S`. One process renders its own registry, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway import metrics_multiprocess
from gateway.live_metrics import LiveCollector, LiveMirror, LiveValues
from pricing.cost import usd_to_micros_ceil
from pricing.models import Usage

__all__ = ["LiveValues", "Metrics"]

PUBLISH_INTERVAL_S = 1.0

log = logging.getLogger("tollbooth.metrics")

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Several workers: what a scrape answers is every worker's files summed.
        shared_dir = metrics_multiprocess.active_dir()
        self._merged = (
            None if shared_dir is None else metrics_multiprocess.merged_registry(shared_dir)
        )
        self._mirror: LiveMirror | None = None
        self._publisher: asyncio.Task[None] | None = None
        self.requests = Counter(
            "tollbooth_requests",
            "Forwarded requests by outcome.",
            ["route", "provider", "model", "status"],
            registry=r,
        )
        self.refused = Counter(
            "tollbooth_refused_requests",
            "Requests the gateway answered itself (never forwarded).",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tollbooth_request_duration_seconds",
            "Gateway request latency, end to end.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "tollbooth_time_to_first_byte_seconds",
            "Time to the first streamed byte.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "tollbooth_tokens", "Tokens metered, by kind.", ["provider", "kind"], registry=r
        )
        self.cost_micros = Counter(
            "tollbooth_cost_micro_usd",
            "Provider list price of metered usage, micro-dollars.",
            ["provider"],
            registry=r,
        )
        self.price_micros = Counter(
            "tollbooth_price_micro_usd",
            "What customers are charged, micro-dollars.",
            ["provider"],
            registry=r,
        )
        self.estimated = Counter(
            "tollbooth_usage_estimated",
            "Events whose usage was estimated with tiktoken.",
            registry=r,
        )
        self.unpriced = Counter(
            "tollbooth_usage_unpriced", "Events recorded without money (unknown model).", registry=r
        )
        self.config_reloads = Counter(
            "tollbooth_config_reloads", "Config reloads by outcome.", ["outcome"], registry=r
        )
        # Labelled children by (metric, label values): `labels()` costs a lock and a few
        # lookups per call, and the label values are bounded, so each child is looked up once.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # The children one request touches, by its labels: one lookup instead of several.
        self._request_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        self._token_children: dict[str, tuple[Any, Any]] = {}
        self._money_children: dict[str, tuple[Any, Any]] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(
        self, route: str, provider: str, model: str, status: int, seconds: float
    ) -> None:
        """One forwarded request done: `model` must be a bounded label (catalog name/other)."""
        key = (route, provider, model, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self._child(self.requests, route, provider, model, str(status)),
                self._child(self.latency, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_ttfb(self, route: str, seconds: float) -> None:
        self._child(self.ttfb, route).observe(seconds)

    def watch(self, read: Callable[[], LiveValues]) -> None:
        """Register values read at scrape time (writer, quotas), costing nothing per request.
        With several workers they are also published every PUBLISH_INTERVAL_S, by a task of
        the running loop that `aclose` stops."""
        if self._merged is None:
            self.registry.register(LiveCollector(read))
            return
        self._mirror = LiveMirror(read, self.registry)
        self._publisher = asyncio.get_running_loop().create_task(self._publish_forever())

    async def _publish_forever(self) -> None:
        assert self._mirror is not None
        while True:
            try:
                self._mirror.publish()
            except OSError as exc:  # the metrics files' disk; the next round tries again
                log.error("cannot publish metrics for the other workers: %s", exc)
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def aclose(self) -> None:
        """Stop publishing (several workers), after a last publish."""
        if self._publisher is None:
            return
        self._publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._publisher
        self._publisher = None
        if self._mirror is not None:
            self._mirror.publish()

    def observe_usage(
        self, provider: str, usage: Usage, cost_usd: Decimal | None, price_usd: Decimal | None
    ) -> None:
        tokens, child = self.tokens, self._child
        children = self._token_children.get(provider)
        if children is None:
            children = self._token_children[provider] = (
                child(tokens, provider, "input"),
                child(tokens, provider, "output"),
            )
        children[0].inc(usage.input_tokens)
        children[1].inc(usage.output_tokens)
        if usage.cached_input_tokens:
            child(tokens, provider, "cached_input").inc(usage.cached_input_tokens)
        if usage.cache_write_tokens:
            child(tokens, provider, "cache_write").inc(usage.cache_write_tokens)
        if usage.reasoning_tokens:
            child(tokens, provider, "reasoning").inc(usage.reasoning_tokens)
        if usage.source == "estimated":
            self.estimated.inc()
        if cost_usd is None or price_usd is None:
            self.unpriced.inc()
            return
        # Created on the first priced request only, like every labelled series here.
        money = self._money_children.get(provider)
        if money is None:
            money = self._money_children[provider] = (
                child(self.cost_micros, provider),
                child(self.price_micros, provider),
            )
        money[0].inc(usd_to_micros_ceil(cost_usd))
        money[1].inc(usd_to_micros_ceil(price_usd))

    def render(self) -> bytes:
        if self._merged is None:
            return generate_latest(self.registry)
        if self._mirror is not None:
            self._mirror.publish()  # this worker's own values as of now
        return generate_latest(self._merged)
