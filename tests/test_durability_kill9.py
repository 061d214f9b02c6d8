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
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from tests.test_gateway_multiprocess import (
    collect,
    free_port,
    mock_provider_process,
    tollbooth,
    wait_healthy,
)

CONCURRENCY = 24
LOAD_S = 2.0


@pytest.fixture
def mock_provider() -> Iterator[str]:
    with mock_provider_process("--latency-ms", "5") as url:
        yield url


# A writer that would not flush for minutes: before a kill, events exist only in the journal.
JOURNAL_ONLY = {"writer_flush_interval_s": 600, "writer_batch_size": 1_000_000}


def write_config(path: Path, mock: str, data_dir: Path, storage: dict[str, Any]) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1"},
                "storage": {"data_dir": str(data_dir), **storage},
                "providers": {
                    "openai": {
                        "kind": "openai",
                        "base_url": mock + "/v1",
                        "api_key_env": "MOCK_PROVIDER_KEY",
                    },
                    "anthropic": {
                        "kind": "anthropic",
                        "base_url": mock,
                        "api_key_env": "MOCK_PROVIDER_KEY",
                    },
                },
                "tiers": {"open": {"limits": {}}},
                "pricing": {"markup_percent": "20"},
            }
        )
    )


def start_serve(config: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    # --workers 1 runs the worker in this very process: its pid is the one to kill.
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def customer_and_serve(
    config: Path, env: dict[str, str], prefix: str
) -> tuple[str, str, int, subprocess.Popen[str], list[str]]:
    """A new customer on tier `open` with a key, then `serve` on a free port, healthy: the
    customer id, the key, the port, the process and the list its output lines go to."""
    customer = f"{prefix}{os.getpid()}{free_port()}"
    cfg = ["--config", str(config)]
    await asyncio.to_thread(
        tollbooth, "customers", "create", customer, "--tier", "open", *cfg, env=env
    )
    created = await asyncio.to_thread(
        tollbooth, "keys", "create", "--customer", customer, *cfg, env=env
    )
    key = created.stdout.strip().splitlines()[-1]
    port = free_port()
    lines: list[str] = []
    serve = await asyncio.to_thread(start_serve, config, port, env)
    assert serve.stdout is not None
    threading.Thread(target=collect, args=(serve.stdout, lines), daemon=True).start()
    await wait_healthy(f"http://127.0.0.1:{port}", serve)
    return customer, key, port, serve, lines


@dataclass
class Killable:
    """A `serve` to kill -9: its config, data dir and environment, its customer and key."""

    config: Path
    data_dir: Path
    env: dict[str, str]
    customer: str
    key: str
    port: int
    serve: subprocess.Popen[str]
    lines: list[str]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def journal_only_gateway(
    tmp_path: Path, database_url: str, redis_url: str, mock: str, prefix: str
) -> Killable:
    """`serve` on a private data dir with a writer that does not flush (JOURNAL_ONLY)."""
    data_dir = tmp_path / "data"
    config = tmp_path / "config.yaml"
    write_config(config, mock, data_dir, JOURNAL_ONLY)
    env = {
        **os.environ,
        "TOLLBOOTH_DATABASE_URL": database_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
        "MOCK_PROVIDER_KEY": "sk-mock",
    }
    customer, key, port, serve, lines = await customer_and_serve(config, env, prefix)
    return Killable(config, data_dir, env, customer, key, port, serve, lines)


async def restart_drained(gw: Killable, mock: str) -> subprocess.Popen[str]:
    """`serve` again on the killed one's data dir and port, with a writer that flushes, once
    it is healthy and has written what the journal held. The caller stops it."""
    write_config(gw.config, mock, gw.data_dir, {"writer_flush_interval_s": 0.05})
    restarted = await asyncio.to_thread(start_serve, gw.config, gw.port, gw.env)
    assert restarted.stdout is not None
    threading.Thread(target=collect, args=(restarted.stdout, gw.lines), daemon=True).start()
    try:
        await wait_healthy(gw.base, restarted)
        await wait_drained(gw.base)
    except BaseException:
        restarted.kill()
        raise
    return restarted


async def wait_drained(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            async with session.get(base + "/health") as response:
                if (await response.json())["writer"]["backlog"] == 0:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("the restarted gateway never drained its journal")


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


async def stored_ids(database_url: str, customer: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id FROM usage_events WHERE customer_id = $1", customer)
        return [str(r["id"]) for r in rows]
    finally:
        await conn.close()


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
