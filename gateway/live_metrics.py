"""Metrics read at scrape time (writer, journal, quotas): declared once, exported two ways.

`LiveValues` is what the gateway's objects already count in plain ints; reading them costs
nothing per request. `LIVE` declares each metric once: name, help, type, labels, how its
samples come out of a `LiveValues`, and how a gauge is merged over `serve --workers N`.

- One process (`LiveCollector`): the values are read when /metrics is scraped.
- Several workers (`LiveMirror`, gateway.metrics_multiprocess): each worker copies its values
  into prometheus-client's per-process files with `publish()` (every second, and right before
  it answers a scrape), so a scrape on any worker sums them. Counters are published as the
  increase since the last publish; gauges are set. A worker's counters keep counting after it
  exits (its file stays); its gauges leave the sum when it exits. What another worker counted
  in the last second may not be in a scrape yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


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


Samples = Iterable[tuple[tuple[str, ...], int]]  # (label values, value)
# How a gauge is merged over workers (prometheus-client's multiprocess_mode); "live" modes
# drop a worker's value when it exits.
Merge = Literal["livesum", "livemax"]


@dataclass(frozen=True, slots=True)
class LiveMetric:
    name: str
    help: str
    kind: Literal["gauge", "counter"]
    samples: Callable[[LiveValues], Samples]
    labels: tuple[str, ...] = ()
    merge: Merge = "livesum"


def _one(read: Callable[[LiveValues], int]) -> Callable[[LiveValues], Samples]:
    return lambda v: (((), read(v)),)


LIVE: tuple[LiveMetric, ...] = (
    LiveMetric(
        "tollbooth_writer_backlog",
        "Usage events waiting to be written.",
        "gauge",
        _one(lambda v: v.writer_backlog),
    ),
    LiveMetric(
        "tollbooth_writer_written",
        "Usage events written to Postgres.",
        "counter",
        _one(lambda v: v.writer_written),
    ),
    LiveMetric(
        "tollbooth_inflight_exchanges",
        "Forwarded requests in progress.",
        "gauge",
        _one(lambda v: v.inflight),
    ),
    LiveMetric(
        "tollbooth_quota_refusals",
        "429s by the limit that refused.",
        "counter",
        lambda v: (((limit,), n) for limit, n in sorted(v.quota_refusals.items())),
        labels=("limit",),
    ),
    LiveMetric(
        "tollbooth_redis_errors",
        "Quota store failures, by what was done.",
        "counter",
        lambda v: (
            (("admitted_without_quota",), v.redis_error_admissions),
            (("settle_failed",), v.quota_settle_failures),
        ),
        labels=("action",),
    ),
    LiveMetric(
        "tollbooth_journal_bytes",
        "Usage journal size on disk.",
        "gauge",
        _one(lambda v: v.journal_bytes),
    ),
    LiveMetric(
        "tollbooth_journal_over_budget",
        "1 while the journal is over storage.journal_max_mb.",
        "gauge",
        _one(lambda v: int(v.journal_over_budget)),
        merge="livemax",
    ),
    LiveMetric(
        "tollbooth_dead_lettered_events",
        "Events Postgres refused, kept in usage_dead_letters.",
        "counter",
        _one(lambda v: v.dead_lettered),
    ),
    LiveMetric(
        "tollbooth_events_lost",
        "Events lost (disk refused the journal and memory was full).",
        "counter",
        _one(lambda v: v.events_lost),
    ),
    LiveMetric(
        "tollbooth_journal_errors",
        "Journal write or sync failures.",
        "counter",
        _one(lambda v: v.journal_errors),
    ),
    LiveMetric(
        "tollbooth_shadow_refusals",
        "Refusals a shadow tier logged but did not enforce.",
        "counter",
        _one(lambda v: v.shadow_refusals),
    ),
)


class LiveCollector(Collector):
    """One process: every LIVE metric read from `read()` at each scrape."""

    def __init__(self, read: Callable[[], LiveValues]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        for metric in LIVE:
            family_type = GaugeMetricFamily if metric.kind == "gauge" else CounterMetricFamily
            family = family_type(metric.name, metric.help, labels=metric.labels)
            for labels, value in metric.samples(values):
                family.add_metric(list(labels), value)
            yield family


class LiveMirror:
    """Several workers: every LIVE metric as a prometheus-client metric of this process,
    brought up to date by `publish()` (see the module doc)."""

    def __init__(self, read: Callable[[], LiveValues], registry: CollectorRegistry) -> None:
        self._read = read
        self._metrics: list[tuple[LiveMetric, Any]] = [
            (
                m,
                Gauge(m.name, m.help, m.labels, registry=registry, multiprocess_mode=m.merge)
                if m.kind == "gauge"
                else Counter(m.name, m.help, m.labels, registry=registry),
            )
            for m in LIVE
        ]
        self._published: dict[tuple[str, tuple[str, ...]], int] = {}

    def publish(self) -> None:
        values = self._read()
        for live, metric in self._metrics:
            for labels, value in live.samples(values):
                child = metric.labels(*labels) if labels else metric
                if live.kind == "gauge":
                    child.set(value)
                    continue
                key = (live.name, labels)
                increase = value - self._published.get(key, 0)
                if increase > 0:
                    child.inc(increase)
                    self._published[key] = value
