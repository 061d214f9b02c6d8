"""A real `tollbooth serve --workers 2` (two OS processes on one port) as a subprocess, for
tests of what the workers share: its config with one limited tier, a customer and key made
with the CLI, the process's output collected line by line, and bursts of concurrent requests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.helpers.serve_process import collect, free_port, serve_popen, tollbooth, wait_healthy


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
    serve = await asyncio.to_thread(serve_popen, config_path, port, env, "--workers", "2")
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
