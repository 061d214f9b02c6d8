"""A whole gateway for tests: the mock provider and Tollbooth as real HTTP servers on loopback,
real Postgres and Valkey, a customer and a key, and helpers to read what was recorded.

`running_gateway(...)` starts both servers in the test's event loop and yields a `Gateway`.
The official SDKs then talk to `gateway.openai_base_url` / `gateway.anthropic_base_url`.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web import BaseRunner

from gateway import keys
from gateway.app import create_app
from gateway.config import parse_settings
from gateway.front.server import FrontRunner
from gateway.mock_provider.app import MOCK_REQUESTS, MockOptions, create_mock_app
from storage.accounts import AccountStore

PROVIDER_KEY = "sk-provider-SECRET-0123456789"
ANTHROPIC_PROVIDER_KEY = "sk-ant-provider-SECRET-0123456789"


class FrontTestServer(TestServer):
    """aiohttp's TestServer serving the app as `tollbooth serve` does: the fast front first."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return FrontRunner(self.app, **kwargs)


@dataclass
class Gateway:
    app: web.Application
    server: TestServer
    mock: TestServer
    key: str
    customer_id: str
    database_url: str

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def mock_url(self) -> str:
        return str(self.mock.make_url("")).rstrip("/")

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    @property
    def mock_requests(self) -> list[Any]:
        return self.mock.app[MOCK_REQUESTS]

    async def events(self, *, wait_for: int = 1, timeout_s: float = 10.0) -> list[asyncpg.Record]:
        """This customer's usage events, once at least `wait_for` of them are written."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        conn = await asyncpg.connect(self.database_url)
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT * FROM usage_events WHERE customer_id = $1 ORDER BY created_at",
                    self.customer_id,
                )
                if len(rows) >= wait_for or asyncio.get_running_loop().time() > deadline:
                    return list(rows)
                await asyncio.sleep(0.05)
        finally:
            await conn.close()


def gateway_config(
    mock_url: str,
    *,
    tiers: dict[str, Any] | None = None,
    pricing: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    providers: dict[str, Any] | None = None,
) -> bytes:
    """`providers`: entries added beside the OpenAI and Anthropic ones."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "disconnect_drain_s": 5},
        "storage": {
            "writer_flush_interval_s": 0.05,
            "data_dir": tempfile.mkdtemp(prefix="tollbooth-gw-"),
        },
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": f"{mock_url}/v1",
                "api_key_env": "TB_TEST_OPENAI_KEY",
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": mock_url,
                "api_key_env": "TB_TEST_ANTHROPIC_KEY",
            },
            **(providers or {}),
        },
        "models": [
            {"match": "gpt-*", "provider": "openai"},
            {"match": "claude-*", "provider": "anthropic"},
        ],
        "tiers": tiers or {"free": {"limits": {}}, "pro": {"limits": {}}},
        "pricing": pricing
        or {"markup_percent": "20", "per_request_usd": "0.001", "unknown_model": "reject"},
    }
    config.update(extra or {})
    for provider in config["providers"].values():  # "{mock_url}": where the mock listens
        for field in ("base_url", "endpoint_url"):
            if isinstance(provider.get(field), str):
                provider[field] = provider[field].replace("{mock_url}", mock_url)
    return yaml.safe_dump(config).encode()


@asynccontextmanager
async def running_gateway(
    database_url: str,
    redis_url: str,
    monkeypatch: Any,
    *,
    tier: str = "free",
    tiers: dict[str, Any] | None = None,
    pricing: dict[str, Any] | None = None,
    mock_options: MockOptions | None = None,
    extra_config: dict[str, Any] | None = None,
    quota_window_ms: int = 60_000,
    config_path: Path | None = None,
    tls: ssl.SSLContext | None = None,
    providers: Callable[[str], dict[str, Any]] | None = None,
) -> AsyncIterator[Gateway]:
    """With `config_path`, the config is written there and watched for reloads. With `tls`,
    the gateway serves HTTPS on that context (as `serve` does with `server.tls_*`).
    `providers(mock_url)` gives provider entries to add (a `kind: bedrock` one, say)."""
    monkeypatch.setenv("TB_TEST_OPENAI_KEY", PROVIDER_KEY)
    monkeypatch.setenv("TB_TEST_ANTHROPIC_KEY", ANTHROPIC_PROVIDER_KEY)
    mock = TestServer(create_mock_app(mock_options or MockOptions()), host="127.0.0.1")
    await mock.start_server()
    mock_url = str(mock.make_url("")).rstrip("/")
    raw = gateway_config(
        mock_url,
        tiers=tiers,
        pricing=pricing,
        extra=extra_config,
        providers=providers(mock_url) if providers is not None else None,
    )
    if config_path is not None:
        await asyncio.to_thread(config_path.write_bytes, raw)
    settings = parse_settings(raw, str(config_path or "test.yaml"))
    app = create_app(
        settings,
        database_url=database_url,
        redis_url=redis_url,
        quota_window_ms=quota_window_ms,
        watch_config=config_path is not None,
    )
    server = FrontTestServer(app, host="127.0.0.1")
    await server.start_server(ssl=tls)
    try:
        customer_id = "cust_" + uuid.uuid4().hex[:10]
        accounts: AccountStore = app[keys.accounts]
        await accounts.create_customer(customer_id, tier=tier)
        _, key = await accounts.create_key(customer_id, project_id="web", user_id="u1", name="test")
        yield Gateway(app, server, mock, key, customer_id, database_url)
    finally:
        await server.close()
        await mock.close()
