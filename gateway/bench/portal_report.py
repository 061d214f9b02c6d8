"""The portal benchmark's results and their text table.

A `ViewTiming` is one page measured two ways: `calls` (milliseconds per call of the functions
its route calls, in this process, straight on the pool) and `http_server` (the
`Server-Timing: app;dur=` of GET requests against the running app, i.e. the handler's time
with rendering) with `http_client` beside it (the whole round trip on loopback). Each set is
summarized as p50 / p95 / max over the runs, after one warm-up run that is not counted.
Nothing here measures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no samples)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(samples: list[float]) -> str:
    if not samples:
        return "—"
    return f"{percentile(samples, 0.5):7.1f} {percentile(samples, 0.95):7.1f} {max(samples):7.1f}"


@dataclass
class ViewTiming:
    name: str
    detail: str  # what the view reads, e.g. "cust-0001, last month"
    calls: list[float] = field(default_factory=list)
    http_server: list[float] = field(default_factory=list)
    http_client: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def stats(samples: list[float]) -> dict[str, float]:
            return {
                "p50": percentile(samples, 0.5),
                "p95": percentile(samples, 0.95),
                "max": max(samples, default=0.0),
                "runs": len(samples),
            }

        return {
            "name": self.name,
            "detail": self.detail,
            "calls_ms": stats(self.calls),
            "http_server_ms": stats(self.http_server),
            "http_client_ms": stats(self.http_client),
        }


@dataclass
class PortalBenchReport:
    command: str
    machine: dict[str, Any]
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, value) lines
    checks: list[tuple[str, bool]] = field(default_factory=list)  # (what, held)
    views: list[ViewTiming] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(held for _, held in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "machine": self.machine,
            "facts": dict(self.facts),
            "checks": [{"check": what, "ok": held} for what, held in self.checks],
            "views": [view.to_json() for view in self.views],
        }


def render_text(report: PortalBenchReport) -> str:
    machine = report.machine
    lines = [
        f"$ {report.command}",
        f"machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gib')} GiB, Python {machine.get('python')}, "
        f"load {machine.get('load_average_1m_5m')}",
        "",
    ]
    width = max((len(label) for label, _ in report.facts), default=0)
    lines += [f"{label.ljust(width)}  {value}" for label, value in report.facts]
    lines.append("")
    lines += [f"check: {what}: {'ok' if held else 'FAILED'}" for what, held in report.checks]
    lines.append("")
    head = (
        f"{'view':<34} {'reads':<28} {'calls p50/p95/max ms':>23}   "
        f"{'HTTP server p50/p95/max':>23}   {'HTTP client p50':>15}"
    )
    lines += [head, "-" * len(head)]
    for view in report.views:
        client = f"{percentile(view.http_client, 0.5):7.1f}" if view.http_client else "—"
        lines.append(
            f"{view.name:<34} {view.detail:<28} {summary(view.calls):>23}   "
            f"{summary(view.http_server):>23}   {client:>15}"
        )
    runs = max((len(v.calls) for v in report.views), default=0)
    lines += [
        "",
        f"{runs} runs per view after one warm-up; HTTP server time is the "
        "Server-Timing header (handler + rendering).",
    ]
    return "\n".join(lines) + "\n"
