"""The quota guarantee across processes: `tollbooth serve --workers 2` (two OS processes on one
port, SO_REUSEPORT) against one Valkey, 200 concurrent requests against a limit of 50 per
minute. Exactly 50 are admitted, exactly 50 reach the provider, exactly 50 usage events are
written (after a SIGTERM drain), and every other request is a 429."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import yaml

LIMIT = 50
REQUESTS = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tollbooth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )


@pytest.fixture
def mock_provider() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "mock-provider", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    assert "listening" in proc.stdout.readline()
    yield f"http://127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def start_serve(cfg: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "serve", *cfg, "--port", str(port),
         "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


async def wait_healthy(url: str, proc: subprocess.Popen[str]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert proc.poll() is None, "serve exited early"
            try:
                async with session.get(url + "/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("gateway did not become healthy")


async def test_two_workers_admit_exactly_the_limit(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    config = {
        "server": {"host": "127.0.0.1"},
        "providers": {"openai": {"kind": "openai", "base_url": mock_provider + "/v1",
                                 "api_key_env": "MOCK_PROVIDER_KEY"}},
        "tiers": {"tight": {"limits": {"requests_per_minute": LIMIT}}},
        "pricing": {"markup_percent": "20"},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "TOLLBOOTH_DATABASE_URL": fresh_database_url,
           "TOLLBOOTH_REDIS_URL": redis_url, "MOCK_PROVIDER_KEY": "sk-mock"}
    customer = f"mp{os.getpid()}{free_port()}"
    cfg = ["--config", str(config_path)]
    tollbooth("customers", "create", customer, "--tier", "tight", *cfg, env=env)
    key = tollbooth("keys", "create", "--customer", customer, *cfg,
                    env=env).stdout.strip().splitlines()[-1]

    port = free_port()
    serve = await asyncio.to_thread(start_serve, cfg, port, env)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(base, serve)
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        connector = aiohttp.TCPConnector(limit=REQUESTS, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> int:
                async with session.post(base + "/v1/chat/completions", json=body,
                                        headers={"Authorization": f"Bearer {key}"}) as r:
                    await r.read()
                    return r.status

            statuses = Counter(await asyncio.gather(*(one() for _ in range(REQUESTS))))
            async with session.get(mock_provider + "/_mock/requests") as r:
                reached = len(await r.json())
    finally:
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=60)
    print(f"\nadmitted across 2 workers: {statuses[200]} of {REQUESTS} (limit {LIMIT}); "
          f"refused 429: {statuses[429]}; reached provider: {reached}")
    assert statuses == {200: LIMIT, 429: REQUESTS - LIMIT}, output
    assert reached == LIMIT
    assert output.count("listening on") == 2  # two worker processes served
    conn = await asyncpg.connect(fresh_database_url)
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
    finally:
        await conn.close()
    assert rows == LIMIT
