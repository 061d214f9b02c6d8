"""A `BenchReport` as text tables (for people, the README) or one JSON object (`--json`).

The text starts with the exact command and the machine's size, then one table per scenario:
a row per (concurrency, target), the gateway rows carrying what compares them with direct
(added p50 and time to first byte, the throughput ratio) and the events check; then the
issue's targets, each marked met or not from this run alone; then the profile, if one was
taken. Times are milliseconds; CPU is microseconds per request completed in the window.
The paced-streams scenario has its own columns and targets (`report_streams.py`); a target
whose phase did not run is listed as not run.
`other` is the CPU time (seconds, all cores) that processes outside the benchmark used during
the window: when it is large, the machine was shared and the numbers are low; `notes_on`
says so under the tables.

Nothing here measures; it only formats what `results.py` computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.bench.report_streams import (
    STREAMS_COLUMNS,
    STREAMS_HEADER,
    evaluate_stream_targets,
    stream_notes,
    streams_row,
)
from gateway.bench.results import BenchReport, Comparison, PhaseResult, compare
from gateway.bench.scenarios import PACED_STREAMS

GROUPS = ("gateway", "upstream", "infra", "loadgen")
TOP_FUNCTIONS = 25
UPSTREAMS = {
    "mock": "tollbooth mock-provider (aiohttp)",
    "raw": "the mock's answers replayed by a bare uvloop server",
}

# (name, the words); evaluate_targets measures each from this run's comparisons.
TARGETS: tuple[tuple[str, str], ...] = (
    ("chat_c16_rps", "non-streaming chat at c=16 >= 3,000 req/s"),
    ("stream_c16_rps", "streaming chat at c=16 >= 1,500 streams/s"),
    ("added_p50_c1", "added p50 latency at c=1 <= 0.75 ms"),
    ("added_ttfb_paced", "added time to first byte, paced stream c=1 <= 0.75 ms"),
    ("cpu_per_request", "gateway CPU per non-streaming request (c=16) <= 300 us"),
    ("events", "events written == requests completed (every gateway phase)"),
)


def _find(rows: list[Comparison], scenario: str, concurrency: int) -> Comparison | None:
    for row in rows:  # the first workers value is the one the targets speak of
        if row.gateway.scenario == scenario and row.gateway.concurrency == concurrency:
            return row
    return None


def evaluate_targets(report: BenchReport) -> list[dict[str, Any]]:
    rows = compare(report.phases)
    chat16, stream16 = _find(rows, "chat", 16), _find(rows, "stream", 16)
    chat1, paced1 = _find(rows, "chat", 1), _find(rows, "paced", 1)
    measured: dict[str, tuple[float | None, Callable[[float], bool], str]] = {
        "chat_c16_rps": (chat16.gateway.rps if chat16 else None, lambda v: v >= 3000, "req/s"),
        "stream_c16_rps": (
            stream16.gateway.rps if stream16 else None,
            lambda v: v >= 1500,
            "streams/s",
        ),
        "added_p50_c1": (chat1.added_p50_ms if chat1 else None, lambda v: v <= 0.75, "ms"),
        "added_ttfb_paced": (
            paced1.added_ttfb_p50_ms if paced1 else None,
            lambda v: v <= 0.75,
            "ms",
        ),
        "cpu_per_request": (
            chat16.gateway.cpu_us_per_request("gateway") if chat16 else None,
            lambda v: v <= 300,
            "us",
        ),
    }
    mismatched = [r for r in rows if r.gateway.events_written != r.gateway.completed]
    out = []
    for name, words in TARGETS:
        if name == "events":
            value: float | None = float(len(mismatched)) if rows else None
            met = bool(rows) and not mismatched
            unit = "phases differing"
        else:
            value, check, unit = measured[name]
            met = value is not None and check(value)
        out.append(
            {
                "target": name,
                "description": words,
                "measured": None if value is None else round(value, 3),
                "unit": unit,
                "met": met,
            }
        )
    return out + evaluate_stream_targets(rows, PACED_STREAMS)


def to_json(report: BenchReport) -> dict[str, Any]:
    return {
        "command": report.command,
        "machine": report.machine,
        "settings": report.settings,
        "phases": [p.to_json() for p in report.phases],
        "comparisons": [c.to_json() for c in compare(report.phases)],
        "targets": evaluate_targets(report),
        "profile": report.profile,
        "soak": report.soak,
        "notes": report.notes,
    }


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _row(phase: PhaseResult, comparison: Comparison | None) -> list[str]:
    target = phase.target if phase.workers is None else f"{phase.target} w{phase.workers}"
    cells = [
        str(phase.concurrency),
        target,
        f"{phase.rps:,.0f}",
        f"{phase.p50_ms:.2f}",
        f"{phase.p90_ms:.2f}",
        f"{phase.p99_ms:.2f}",
        f"{phase.ttfb_p50_ms:.2f}",
        f"{phase.ttfb_p99_ms:.2f}",
        _num(comparison.added_p50_ms if comparison else None, "+.2f"),
        _num(comparison.added_ttfb_p50_ms if comparison else None, "+.2f"),
        _num(comparison.ratio if comparison else None, ".2f"),
    ]
    cells += [_num(phase.cpu_us_per_request(group), ",.0f") for group in GROUPS]
    events = "" if phase.events_written is None else f"{phase.events_written}/{phase.completed}"
    if phase.events_written is not None and phase.events_written != phase.completed:
        events += " !"
    errors = phase.window_errors + phase.failures
    cells += [events, str(errors) if errors else "", f"{phase.other_cpu_s:.1f}"]
    return cells


HEADER = [
    "c",
    "target",
    "req/s",
    "p50",
    "p90",
    "p99",
    "ttfb50",
    "ttfb99",
    "+p50",
    "+ttfb",
    "gw/dir",
    "gw cpu",
    "upstr",
    "pg+vk",
    "loadgen",
    "events/done",
    "err",
    "other",
]


def _table(rows: list[list[str]], header: list[str] = HEADER) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i == 1 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render_text(report: BenchReport) -> str:
    m, s = report.machine, report.settings
    lines = [
        "tollbooth bench",
        f"command:  {report.command}",
        f"machine:  {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM, "
        f"Python {m['python']}, Linux {m['kernel']}; load average at start "
        f"{m['load_average_1m_5m'][0]} (1 min) {m['load_average_1m_5m'][1]} (5 min)",
        f"phases:   {s['duration_s']:g} s measured after {s['warmup_s']:g} s+ of warm-up; "
        f"gateway workers {','.join(map(str, s['workers']))}; "
        f"load generator processes per phase <= {s['loadgen_procs']}; "
        f"upstream: {UPSTREAMS[s['upstream']]}",
        "columns:  times in ms (ttfb: to the first body byte, i.e. the first SSE event); "
        "+p50/+ttfb: gateway minus direct; gw/dir: throughput ratio;",
        "          CPU in us per request (gateway workers, upstream, Postgres+Valkey, "
        "load generator); events/done: usage_events rows / answers received;",
        "          err: non-200 answers or broken connections; other: CPU s used by "
        "processes outside the benchmark during the window",
    ]
    if s.get("cpus"):
        pins = "; ".join(f"{role} on CPUs {','.join(map(str, c))}" for role, c in s["cpus"].items())
        lines.append(f"pinned:   {pins}")
    comparisons = {
        (c.gateway.scenario, c.gateway.concurrency, c.gateway.workers): c
        for c in compare(report.phases)
    }
    for name, scenario in s["scenarios"].items():
        phases = [p for p in report.phases if p.scenario == name]
        if not phases:
            continue
        phases.sort(key=lambda p: (p.concurrency, p.target != "gateway", p.workers or 0))
        make_row, header = (
            (streams_row, STREAMS_HEADER) if name == PACED_STREAMS else (_row, HEADER)
        )
        rows = [
            make_row(
                p,
                comparisons.get((p.scenario, p.concurrency, p.workers))
                if p.target == "gateway"
                else None,
            )
            for p in phases
        ]
        lines += ["", f"== {scenario['title']} ==", *_table(rows, header)]
        if name == PACED_STREAMS:
            lines += STREAMS_COLUMNS
    lines += ["", "targets (the README's Benchmark; this run):"]
    for target in evaluate_targets(report):
        value = "n/a" if target["measured"] is None else f"{target['measured']:,} {target['unit']}"
        mark = "met" if target["met"] else "NOT met"
        if target["measured"] is None:
            mark = "not run"
        lines.append(f"  [{mark:>7}] {target['description']}: {value}")
    if report.profile:
        lines += ["", *render_profile(report.profile)]
    if report.soak:
        lines += [
            "",
            "soak: steady non-streaming chat, gateway RSS (all worker processes):",
            "  elapsed s  events stored  gateway RSS MiB",
        ]
        lines += [
            f"  {row['elapsed_s']:9.0f}  {row['events']:13,}  {row['gateway_rss_mib']:15.1f}"
            for row in report.soak
        ]
    if report.notes:
        lines += ["", "notes:", *(f"  - {note}" for note in report.notes)]
    return "\n".join(lines) + "\n"


def render_profile(profile: dict[str, Any], top: int = TOP_FUNCTIONS) -> list[str]:
    lines = [
        f"profile: py-spy, gateway processes, {profile['phase']}, "
        f"{profile['samples']} samples on CPU ({profile['source']}; "
        f"{profile['idle_samples_left_out']} samples of an idle thread left out)"
    ]
    packages = ", ".join(
        f"{row['package']} {row['percent']:.1f}%" for row in profile["self_by_package"][:12]
    )
    lines.append(f"  self time by package: {packages}")
    for title, key in (("self time", "top_self"), ("cumulative time", "top_cumulative")):
        lines.append(f"  top {top} functions by {title}:")
        for row in profile[key][:top]:
            lines.append(f"    {row['percent']:6.2f}%  {row['samples']:6d}  {row['function']}")
    return lines


def notes_on(report: BenchReport) -> list[str]:
    """What a reader must know to trust (or not) this run's numbers."""
    notes = []
    capacity = report.machine["nproc"] * report.settings["duration_s"]
    shared = [p for p in report.phases if p.other_cpu_s > 0.1 * capacity]
    if shared:
        worst = max(p.other_cpu_s for p in shared) / capacity
        notes.append(
            f"the machine was shared: in {len(shared)} of {len(report.phases)} phases other "
            f"processes used over 10% of the CPU (up to {worst:.0%}); those numbers are low"
        )
    if report.settings["upstream"] == "mock":
        upstream = [
            v
            for p in report.phases
            if p.target == "direct"
            if (v := p.cpu_us_per_request("upstream")) is not None and p.concurrency > 1
        ]
        if upstream:
            notes.append(
                f"the aiohttp mock provider used ~{min(upstream):,.0f} us of CPU per request on "
                f"the same {report.machine['nproc']} CPUs as the gateway; "
                "`--upstream raw` replays its answers from a bare uvloop server instead"
            )
    return notes + stream_notes(report, PACED_STREAMS)
