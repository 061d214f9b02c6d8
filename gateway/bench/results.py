"""What one benchmark run measured: a `PhaseResult` per (scenario, target, workers, concurrency).

`merge_loadgen(outputs)` combines the JSON of one or more generator processes that shared a
window; `percentile` is nearest-rank on the sorted samples. Times are floats in milliseconds
or seconds (they are measurements, not money). Derived numbers (req/s, CPU per request, the
gateway/direct comparison) are computed here from the raw counts, so the table and the JSON
can never disagree. A floor phase (a proxy that only moves bytes, see `floor_proxy.py`)
carries the direct phase it is compared with, and its JSON the comparison (`versus_direct`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile of already sorted values; 0 for no values."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class LoadgenTotals:
    """The generators' output for one phase, merged."""

    window_s: float
    latency_us: list[int]  # sorted, completions inside the window
    ttfb_us: list[int]  # sorted
    window_errors: int
    statuses: dict[str, int]  # whole run: warm-up, window and the last in-flight requests
    failures: int
    cpu_s: float  # the generators' own CPU time inside the window
    events: int = 0  # SSE events received, the whole run
    window_events: int = 0  # of those, inside the window
    wait_s: float = 0.0  # the generators' run-queue wait inside the window

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())


def merge_loadgen(outputs: Sequence[dict[str, Any]]) -> LoadgenTotals:
    statuses: Counter[str] = Counter()
    latency: list[int] = []
    ttfb: list[int] = []
    errors = failures = events = window_events = 0
    cpu_s = wait_s = 0.0
    for out in outputs:
        cpu_s += float(out["cpu_s"])
        latency += out["latency_us"]
        ttfb += out["ttfb_us"]
        errors += out["window_errors"]
        failures += out["failures"]
        events += out.get("events", 0)
        window_events += out.get("window_events", 0)
        wait_s += out.get("wait_s", 0.0)
        statuses.update({code: int(n) for code, n in out["statuses"].items()})
    return LoadgenTotals(
        window_s=float(outputs[0]["window_s"]) if outputs else 0.0,
        latency_us=sorted(latency),
        ttfb_us=sorted(ttfb),
        window_errors=errors,
        statuses=dict(sorted(statuses.items())),
        failures=failures,
        cpu_s=cpu_s,
        events=events,
        window_events=window_events,
        wait_s=wait_s,
    )


@dataclass(frozen=True)
class PhaseResult:
    scenario: str
    target: str  # "gateway", "direct" or "floor"
    workers: int | None  # gateway worker processes; None for direct and floor
    concurrency: int
    loadgen_procs: int
    window_s: float
    requests: int  # completed inside the window
    window_errors: int  # of those, answers other than 200
    completed: int  # every answer of the phase (warm-up and drain included)
    statuses: dict[str, int]
    failures: int  # broken connections, unframeable answers
    p50_ms: float
    p90_ms: float
    p99_ms: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # process group -> CPU s in window
    other_cpu_s: float = 0.0  # CPU used in the window by processes outside the benchmark
    events_written: int | None = None  # usage_events rows this phase added (gateway only)
    events: int = 0  # SSE events the clients received, the whole phase
    window_events: int = 0  # of those, inside the window
    # The gateway's RSS (all its processes) before the phase and its peak inside the window.
    rss_before_bytes: int | None = None
    rss_peak_bytes: int | None = None
    # Process group -> seconds its main threads waited for a CPU in the window.
    wait_s: dict[str, float] = field(default_factory=dict)
    # A floor phase: the direct phase of the same scenario and concurrency, run just before.
    compared_with: PhaseResult | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.window_s if self.window_s else 0.0

    @property
    def events_per_s(self) -> float:
        return self.window_events / self.window_s if self.window_s else 0.0

    def cpu_us_per_request(self, group: str) -> float | None:
        if group not in self.cpu_s or not self.requests:
            return None
        return self.cpu_s[group] / self.requests * 1e6

    def cpu_us_per_event(self, group: str) -> float | None:
        """CPU of `group` in the window per SSE event the clients received in it."""
        if group not in self.cpu_s or not self.window_events:
            return None
        return self.cpu_s[group] / self.window_events * 1e6

    @property
    def rss_kib_per_stream(self) -> float | None:
        """The gateway's RSS growth over the phase per open stream (connection)."""
        if self.rss_before_bytes is None or self.rss_peak_bytes is None:
            return None
        return (self.rss_peak_bytes - self.rss_before_bytes) / 1024 / self.concurrency

    def versus_direct(self) -> Comparison | None:
        """This phase next to the one it is compared with (a floor phase; else None)."""
        return None if self.compared_with is None else Comparison(self, self.compared_with)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["compared_with"]
        versus = self.versus_direct()
        if versus is not None:
            data["versus_direct"] = versus.deltas()
        data["rps"] = round(self.rps, 1)
        data["events_per_s"] = round(self.events_per_s, 1)
        data["cpu_us_per_event"] = {
            group: round(value, 2)
            for group in self.cpu_s
            if (value := self.cpu_us_per_event(group)) is not None
        }
        per_stream = self.rss_kib_per_stream
        data["rss_kib_per_stream"] = None if per_stream is None else round(per_stream, 2)
        data["cpu_us_per_request"] = {
            group: round(value, 1)
            for group in self.cpu_s
            if (value := self.cpu_us_per_request(group)) is not None
        }
        return data


