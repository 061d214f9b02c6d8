"""The paced-streams scenario's table and targets (the rest of the report is `report.py`).

A row per (concurrency, target): streams/s and the gateway/direct ratio, the stream's length
(p50 latency, s), time to first byte p50 / p99 and what the gateway added to each, SSE events
per stream and per second, CPU per relayed event (µs of the gateway, the upstream; the load
generator as a share of one core, so a reader can see it was not the bottleneck), how long
the generator's and the gateway's event loops waited for a CPU (the rest of the machine's
load), and the gateway's RSS: its peak in the window and the growth over the phase per open
stream. The floor row (a proxy that only moves bytes) fills the gateway's columns with its
own numbers: its ratio to direct, what it added to time to first byte, its CPU per event and
its run-queue wait; `floor_notes` says per concurrency how much of the gateway's CPU per
event the floor already costs.

The targets speak of one gateway worker at 1, 300, 600 and 2,000 open streams; each is
judged only when the run had that phase (else it is listed as not run). `stream_notes`
says when a direct phase was itself slowed (its streams longer than their delays, or its
first event later than one delay at p99): then the load generator and the upstream were at
their limit, not only the gateway, and the ratio there says less.

Nothing here measures; it only formats what `results.py` computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.bench.results import BenchReport, Comparison, PhaseResult

STREAMS_HEADER = [
    "c",
    "target",
    "streams/s",
    "gw/dir",
    "stream s",
    "ttfb50",
    "ttfb99",
    "+ttfb50",
    "+ttfb99",
    "ev/stream",
    "events/s",
    "gw us/ev",
    "upstr us/ev",
    "loadgen core",
    "lg wait",
    "gw wait",
    "RSS MiB",
    "KiB/stream",
    "events/done",
    "err",
    "other",
]

# (name, concurrency, the words, how the comparison is measured, the check, unit)
_Measure = Callable[[Comparison], float | None]
STREAM_TARGETS: tuple[tuple[str, int, str, _Measure, Callable[[float], bool], str], ...] = (
    (
        "streams_c300_ratio",
        300,
        "paced streams, 300 open: >= 0.97 of direct streams/s",
        lambda c: c.ratio,
        lambda v: v >= 0.97,
        "x direct",
    ),
    (
        "streams_c300_added_ttfb_p99",
        300,
        "paced streams, 300 open: added time to first byte p99 <= 10 ms",
        lambda c: c.added_ttfb_p99_ms,
        lambda v: v <= 10,
        "ms",
    ),
    (
        "streams_c300_cpu_per_event",
        300,
        "paced streams, 300 open: gateway CPU per relayed event <= 20 us",
        lambda c: c.gateway.cpu_us_per_event("gateway"),
        lambda v: v <= 20,
        "us",
    ),
    (
        "streams_c600_ratio",
        600,
        "paced streams, 600 open: >= 0.95 of direct streams/s",
        lambda c: c.ratio,
        lambda v: v >= 0.95,
        "x direct",
    ),
    (
        "streams_c600_added_ttfb_p99",
        600,
        "paced streams, 600 open: added time to first byte p99 <= 25 ms",
        lambda c: c.added_ttfb_p99_ms,
        lambda v: v <= 25,
        "ms",
    ),
    (
        "streams_c1_added_ttfb",
        1,
        "paced streams, one at a time: added time to first byte p50 <= 1 ms",
        lambda c: c.added_ttfb_p50_ms,
        lambda v: v <= 1,
        "ms",
    ),
    (
        "streams_c2000_rss",
        2000,
        "paced streams, 2,000 open: gateway RSS growth <= 20 KiB per open stream",
        lambda c: c.gateway.rss_kib_per_stream,
        lambda v: v <= 20,
        "KiB",
    ),
)


def evaluate_stream_targets(rows: list[Comparison], scenario: str) -> list[dict[str, Any]]:
    """The stream targets, when the run had any phase of `scenario` (else none)."""
    mine = [r for r in rows if r.gateway.scenario == scenario]
    if not mine:
        return []
    out = []
    for name, concurrency, words, measure, check, unit in STREAM_TARGETS:
        # The first workers value is the one the targets speak of.
        row = next((r for r in mine if r.gateway.concurrency == concurrency), None)
        value = measure(row) if row is not None else None
        out.append(
            {
                "target": name,
                "description": words,
                "measured": None if value is None else round(value, 3),
                "unit": unit,
                "met": value is not None and check(value),
            }
        )
    return out


def stream_notes(report: BenchReport, scenario: str) -> list[str]:
    settings = report.settings
    if scenario not in settings["scenarios"]:
        return []
    delay_ms = settings["token_delay_ms"]
    nominal_s = (settings["stream_tokens"] + 2) * delay_ms / 1000
    notes = []
    for phase in report.phases:
        if phase.scenario != scenario or phase.target != "direct" or not phase.requests:
            continue
        length_s = phase.p50_ms / 1000
        if length_s > 1.05 * nominal_s or phase.ttfb_p99_ms > max(delay_ms, 1):
            notes.append(
                f"paced streams, direct at c={phase.concurrency}: streams of "
                f"{length_s:.2f} s (paced: {nominal_s:.2f} s), first event at p99 "
                f"{phase.ttfb_p99_ms:.1f} ms: the load generator and the upstream were slowed "
                "too (see their CPU and `other`), so the gateway's ratio there says less"
            )
    return notes + floor_notes(report, scenario)


def floor_notes(report: BenchReport, scenario: str) -> list[str]:
    """Per concurrency with a floor phase: the floor's CPU per event next to the gateway's."""
    gateways = {
        p.concurrency: p
        for p in reversed(report.phases)  # the first workers value wins
        if p.scenario == scenario and p.target == "gateway"
    }
    notes = []
    for floor in report.phases:
        if floor.scenario != scenario or floor.target != "floor":
            continue
        gateway = gateways.get(floor.concurrency)
        floor_us = floor.cpu_us_per_event("floor")
        gateway_us = gateway.cpu_us_per_event("gateway") if gateway is not None else None
        if floor_us is None or gateway_us is None:
            continue
        notes.append(
            f"paced streams at c={floor.concurrency}: a proxy that only moves bytes used "
            f"{floor_us:.1f} us of CPU per relayed event, the gateway {gateway_us:.1f} us: "
            f"{max(0.0, gateway_us - floor_us):.1f} us per event is the gateway's own work"
        )
    return notes


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def streams_row(phase: PhaseResult, comparison: Comparison | None) -> list[str]:
    target = phase.target if phase.workers is None else f"{phase.target} w{phase.workers}"
    comparison = comparison or phase.versus_direct()
    proxy = "floor" if phase.target == "floor" else "gateway"  # whose columns the gw ones are
    loadgen = phase.cpu_s.get("loadgen")
    gw_wait = phase.wait_s.get(proxy)
    lg_wait = phase.wait_s.get("loadgen")
    per_stream = phase.events / phase.completed if phase.completed else None
    rss = phase.rss_peak_bytes
    events = "" if phase.events_written is None else f"{phase.events_written}/{phase.completed}"
    if phase.events_written is not None and phase.events_written != phase.completed:
        events += " !"
    errors = phase.window_errors + phase.failures
    return [
        str(phase.concurrency),
        target,
        f"{phase.rps:,.1f}",
        _num(comparison.ratio if comparison else None, ".2f"),
        f"{phase.p50_ms / 1000:.2f}",
        f"{phase.ttfb_p50_ms:.2f}",
        f"{phase.ttfb_p99_ms:.2f}",
        _num(comparison.added_ttfb_p50_ms if comparison else None, "+.2f"),
        _num(comparison.added_ttfb_p99_ms if comparison else None, "+.2f"),
        _num(per_stream, ".1f"),
        f"{phase.events_per_s:,.0f}",
        _num(phase.cpu_us_per_event(proxy), ".1f"),
        _num(phase.cpu_us_per_event("upstream"), ".1f"),
        _num(None if loadgen is None else loadgen / phase.window_s, ".0%"),
        _num(None if lg_wait is None else lg_wait / phase.window_s, ".0%"),
        _num(None if gw_wait is None else gw_wait / phase.window_s, ".0%"),
        _num(None if rss is None else rss / 2**20, ".1f"),
        _num(phase.rss_kib_per_stream, ".1f"),
        events,
        str(errors) if errors else "",
        f"{phase.other_cpu_s:.1f}",
    ]


STREAMS_COLUMNS = [
    "columns:  streams/s completed in the window, gw/dir their ratio; stream s: p50 length "
    "of a stream;",
    "          ttfb in ms to the first event, +: gateway minus direct; ev/stream: SSE events "
    "a client received per stream;",
    "          us/ev: CPU per event received in the window; loadgen core: the generator's "
    "CPU as a share of one core;",
    "          lg wait, gw wait: how long the load generator's and the gateway's event loops "
    "were runnable but waited for a CPU (a share of the window);",
    "          RSS MiB: the gateway's peak in the window; KiB/stream: its growth over the "
    "phase per open stream;",
    "          floor: a proxy that only moves bytes (gateway.bench.floor_proxy); its row's gw "
    "columns are its own",
]
