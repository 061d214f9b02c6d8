"""The supervisor of a real `tollbooth serve --workers 2`: SIGHUP reloads every worker and
the supervisor keeps running; SIGTERM, SIGINT and SIGQUIT stop every process it started; a
worker that dies is started again and serves; a SIGKILLed supervisor leaves no worker."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import aiohttp
import psutil
import pytest
import yaml

from tests.helpers.serve_workers import (
    metrics_dir,
    process_tree,
    running,
    scrape,
    total,
    wait_all_gone,
    wait_listening,
    worker_count,
)
from tests.helpers.two_workers import burst, two_workers

pytestmark = pytest.mark.slow

ROUTE = "chat.completions"


async def wait_for(check: object, what: str, timeout_s: float = 15.0) -> None:
    """Poll the async `check()` until it is true."""
    for _ in range(int(timeout_s * 10)):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def limit_headers(base: str, key: str, count: int) -> set[str]:
    """The x-ratelimit-limit-requests of `count` requests, each on a new connection."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    seen: set[str] = set()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            async with session.post(
                base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            ) as r:
                assert r.status == 200, await r.text()
                seen.add(r.headers["x-ratelimit-limit-requests"])
    return seen


async def test_sighup_reloads_both_workers_and_the_supervisor_keeps_running(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    async with two_workers(
        tmp_path, fresh_database_url, redis_url, mock_provider, {"requests_per_minute": 1000}
    ) as gw:
        workers = await wait_listening(lambda: gw.output, 2)
        tree = process_tree(gw.serve.pid)

        # The file is unchanged, so only SIGHUP makes a worker reload: once each.
        gw.serve.send_signal(signal.SIGHUP)

        async def both_reloaded_once() -> bool:
            return total(await scrape(gw.base), "tollbooth_config_reloads_total", outcome="ok") == 2

        await wait_for(both_reloaded_once, "each worker reloaded once")
        assert gw.serve.poll() is None, gw.output
        assert all(running(p) for p in tree)
        assert process_tree(gw.serve.pid) == tree  # the same workers, none restarted

        # A changed limit, then SIGHUP: both workers serve with the new limit.
        config_path = tmp_path / "config.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["tiers"]["tight"]["limits"]["requests_per_minute"] = 2000
        config_path.write_text(yaml.safe_dump(config))
        gw.serve.send_signal(signal.SIGHUP)
        directory = metrics_dir(workers[0])

        async def both_have_the_new_file() -> bool:
            return all(
                worker_count(directory, pid, "tollbooth_config_reloads_total", outcome="ok") >= 2
                for pid in workers
            )

        await wait_for(both_have_the_new_file, "each worker reloaded the changed file")
        served_before = [
            worker_count(directory, pid, "tollbooth_requests_total") for pid in workers
        ]
        assert await limit_headers(gw.base, gw.key, 40) == {"2000"}
        served_after = [worker_count(directory, pid, "tollbooth_requests_total") for pid in workers]
        # Both workers answered some of those 40 requests, all with the new limit.
        assert all(
            after > before for before, after in zip(served_before, served_after, strict=True)
        ), served_after
        assert gw.serve.poll() is None
        assert listening_count(gw.output) == 2, gw.output


def listening_count(output: str) -> int:
    return output.count("listening on")


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["TERM", "INT", "QUIT"]
)
async def test_a_stop_signal_leaves_no_process_behind(
    tmp_path: Path,
    fresh_database_url: str,
    redis_url: str,
    mock_provider: str,
    signum: signal.Signals,
) -> None:
    async with two_workers(
        tmp_path, fresh_database_url, redis_url, mock_provider, {"requests_per_minute": 1000}
    ) as gw:
        await wait_listening(lambda: gw.output, 2)
        assert (await burst(gw, 20)) == {200: 20}
        tree = process_tree(gw.serve.pid)
        assert len(tree) >= 3  # the supervisor and its two workers
        gw.serve.send_signal(signum)
        code = await asyncio.to_thread(gw.serve.wait, 60)
        left = await wait_all_gone(tree, 10)
    assert code == 0, gw.output
    assert left == [], f"still running after {signum.name}: {left}"
    assert gw.output.count("listening on") == 2, gw.output


async def test_a_killed_worker_is_restarted_and_serves(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    async with two_workers(
        tmp_path, fresh_database_url, redis_url, mock_provider, {"requests_per_minute": 1000}
    ) as gw:
        first, second = await wait_listening(lambda: gw.output, 2)
        os.kill(first, signal.SIGKILL)
        pids = await wait_listening(lambda: gw.output, 3)
        replacement = pids[2]
        assert replacement not in (first, second)
        children = {p.pid for p in psutil.Process(gw.serve.pid).children()}
        assert {second, replacement} <= children and first not in children
        directory = metrics_dir(second)
        assert (await burst(gw, 40)) == {200: 40}
        assert worker_count(directory, replacement, "tollbooth_requests_total") > 0
        assert gw.serve.poll() is None
        assert "died (killed by SIGKILL); restarting" in gw.output, gw.output


async def test_a_killed_supervisor_leaves_no_worker_behind(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    async with two_workers(
        tmp_path, fresh_database_url, redis_url, mock_provider, {"requests_per_minute": 1000}
    ) as gw:
        workers = await wait_listening(lambda: gw.output, 2)
        directory = metrics_dir(workers[0])  # a killed supervisor cannot remove it
        tree = process_tree(gw.serve.pid)
        gw.serve.kill()
        await asyncio.to_thread(gw.serve.wait, 10)
        left = await wait_all_gone(tree[1:], 10)
    await asyncio.to_thread(shutil.rmtree, directory, True)
    assert left == [], f"orphans of a SIGKILLed supervisor: {left}"
