"""Config reload through a running gateway: a refused file's error cleared when the running
file is put back (by the file watcher and by SIGHUP), keys a reload does not apply listed in
/health and the log, and Stripe settings applied on reload without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from gateway import keys
from gateway.config import DATABASE_URL_ENV, REDIS_URL_ENV, parse_settings
from gateway.reload import ConfigWatcher
from gateway.restart_keys import needs_restart, restart_required
from tests.fake_stripe import API_KEY, running_fake_stripe
from tests.harness import Gateway, gateway_config, running_gateway

MESSAGES = [{"role": "user", "content": "one two three"}]
TIERS = {"free": {"limits": {"requests_per_minute": 1000}}}


async def health(gw: Gateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + "/health") as r:
        body: dict[str, Any] = await r.json()
        return body


async def health_until(
    gw: Gateway, ready: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    for _ in range(100):
        body = await health(gw)
        if ready(body):
            return body
        await asyncio.sleep(0.1)
    pytest.fail(f"/health never showed {what}: {body}")


async def eventually(check: Callable[[], bool], what: str) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"never happened: {what}")


async def test_putting_the_running_file_back_clears_the_refused_config_error(
    tmp_path: Path, fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "config.yaml"
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=TIERS, config_path=config_path
    ) as gw:
        original = config_path.read_bytes()
        running_hash = (await health(gw))["config"]["hash"]
        assert running_hash == hashlib.sha256(original).hexdigest()[:16]
        bad = original.replace(b"requests_per_minute: 1000", b"requests_per_minute: ten")
        assert bad != original
        config_path.write_bytes(bad)
        body = await health_until(gw, lambda b: b["config"]["state"] == "error", "the error")
        assert body["status"] == "degraded"
        assert "requests_per_minute" in body["config"]["error"]

        config_path.write_bytes(original)  # cp config.bak config.yaml: the same bytes
        body = await health_until(
            gw, lambda b: b["config"]["state"] != "error", "the error cleared"
        )
        assert body["status"] == "ok"
        assert body["config"] == {"state": "ok", "hash": running_hash, "restart_required": []}
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )  # type: ignore[arg-type]
        assert raw.http_response.headers["x-ratelimit-limit-requests"] == "1000"


async def test_sighup_with_the_running_file_back_clears_the_refused_config_error(
    tmp_path: Path, fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "config.yaml"
    async with running_gateway(fresh_database_url, redis_url, monkeypatch, tiers=TIERS) as gw:
        app = gw.app
        # Only SIGHUP reloads here: the file is not polled within the test.
        watcher = ConfigWatcher(
            config_path,
            app[keys.runtime],
            app[keys.quotas],
            app[keys.alerts],
            app[keys.metrics],
            interval_s=3600,
        )
        original = gateway_config(gw.mock_url, tiers=TIERS)
        config_path.write_bytes(original)
        watcher.start()
        try:

            def running_hash() -> str | None:
                return app[keys.runtime].current.settings.source_hash

            os.kill(os.getpid(), signal.SIGHUP)
            digest = hashlib.sha256(original).hexdigest()[:16]
            await eventually(lambda: running_hash() == digest, "the file loaded on SIGHUP")

            config_path.write_bytes(
                original.replace(b"requests_per_minute: 1000", b"requests_per_minute: ten")
            )
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: watcher.error is not None, "the bad file refused")
            assert running_hash() == digest

            config_path.write_bytes(original)
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: watcher.error is None, "the error cleared on SIGHUP")
            assert running_hash() == digest
        finally:
            await watcher.close()


async def test_changed_keys_a_reload_does_not_apply_are_listed_in_health_and_logged(
    tmp_path: Path,
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tollbooth.reload")
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)  # the file's storage.* is compared
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    config_path = tmp_path / "config.yaml"
    async with running_gateway(
        fresh_database_url, redis_url, monkeypatch, tiers=TIERS, config_path=config_path
    ) as gw:
        original = config_path.read_bytes()
        config = yaml.safe_load(original)
        config["server"]["port"] = 18123
        config["server"]["disconnect_drain_s"] = 7  # read per request: applied
        config["storage"]["writer_batch_size"] = 17
        config["storage"]["database_url"] = "postgresql://tb:s3cret-password@db.example/tb"
        config["logging"] = {"level": "DEBUG"}
        config["quotas"] = {"redis_max_connections": 7, "default_max_output_tokens": 100}
        config["tiers"]["free"]["limits"]["requests_per_minute"] = 2000
        changed = yaml.safe_dump(config).encode()
        config_path.write_bytes(changed)
        body = await health_until(
            gw, lambda b: b["config"]["restart_required"] != [], "restart_required"
        )
        expected = [
            "logging.level",
            "quotas.redis_max_connections",
            "server.port",
            "storage.database_url",
            "storage.writer_batch_size",
        ]
        assert body["config"]["restart_required"] == expected
        assert body["status"] == "ok" and body["config"]["state"] == "ok"
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )  # type: ignore[arg-type]
        assert raw.http_response.headers["x-ratelimit-limit-requests"] == "2000"  # applied
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            all(key in line for key in expected) and "restart" in line for line in warnings
        ), warnings
        assert not any("s3cret" in r.getMessage() for r in caplog.records)

        config_path.write_bytes(original)  # every restart-only key back to its running value
        body = await health_until(
            gw, lambda b: b["config"]["restart_required"] == [], "restart_required emptied"
        )
        assert body["config"]["hash"] == hashlib.sha256(original).hexdigest()[:16]


def test_restart_only_keys_are_the_ones_read_at_start() -> None:
    for key in (
        "server.host",
        "server.port",
        "server.workers",
        "server.client_timeout_s",
        "storage.redis_url",
        "storage.journal_dir",
        "storage.journal_fsync_interval_s",
        "logging.requests",
        "retention.raw_events_days",
        "quotas.redis_max_connections",
        "quotas.redis_wait_replicas",
    ):
        assert needs_restart(key), key
    for key in (
        "server.disconnect_drain_s",
        "server.cors_origins",
        "tiers.free.limits.requests_per_minute",
        "providers.openai.base_url",
        "pricing.markup_percent",
        "quotas.on_redis_error",
        "alerts.webhook_url",
        "admin.token_env",
        "billing.stripe.api_base",
        "billing.stripe.api_key_env",
    ):
        assert not needs_restart(key), key
    base = yaml.safe_load(gateway_config("http://127.0.0.1:9"))
    boot = parse_settings(yaml.safe_dump(base).encode())
    base["billing"] = {"stripe": {"api_base": "http://127.0.0.1:12111"}}
    base["server"]["workers"] = 4
    assert restart_required(boot, parse_settings(yaml.safe_dump(base).encode())) == [
        "server.workers"
    ]


async def test_stripe_settings_apply_on_reload_without_a_restart(
    tmp_path: Path, fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_key = "sk_test_tollbooth_other_account_0123"
    monkeypatch.setenv("TB_TEST_STRIPE_KEY", API_KEY)
    monkeypatch.setenv("TB_TEST_STRIPE_KEY_B", other_key)
    monkeypatch.delenv("TB_TEST_STRIPE_UNSET", raising=False)
    config_path = tmp_path / "config.yaml"
    async with running_fake_stripe() as first, running_fake_stripe(api_key=other_key) as second:

        def stripe(key_env: str, base: str) -> dict[str, Any]:
            return {
                "billing": {
                    "stripe": {
                        "api_key_env": key_env,
                        "api_base": base,
                        "portal_return_url": "https://app.example.com/",
                    }
                }
            }

        async with running_gateway(
            fresh_database_url,
            redis_url,
            monkeypatch,
            extra_config=stripe("TB_TEST_STRIPE_UNSET", first.url),
            config_path=config_path,
        ) as gw:
            stripe_id = first.add_customer("Acme")
            second.customers[stripe_id] = first.customers[stripe_id]
            await gw.app[keys.accounts].update_customer(
                gw.customer_id, stripe_customer_id=stripe_id
            )

            async def portal() -> int:
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(
                        gw.base_url + "/billing/portal",
                        headers={"Authorization": f"Bearer {gw.key}"},
                    ) as r,
                ):
                    return r.status

            assert await portal() == 503  # no key in the named variable

            def rewrite(key_env: str, base: str) -> None:
                config = yaml.safe_load(config_path.read_bytes())
                config.update(stripe(key_env, base))
                config_path.write_bytes(yaml.safe_dump(config).encode())

            async def portal_until(status: int) -> None:
                for _ in range(100):
                    if await portal() == status:
                        return
                    await asyncio.sleep(0.1)
                pytest.fail(f"the portal never answered {status}")

            rewrite("TB_TEST_STRIPE_KEY", first.url)
            await portal_until(200)
            assert len(first.portal_sessions) == 1

            rewrite("TB_TEST_STRIPE_KEY_B", second.url)  # another account, another base
            for _ in range(100):
                assert await portal() == 200
                if second.portal_sessions:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the new Stripe account was never used")
            assert second.portal_sessions[-1]["customer"] == stripe_id
            sessions_at_first = len(first.portal_sessions)
            assert await portal() == 200
            assert len(first.portal_sessions) == sessions_at_first
            assert len(second.portal_sessions) >= 2
            assert (await health(gw))["config"]["restart_required"] == []
