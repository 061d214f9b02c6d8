"""A real `tollbooth serve` whose usage writer would not flush for minutes, to kill -9 under
load: before the kill its events exist only in its journal. A restart on the same data dir and
port, with a writer that flushes, must write what the journal held."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.helpers.serve_process import (
    collect,
    free_port,
    serve_env,
    serve_popen,
    tollbooth,
    wait_healthy,
    write_serve_config,
)

# A writer that would not flush for minutes: before a kill, events exist only in the journal.
JOURNAL_ONLY = {"writer_flush_interval_s": 600, "writer_batch_size": 1_000_000}


def start_serve(config: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    # --workers 1 runs the worker in this very process: its pid is the one to kill.
    return serve_popen(config, port, env, "--workers", "1")


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
    write_serve_config(config, mock, data_dir, JOURNAL_ONLY)
    env = serve_env(database_url, redis_url)
    customer, key, port, serve, lines = await customer_and_serve(config, env, prefix)
    return Killable(config, data_dir, env, customer, key, port, serve, lines)


async def restart_drained(gw: Killable, mock: str) -> subprocess.Popen[str]:
    """`serve` again on the killed one's data dir and port, with a writer that flushes, once
    it is healthy and has written what the journal held. The caller stops it."""
    write_serve_config(gw.config, mock, gw.data_dir, {"writer_flush_interval_s": 0.05})
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
