"""A real `tollbooth serve` (and `tollbooth mock-provider`) as subprocesses, for tests that
signal, kill or restart them: a config on a private data dir, a customer and key made with
the CLI, the process's output collected line by line, and the customer's stored events."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
import yaml

from tests.helpers.ports import free_port


def tollbooth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def serve_popen(
    config: Path, port: int, env: dict[str, str], *extra: str, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """`tollbooth serve --config CONFIG --port PORT *extra`, its stdout and stderr one text
    pipe for `collect`."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "gateway.cli.main", "serve"),
            *("--config", str(config), "--port", str(port), *extra),
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


def collect(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def write_serve_config(
    path: Path,
    mock: str,
    data_dir: Path,
    storage: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> None:
    """A config at `path` for `serve` on loopback: its data in `data_dir`, the OpenAI and
    Anthropic providers on the mock at `mock`, one tier without limits, a 20 % markup."""
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", **(server or {})},
                "storage": {"data_dir": str(data_dir), **(storage or {})},
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


@dataclass
class Serve:
    """One gateway's config, data dir, environment, customer and key; `start` runs it."""

    tmp: Path
    database_url: str
    env: dict[str, str]
    customer: str = ""
    key: str = ""
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.tmp / "config.yaml"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def write_config(
        self, mock: str, server: dict[str, Any], storage: dict[str, Any] | None = None
    ) -> None:
        write_serve_config(self.config, mock, self.data_dir, storage, server)

    async def create_customer(self, prefix: str) -> None:
        self.customer = f"{prefix}{os.getpid()}{free_port()}"
        cfg = ["--config", str(self.config)]
        await asyncio.to_thread(
            tollbooth, "customers", "create", self.customer, "--tier", "open", *cfg, env=self.env
        )
        created = await asyncio.to_thread(
            tollbooth, "keys", "create", "--customer", self.customer, *cfg, env=self.env
        )
        self.key = created.stdout.strip().splitlines()[-1]

    async def start(self, *extra: str) -> None:
        """`serve` on a free port (the same one again on a restart), once /health is 200."""
        self.port = self.port or free_port()
        self.proc = await asyncio.to_thread(serve_popen, self.config, self.port, self.env, *extra)
        assert self.proc.stdout is not None
        threading.Thread(target=collect, args=(self.proc.stdout, self.lines), daemon=True).start()
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                assert self.proc.poll() is None, "serve exited early:\n" + self.output
                try:
                    async with session.get(self.base + "/health") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("serve never became healthy:\n" + self.output)

    async def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (if still running) and wait; the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    def journal_files(self) -> list[Path]:
        """Segments and provisional records left in the journal."""
        return [p for p in (self.data_dir / "journal").rglob("*") if p.suffix in (".seg", ".open")]

    async def events(self) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.database_url)
        try:
            rows = await conn.fetch(
                "SELECT id::text AS id, status_code, streamed, input_tokens, output_tokens, "
                "usage_source, price_usd, metadata::text AS metadata FROM usage_events "
                "WHERE customer_id = $1",
                self.customer,
            )
        finally:
            await conn.close()
        return [{**dict(r), "metadata": json.loads(r["metadata"])} for r in rows]


def serve_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "TOLLBOOTH_DATABASE_URL": database_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
        "MOCK_PROVIDER_KEY": "sk-mock",
    }


async def stored_ids(database_url: str, customer: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id FROM usage_events WHERE customer_id = $1", customer)
        return [str(r["id"]) for r in rows]
    finally:
        await conn.close()
