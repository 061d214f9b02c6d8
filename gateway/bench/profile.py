"""Where the gateway's time goes: py-spy's collapsed stacks summed per function.

`pyspy_argv(pid, out, duration_s)` is the py-spy command the runner starts for one phase
(the `serve` process and its worker subprocesses, sampled 250 times a second, idle samples
left out so only time on the CPU counts). `summarize(path)` reads py-spy's `--format raw`
output (one `frame;frame;... COUNT` line per distinct stack, the leaf last, each frame
`function (file:line)`) and returns, per function (`function (file)`, lines merged):
self samples (it was the leaf) and cumulative samples (it was anywhere on the stack, counted
once per stack even when recursive). Percentages are of all samples kept; stacks that end in
a thread's idle wait (`IDLE_LEAVES`, e.g. a thread pool worker waiting for work, which py-spy
may count as active) or pass through a C-level wait (`IDLE_NATIVE`) are left out and counted
apart. Time in C code (uvloop's loop, socket calls, the HTTP parser) shows as self time of
the Python frame that called it, e.g. `run_app` for uvloop's own loop. With `--native`,
py-spy shows C frames but cannot tell a wait in an unnamed libc frame from work: on this
machine ~40% of such a profile is one unnamed libc address under uvloop's loop; read the
Python frames from a profile without `--native`.

How it fails: a missing or empty file gives an empty summary; a line it cannot parse is
skipped and counted in `skipped_lines`.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where a thread waits, not works: py-spy may count a thread pool's idle worker, and with
# --native its idle detection misses waits in C (a condition variable, the GIL, epoll).
IDLE_LEAVES = frozenset({"_worker (concurrent/futures/thread.py)", "wait (threading.py)"})
IDLE_NATIVE = frozenset(
    {"pthread_cond_timedwait", "pthread_cond_wait", "epoll_wait", "epoll_pwait", "epoll_pwait2"}
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
SAMPLE_RATE_HZ = 250


def pyspy_available() -> str | None:
    return shutil.which("py-spy")


def pyspy_argv(pid: int, out: Path, duration_s: float, *, native: bool = False) -> list[str]:
    argv = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--format",
        "raw",
        "--output",
        str(out),
        "--duration",
        str(max(1, round(duration_s))),
        "--rate",
        str(SAMPLE_RATE_HZ),
    ]
    if native:
        argv.append("--native")
    return argv


def _waits(functions: list[str]) -> bool:
    return any(f.split(" (", 1)[0] in IDLE_NATIVE for f in functions)


def _package(function: str) -> str:
    match = _FRAME.match(function)
    path = match["file"] if match else function
    if path.startswith("<"):
        return path  # <frozen runpy>, <string> (dataclass-generated code)
    return path.split("/", 1)[0].removesuffix(".py")


def _function(frame: str) -> str | None:
    if frame.startswith("process ") or frame.startswith("thread "):
        return None  # py-spy's per-process / per-thread root frames
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['func']} ({match['file']})"


@dataclass
class ProfileSummary:
    samples: int = 0
    self_samples: Counter[str] = field(default_factory=Counter)
    cumulative_samples: Counter[str] = field(default_factory=Counter)
    skipped_lines: int = 0
    idle_samples: int = 0  # left out: a thread waiting (IDLE_LEAVES)
    source: str = ""

    def by_package(self) -> list[tuple[str, int, float]]:
        """Self samples per top-level package of the leaf's file (`aiohttp`, `redis`,
        `gateway`, `asyncio`...), largest first."""
        packages: Counter[str] = Counter()
        for function, count in self.self_samples.items():
            packages[_package(function)] += count
        return [(p, c, self._pct(c)) for p, c in packages.most_common()]

    def top_self(self, n: int) -> list[tuple[str, int, float]]:
        return [(f, c, self._pct(c)) for f, c in self.self_samples.most_common(n)]

    def top_cumulative(self, n: int) -> list[tuple[str, int, float]]:
        return [(f, c, self._pct(c)) for f, c in self.cumulative_samples.most_common(n)]

    def _pct(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0

    def to_json(self, n: int = 30) -> dict[str, Any]:
        def rows(items: list[tuple[str, int, float]]) -> list[dict[str, Any]]:
            return [{"function": f, "samples": c, "percent": round(p, 2)} for f, c, p in items]

        return {
            "source": self.source,
            "samples": self.samples,
            "idle_samples_left_out": self.idle_samples,
            "self_by_package": [
                {"package": p, "samples": c, "percent": round(pct, 2)}
                for p, c, pct in self.by_package()
            ],
            "top_self": rows(self.top_self(n)),
            "top_cumulative": rows(self.top_cumulative(n)),
        }


def summarize(path: Path) -> ProfileSummary:
    summary = ProfileSummary(source=str(path))
    if not path.exists():
        return summary
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            summary.skipped_lines += 1
            continue
        count = int(count_text)
        functions = [f for f in map(_function, stack.split(";")) if f is not None]
        if not functions or functions[-1] in IDLE_LEAVES or _waits(functions):
            summary.idle_samples += count
            continue
        summary.samples += count
        summary.self_samples[functions[-1]] += count
        for function in set(functions):
            summary.cumulative_samples[function] += count
    return summary
