"""Looking into a running `tollbooth serve --workers N` from a test: its workers' pids (from
their "listening" lines), the processes it started, each worker's own metric counts (its
files in the metrics directory the supervisor made), and /metrics totals."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import time
from collections.abc import Callable

import aiohttp
import psutil
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

_LISTENING = re.compile(r"tollbooth worker (\d+) listening on")


def listening_pids(output: str) -> list[int]:
    """Every worker that said it listens, in order (restarted workers come later)."""
    return [int(pid) for pid in _LISTENING.findall(output)]


async def wait_listening(
    output: Callable[[], str], count: int, timeout_s: float = 30.0
) -> list[int]:
    """Wait until `count` workers in all have said they listen; their pids."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = listening_pids(output())
        if len(pids) >= count:
            return pids
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} workers never listened:\n{output()}")


def process_tree(pid: int) -> list[psutil.Process]:
    """`pid` and everything it started (workers, multiprocessing's resource tracker)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def running(proc: psutil.Process) -> bool:
    """Still there and not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_all_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes of `procs` still running after `timeout_s` (empty when all are gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in procs if running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        await asyncio.sleep(0.1)


def metrics_dir(worker_pid: int) -> str:
    """The directory the supervisor gave its workers for their metric files."""
    return str(psutil.Process(worker_pid).environ()["PROMETHEUS_MULTIPROC_DIR"])


def worker_count(directory: str, pid: int, sample: str, **labels: str) -> float:
    """The sum of `sample` (with `labels`) in worker `pid`'s own files: what it counted."""
    files = glob.glob(os.path.join(directory, f"*_{pid}.db"))
    return sum(
        s.value
        for family in MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def total(text: str, sample: str, **labels: str) -> float:
    """The sum of `sample` (with `labels`) over every series of a /metrics answer."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def scrape(base: str) -> str:
    """GET /metrics on a new connection (so any worker may answer)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(base + "/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()
