"""Operations through a running gateway: Prometheus metric values after a scripted set of
requests, config reload with a valid and an invalid file under traffic, and no secret in any
log line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

from tests.harness import ANTHROPIC_PROVIDER_KEY, PROVIDER_KEY, Gateway, running_gateway

MESSAGES = [{"role": "user", "content": "one two three"}]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


async def get(gw: Gateway, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(gw.base_url + path) as r:
        return r.status, await r.text()


async def test_metrics_count_a_scripted_session(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tiers={"free": {"limits": {"requests_per_month": 3}}},
    ) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        replies = [
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
            for _ in range(2)
        ]
        await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"x-mock-no-usage": "1"},
        )
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        bad = openai.AsyncOpenAI(api_key="tb_bad", base_url=gw.openai_base_url, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        await gw.events(wait_for=3)
        status, text = await get(gw, "/metrics")
    assert status == 200
    route = "chat.completions"
    assert (
        metric(
            text,
            "tollbooth_requests_total",
            route=route,
            provider="openai",
            model="gpt-4o",
            status="200",
        )
        == 3
    )
    assert metric(text, "tollbooth_refused_requests_total", status="401") == 1
    assert metric(text, "tollbooth_refused_requests_total", status="429") == 1
    assert metric(text, "tollbooth_quota_refusals_total", limit="requests_per_month") == 1
    assert metric(text, "tollbooth_usage_estimated_total") == 1
    reported = sum(r.usage.prompt_tokens for r in replies if r.usage)
    assert metric(text, "tollbooth_tokens_total", provider="openai", kind="input") > reported
    assert metric(text, "tollbooth_price_micro_usd_total", provider="openai") > 0
    assert metric(text, "tollbooth_request_duration_seconds_count", route=route) == 3
    assert gw.key not in text


async def test_reload_valid_then_invalid_file_under_traffic(
    tmp_path: Path, fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "config.yaml"
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tiers={"free": {"limits": {"requests_per_minute": 1000}}},
        config_path=config_path,
    ) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        statuses: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=MESSAGES
                )  # type: ignore[arg-type]
                statuses.append(raw.http_response.status_code)

        runner = asyncio.ensure_future(traffic())
        await asyncio.sleep(0.3)
        config = yaml.safe_load(config_path.read_text())
        config["tiers"]["free"]["limits"]["requests_per_minute"] = 2000
        config_path.write_text(yaml.safe_dump(config))
        for _ in range(50):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=MESSAGES
            )  # type: ignore[arg-type]
            if raw.http_response.headers["x-ratelimit-limit-requests"] == "2000":
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the valid config was not picked up")
        used_before = int(raw.http_response.headers["x-ratelimit-remaining-requests"])
        assert used_before < 2000 - 1, "changing a limit must not reset usage"

        config_path.write_text("tiers: [this is not valid\n")
        for _ in range(50):
            _, body = await get(gw, "/health")
            if '"state":"error"' in body:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("/health never showed the refused config")
        await asyncio.sleep(0.3)
        stop.set()
        await runner
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES
        )  # type: ignore[arg-type]
        assert raw.http_response.headers["x-ratelimit-limit-requests"] == "2000"
        assert statuses and set(statuses) == {200}
        _, text = await get(gw, "/metrics")
        assert metric(text, "tollbooth_config_reloads_total", outcome="ok") == 1
        assert metric(text, "tollbooth_config_reloads_total", outcome="refused") == 1


async def test_no_secret_in_any_log_line(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_gateway(fresh_database_url, redis_url, monkeypatch) as gw:
        client = openai.AsyncOpenAI(api_key=gw.key, base_url=gw.openai_base_url, max_retries=0)
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
        _ = [c async for c in stream]
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,  # type: ignore[arg-type]
                extra_headers={"x-mock-error": "500"},
            )
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(
                api_key="tb_wrong_secret_value", max_retries=0, base_url=gw.openai_base_url
            ).models.list()
        await gw.events(wait_for=3)
    text = "\n".join(
        record.getMessage() + " " + str(getattr(record, "fields", "")) for record in caplog.records
    )
    assert "request" in text  # the access log did speak
    for secret in (gw.key, PROVIDER_KEY, ANTHROPIC_PROVIDER_KEY, "tb_wrong_secret_value"):
        assert secret not in text
