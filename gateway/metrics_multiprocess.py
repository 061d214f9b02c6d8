"""Metrics summed over the workers of `serve --workers N` (prometheus-client's multiprocess mode).

Each worker keeps its own counters, and a scrape through the shared port reaches one worker,
so the workers write their samples where any of them can read them all:

- The supervisor makes a fresh, empty directory per run (`fresh_dir`) and names it in
  PROMETHEUS_MULTIPROC_DIR for the workers it starts. prometheus-client reads that variable
  when it is imported: in a worker every counter, histogram and gauge then lives in a
  memory-mapped file of that process, `<type>_<pid>.db`, and an update costs a few
  microseconds instead of a fraction of one (one process, the default, pays nothing).
- A scrape on any worker reads every file (`merged_registry`): counters and histograms are
  summed over every worker that ran in this run (a restarted worker starts at zero under its
  own pid; the dead one's counts stay, so nothing is lost or counted twice); gauges are merged
  as each declares (gateway.live_metrics).
- When a worker exits the supervisor drops its gauges (`forget_process`); when the supervisor
  exits it removes the directory (`remove_dir`). A supervisor killed with SIGKILL leaves its
  directory behind in the temp dir; no later run reads it (each run makes its own).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

ENV = "PROMETHEUS_MULTIPROC_DIR"


def active_dir() -> str | None:
    """The directory this process writes its samples to, or None when its metrics live in
    memory (prometheus-client was imported without PROMETHEUS_MULTIPROC_DIR)."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get(ENV)


def prepare_worker() -> None:
    """In a worker, before its first metric: its pid is read once, not at every update.

    prometheus-client calls `os.getpid()` on every update of a multiprocess value, to notice
    a fork; that is a system call, several per request (about 3 us each on a virtual
    machine). A worker never forks once its metrics exist, so its pid cannot change; the
    files are the same `<type>_<pid>.db` either way (tests/test_metrics_workers.py reads
    them by pid)."""
    if getattr(values.ValueClass, "_multiprocess", False):
        pid = os.getpid()
        values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
            process_identifier=lambda: pid
        )


def merged_registry(path: str) -> CollectorRegistry:
    """A registry whose collection sums every process's files under `path`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    return registry


def fresh_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tollbooth-metrics-"))


def forget_process(path: Path, pid: int) -> None:
    """A worker exited: its gauges leave the sums (its counters stay counted)."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
