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
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.alerts import sign

LIMIT = 50
REQUESTS = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tollbooth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@contextmanager
def mock_provider_process(*options: str, kill: bool = False) -> Iterator[str]:
    """`tollbooth mock-provider` on a free port, as its own process; its base URL. `kill`:
    stop it with SIGKILL (slow handlers may still be sleeping for a gateway that is gone)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "mock-provider", "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    assert "listening" in proc.stdout.readline()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if kill:
            proc.kill()
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture
def mock_provider() -> Iterator[str]:
    with mock_provider_process() as url:
        yield url


def start_serve(cfg: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "serve",
            *cfg,
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


@dataclass
class RunningGateway:
    base: str
    key: str
    customer: str
    serve: subprocess.Popen[str]
    lines: list[str]

    @property
    def output(self) -> str:
        return "".join(self.lines)


def collect(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


@asynccontextmanager
async def two_workers(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    mock: str,
    tier_limits: dict[str, int],
    extra: dict[str, Any] | None = None,
    env_extra: dict[str, str] | None = None,
) -> AsyncIterator[RunningGateway]:
    config = {
        "server": {"host": "127.0.0.1"},
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": mock + "/v1",
                "api_key_env": "MOCK_PROVIDER_KEY",
            }
        },
        "tiers": {"tight": {"limits": tier_limits}},
        "pricing": {"markup_percent": "20"},
        **(extra or {}),
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "TOLLBOOTH_DATABASE_URL": database_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
        "MOCK_PROVIDER_KEY": "sk-mock",
        **(env_extra or {}),
    }
    customer = f"mp{os.getpid()}{free_port()}"
    cfg = ["--config", str(config_path)]
    tollbooth("customers", "create", customer, "--tier", "tight", *cfg, env=env)
    key = (
        tollbooth("keys", "create", "--customer", customer, *cfg, env=env)
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    serve = await asyncio.to_thread(start_serve, cfg, port, env)
    lines: list[str] = []
    assert serve.stdout is not None
    reader = threading.Thread(target=collect, args=(serve.stdout, lines), daemon=True)
    reader.start()
    running = RunningGateway(f"http://127.0.0.1:{port}", key, customer, serve, lines)
    try:
        await wait_healthy(running.base, serve)
        for _ in range(300):  # /health answers once one worker listens; wait for both
            if running.output.count("listening on") == 2:
                break
            await asyncio.sleep(0.1)
        yield running
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        await asyncio.to_thread(serve.wait, 60)
        await asyncio.to_thread(reader.join, 10)


async def burst(gw: RunningGateway, count: int) -> Counter[int]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=count, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.post(
                gw.base + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {gw.key}"},
            ) as r:
                await r.read()
                return r.status

        return Counter(await asyncio.gather(*(one() for _ in range(count))))


async def count_events(database_url: str, customer: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer
            )
        )
    finally:
        await conn.close()


async def test_two_workers_admit_exactly_the_limit(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    async with two_workers(
        tmp_path, fresh_database_url, redis_url, mock_provider, {"requests_per_minute": LIMIT}
    ) as gw:
        statuses = await burst(gw, REQUESTS)
        async with (
            aiohttp.ClientSession() as session,
            session.get(mock_provider + "/_mock/requests") as r,
        ):
            reached = len(await r.json())
    output = gw.output
    print(
        f"\nadmitted across 2 workers: {statuses[200]} of {REQUESTS} (limit {LIMIT}); "
        f"refused 429: {statuses[429]}; reached provider: {reached}"
    )
    assert statuses == {200: LIMIT, 429: REQUESTS - LIMIT}, output
    assert reached == LIMIT
    assert output.count("listening on") == 2, output  # two worker processes served
    assert await count_events(fresh_database_url, gw.customer) == LIMIT


async def test_an_alert_fires_once_per_threshold_across_two_workers(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    received: list[tuple[bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers["X-Tollbooth-Signature"]))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    server = TestServer(receiver, host="127.0.0.1")
    await server.start_server()
    secret = "whsec-test-secret"
    alerts = {
        "alerts": {"webhook_url": str(server.make_url("/hook")), "thresholds_percent": [50, 100]}
    }
    try:
        async with two_workers(
            tmp_path,
            fresh_database_url,
            redis_url,
            mock_provider,
            {"requests_per_month": 10},
            extra=alerts,
            env_extra={"TOLLBOOTH_ALERT_SECRET": secret},
        ) as gw:
            statuses = await burst(gw, 30)
            await asyncio.sleep(1.0)  # deliveries run in the background
    finally:
        await server.close()
    assert statuses == {200: 10, 429: 20}
    alerts_seen = sorted(
        (orjson.loads(body)["limit"], orjson.loads(body)["threshold_percent"])
        for body, _ in received
    )
    assert alerts_seen == [("requests_per_month", 50), ("requests_per_month", 100)]
    for body, header in received:
        stamp = int(header.split(",")[0].removeprefix("t="))
        assert header == sign(secret, stamp, body)
        assert orjson.loads(body)["customer_id"] == gw.customer
