"""/metrics of a real `tollbooth serve --workers 2` is the sum over both workers, on every
scrape, whichever worker answers it; a restarted worker neither loses nor doubles what the
dead one counted; the metrics directory is fresh for the run and removed at its end."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest

from tests.helpers.serve_workers import (
    metrics_dir,
    scrape,
    total,
    wait_listening,
    worker_count,
)
from tests.helpers.two_workers import burst, two_workers

pytestmark = pytest.mark.slow

REQUESTS = 120  # each on its own connection, so both workers get some
SCRAPES = 10


def file_pids(directory: str) -> set[int]:
    return {
        int(m.group(1)) for name in os.listdir(directory) if (m := re.search(r"_(\d+)\.db$", name))
    }


async def assert_every_scrape(base: str, sample: str, expected: float) -> None:
    for _ in range(SCRAPES):
        assert total(await scrape(base), sample) == expected


async def wait_total(base: str, sample: str, expected: float, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s * 10)):
        if total(await scrape(base), sample) == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sample} never reached {expected}")


async def test_metrics_are_summed_over_both_workers_on_every_scrape(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    async with two_workers(
        tmp_path, fresh_database_url, redis_url, mock_provider, {"requests_per_minute": 10_000}
    ) as gw:
        workers = await wait_listening(lambda: gw.output, 2)
        directory = metrics_dir(workers[0])
        assert file_pids(directory) <= set(workers)  # nothing left from another run

        assert await burst(gw, REQUESTS) == {200: REQUESTS}
        served = [worker_count(directory, pid, "tollbooth_requests_total") for pid in workers]
        assert all(n > 0 for n in served) and sum(served) == REQUESTS, served
        await assert_every_scrape(gw.base, "tollbooth_requests_total", REQUESTS)
        await assert_every_scrape(gw.base, "tollbooth_request_duration_seconds_count", REQUESTS)
        # Values read from the writer are published by each worker within a second.
        await wait_total(gw.base, "tollbooth_writer_written_total", REQUESTS)
        await assert_every_scrape(gw.base, "tollbooth_writer_written_total", REQUESTS)
        await assert_every_scrape(gw.base, "tollbooth_inflight_exchanges", 0)

        # A worker dies and is replaced: its counts stay, its gauges leave, nothing doubles.
        dead = workers[0]
        os.kill(dead, signal.SIGKILL)
        replacement = (await wait_listening(lambda: gw.output, 3))[2]
        assert not any(
            name.startswith("gauge_live") and name.endswith(f"_{dead}.db")
            for name in os.listdir(directory)
        )
        await assert_every_scrape(gw.base, "tollbooth_requests_total", REQUESTS)
        assert await burst(gw, 40) == {200: 40}
        await assert_every_scrape(gw.base, "tollbooth_requests_total", REQUESTS + 40)
        assert worker_count(directory, replacement, "tollbooth_requests_total") > 0
    assert gw.serve.returncode == 0, gw.output
    assert not await asyncio.to_thread(os.path.exists, directory)  # removed at exit
