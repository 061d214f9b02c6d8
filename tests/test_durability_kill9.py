"""kill -9 of a real `tollbooth serve` under load loses no event a client saw completed, and
doubles none: the restarted gateway replays the journal the dead one left.

The first gateway runs with a writer that would not flush for minutes, so when it is killed
every event exists only in its journal (the test checks Postgres holds none of them). The
restart, on the same data dir, must then write exactly the completed responses' events:
each completed response's x-request-id is an event id, ids are unique, and any extra event
belongs to a request that was cut off by the kill (its response never completed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers.journal_only import journal_only_gateway, restart_drained
from tests.helpers.serve_process import mock_provider_process, stored_ids

pytestmark = pytest.mark.slow

CONCURRENCY = 24
LOAD_S = 2.0


@pytest.fixture
def mock_provider() -> Iterator[str]:
    with mock_provider_process("--latency-ms", "5") as url:
        yield url


async def load_until_killed(
    base: str, key: str, serve: subprocess.Popen[str]
) -> tuple[list[str], int]:
    """Concurrent requests until the gateway dies; the x-request-ids of completed 200s and
    how many requests were cut off."""
    completed: list[str] = []
    cut_off = 0
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    dead = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal cut_off
        while not dead.is_set():
            try:
                async with session.post(
                    base + "/v1/chat/completions", json=body, headers=headers
                ) as response:
                    await response.read()  # the whole body: the response completed
                    assert response.status == 200, response.status
                    completed.append(response.headers["x-request-id"])
            except (TimeoutError, aiohttp.ClientError):
                cut_off += 1
                return

    async def killer() -> None:
        await asyncio.sleep(LOAD_S)
        os.kill(serve.pid, signal.SIGKILL)
        await asyncio.to_thread(serve.wait, 30)
        dead.set()

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(killer(), *(client(session) for _ in range(CONCURRENCY)))
    return completed, cut_off


async def test_kill_9_under_load_loses_and_doubles_nothing(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    # Nothing reaches Postgres before the kill: only the journal can save these events.
    gw = await journal_only_gateway(tmp_path, fresh_database_url, redis_url, mock_provider, "k9")
    completed, cut_off = await load_until_killed(gw.base, gw.key, gw.serve)
    assert gw.serve.returncode == -signal.SIGKILL
    assert len(completed) > 100, "too little load to prove anything"
    assert await stored_ids(fresh_database_url, gw.customer) == [], "".join(gw.lines)
    assert list((gw.data_dir / "journal").glob("*/*/*.seg")), "the dead gateway left no journal"

    # Restart on the same data dir, with a writer that flushes normally.
    restarted = await restart_drained(gw, mock_provider)
    try:
        ids = await stored_ids(fresh_database_url, gw.customer)
    finally:
        restarted.send_signal(signal.SIGTERM)
        await asyncio.to_thread(restarted.wait, 60)

    print(
        f"\ncompleted 200s before kill -9: {len(completed)}; cut off: {cut_off}; "
        f"events after replay: {len(ids)}"
    )
    assert len(ids) == len(set(ids)), "an event was doubled"
    assert set(completed) <= set(ids), "a completed response's event was lost"
    # Any other event is a request the kill cut off after its event was journaled.
    assert len(set(ids) - set(completed)) <= cut_off
    assert len(completed) == len(set(completed))
    assert restarted.returncode == 0, "".join(gw.lines)
    assert not list((gw.data_dir / "journal").glob("*/*/*.seg"))  # all committed, all deleted