def phase_result(
    *,
    scenario: str,
    target: str,
    workers: int | None,
    concurrency: int,
    loadgen_procs: int,
    totals: LoadgenTotals,
    cpu_s: dict[str, float],
    other_cpu_s: float,
    events_written: int | None,
    rss_before_bytes: int | None = None,
    rss_peak_bytes: int | None = None,
    wait_s: dict[str, float] | None = None,
) -> PhaseResult:
    lat, ttfb = totals.latency_us, totals.ttfb_us
    return PhaseResult(
        scenario=scenario,
        target=target,
        workers=workers,
        concurrency=concurrency,
        loadgen_procs=loadgen_procs,
        window_s=totals.window_s,
        requests=len(lat),
        window_errors=totals.window_errors,
        completed=totals.completed,
        statuses=totals.statuses,
        failures=totals.failures,
        p50_ms=percentile(lat, 50) / 1000,
        p90_ms=percentile(lat, 90) / 1000,
        p99_ms=percentile(lat, 99) / 1000,
        ttfb_p50_ms=percentile(ttfb, 50) / 1000,
        ttfb_p99_ms=percentile(ttfb, 99) / 1000,
        cpu_s=cpu_s,
        other_cpu_s=other_cpu_s,
        events_written=events_written,
        events=totals.events,
        window_events=totals.window_events,
        rss_before_bytes=rss_before_bytes,
        rss_peak_bytes=rss_peak_bytes,
        wait_s=wait_s or {},
    )


@dataclass(frozen=True)
class Comparison:
    """One gateway (or floor) phase next to the direct phase of the same scenario and
    concurrency; `gateway` is the phase compared."""

    gateway: PhaseResult
    direct: PhaseResult | None

    @property
    def added_p50_ms(self) -> float | None:
        return None if self.direct is None else self.gateway.p50_ms - self.direct.p50_ms

    @property
    def added_ttfb_p50_ms(self) -> float | None:
        return None if self.direct is None else self.gateway.ttfb_p50_ms - self.direct.ttfb_p50_ms

    @property
    def added_ttfb_p99_ms(self) -> float | None:
        return None if self.direct is None else self.gateway.ttfb_p99_ms - self.direct.ttfb_p99_ms

    @property
    def ratio(self) -> float | None:
        """Gateway throughput as a fraction of direct throughput."""
        if self.direct is None or not self.direct.rps:
            return None
        return self.gateway.rps / self.direct.rps

    def deltas(self) -> dict[str, float | None]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "added_p50_ms": r(self.added_p50_ms),
            "added_ttfb_p50_ms": r(self.added_ttfb_p50_ms),
            "added_ttfb_p99_ms": r(self.added_ttfb_p99_ms),
            "ratio_to_direct": r(self.ratio),
        }

    def to_json(self) -> dict[str, Any]:
        deltas = self.deltas()
        return {
            "scenario": self.gateway.scenario,
            "concurrency": self.gateway.concurrency,
            "workers": self.gateway.workers,
            "added_p50_ms": deltas["added_p50_ms"],
            "added_ttfb_p50_ms": deltas["added_ttfb_p50_ms"],
            "added_ttfb_p99_ms": deltas["added_ttfb_p99_ms"],
            "ratio_gateway_direct": deltas["ratio_to_direct"],
            "events_written": self.gateway.events_written,
            "requests_completed": self.gateway.completed,
        }


def compare(phases: Sequence[PhaseResult]) -> list[Comparison]:
    direct = {(p.scenario, p.concurrency): p for p in phases if p.target == "direct"}
    return [
        Comparison(p, direct.get((p.scenario, p.concurrency)))
        for p in phases
        if p.target == "gateway"
    ]


@dataclass
class BenchReport:
    """A whole run: what ran it, on what machine, and every phase."""

    command: str
    machine: dict[str, Any]
    settings: dict[str, Any]  # the benchmark's options and the scenarios' shapes
    phases: list[PhaseResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] | None = None  # ProfileSummary.to_json() of the profiled phase
    # The soak: one row per sample, {"elapsed_s", "events", "gateway_rss_mib"}.
    soak: list[dict[str, Any]] = field(default_factory=list)
