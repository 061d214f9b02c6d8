"""Prometheus metrics of one gateway process, in a registry of its own (no module globals).

Label values are bounded: route names come from the route table, providers from the config,
models from the price catalog (any other model string is "other"), statuses are HTTP codes,
limits are the five tier limit names. No key, customer id, request id or other string a
client chooses ever becomes a label. Money is counted in integer micro-dollars.

With `serve --workers N` each worker exposes its own counters; a scrape through the shared
port reaches one worker. Scrape each worker (or run one worker per port) to sum them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pricing.cost import usd_to_micros_ceil
from pricing.models import Usage

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tollbooth_requests", "Forwarded requests by outcome.",
            ["route", "provider", "model", "status"], registry=r)
        self.refused = Counter(
            "tollbooth_refused_requests", "Requests the gateway answered itself (never forwarded).",
            ["route", "status"], registry=r)
        self.latency = Histogram(
            "tollbooth_request_duration_seconds", "Gateway request latency, end to end.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram(
            "tollbooth_time_to_first_byte_seconds", "Time to the first streamed byte.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter(
            "tollbooth_tokens", "Tokens metered, by kind.", ["provider", "kind"], registry=r)
        self.cost_micros = Counter(
            "tollbooth_cost_micro_usd", "Provider list price of metered usage, micro-dollars.",
            ["provider"], registry=r)
        self.price_micros = Counter(
            "tollbooth_price_micro_usd", "What customers are charged, micro-dollars.",
            ["provider"], registry=r)
        self.estimated = Counter(
            "tollbooth_usage_estimated", "Events whose usage was estimated with tiktoken.",
            registry=r)
        self.unpriced = Counter(
            "tollbooth_usage_unpriced", "Events recorded without money (unknown model).",
            registry=r)
        self.config_reloads = Counter(
            "tollbooth_config_reloads", "Config reloads by outcome.", ["outcome"], registry=r)
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

    def observe_request(self, route: str, provider: str, model: str, status: int,
                        seconds: float) -> None:
        """One forwarded request done: `model` must be a bounded label (catalog name/other)."""
        key = (route, provider, model, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self._child(self.requests, route, provider, model, str(status)),
                self._child(self.latency, route))
        children[0].inc()
        children[1].observe(seconds)

    def observe_ttfb(self, route: str, seconds: float) -> None:
        self._child(self.ttfb, route).observe(seconds)

    def watch(self, read: Callable[[], LiveValues]) -> None:
        """Register values read at scrape time (writer, quotas), costing nothing per request."""
        self.registry.register(_LiveCollector(read))

    def observe_usage(self, provider: str, usage: Usage, cost_usd: Decimal | None,
                      price_usd: Decimal | None) -> None:
        tokens, child = self.tokens, self._child
        children = self._token_children.get(provider)
        if children is None:
            children = self._token_children[provider] = (
                child(tokens, provider, "input"), child(tokens, provider, "output"))
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
                child(self.cost_micros, provider), child(self.price_micros, provider))
        money[0].inc(usd_to_micros_ceil(cost_usd))
        money[1].inc(usd_to_micros_ceil(price_usd))

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class LiveValues:
    writer_backlog: int
    writer_written: int
    inflight: int
    quota_refusals: Mapping[str, int] = field(default_factory=dict)
    redis_error_admissions: int = 0
    quota_settle_failures: int = 0
    shadow_refusals: int = 0
    journal_bytes: int = 0
    journal_over_budget: bool = False
    dead_lettered: int = 0
    events_lost: int = 0
    journal_errors: int = 0


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveValues]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        v = self._read()
        yield GaugeMetricFamily("tollbooth_writer_backlog", "Usage events waiting to be written.",
                                value=v.writer_backlog)
        yield CounterMetricFamily("tollbooth_writer_written", "Usage events written to Postgres.",
                                  value=v.writer_written)
        yield GaugeMetricFamily("tollbooth_inflight_exchanges", "Forwarded requests in progress.",
                                value=v.inflight)
        refusals = CounterMetricFamily(
            "tollbooth_quota_refusals", "429s by the limit that refused.", labels=["limit"])
        for limit, count in sorted(v.quota_refusals.items()):
            refusals.add_metric([limit], count)
        yield refusals
        redis = CounterMetricFamily("tollbooth_redis_errors",
                                    "Quota store failures, by what was done.", labels=["action"])
        redis.add_metric(["admitted_without_quota"], v.redis_error_admissions)
        redis.add_metric(["settle_failed"], v.quota_settle_failures)
        yield redis
        yield GaugeMetricFamily("tollbooth_journal_bytes", "Usage journal size on disk.",
                                value=v.journal_bytes)
        yield GaugeMetricFamily("tollbooth_journal_over_budget",
                                "1 while the journal is over storage.journal_max_mb.",
                                value=int(v.journal_over_budget))
        yield CounterMetricFamily("tollbooth_dead_lettered_events",
                                  "Events Postgres refused, kept in usage_dead_letters.",
                                  value=v.dead_lettered)
        yield CounterMetricFamily("tollbooth_events_lost",
                                  "Events lost (disk refused the journal and memory was full).",
                                  value=v.events_lost)
        yield CounterMetricFamily("tollbooth_journal_errors", "Journal write or sync failures.",
                                  value=v.journal_errors)
        yield CounterMetricFamily("tollbooth_shadow_refusals",
                                  "Refusals a shadow tier logged but did not enforce.",
                                  value=v.shadow_refusals)
