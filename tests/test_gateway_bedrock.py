"""boto3's `bedrock-runtime` client through Tollbooth over TLS, with its `tb_` key as the
Bedrock bearer token: Converse and ConverseStream leave one usage event each whose tokens are
what the fake Bedrock reported (mapped to the gateway's convention) and whose money prices
cache reads and 5-minute / 1-hour cache writes at their own rates; the provider sees SigV4,
never the key; cut and abandoned streams are metered; 429s are retried or not as meant."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote

import aiohttp
import boto3
import pytest
import yaml
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from gateway import keys
from gateway.mock_provider import MockOptions
from tests.harness import Gateway, running_gateway
from tests.helpers.hand_priced import expected_money
from tests.helpers.tls import SelfSigned, self_signed

MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
CATALOG_MODEL = "claude-sonnet-4-5"
REGION = "us-west-2"
AWS_KEY_ID, AWS_SECRET = "AKIDGATEWAYTEST00001", "gateway-secret-not-for-clients"
MESSAGES: Any = [{"role": "user", "content": [{"text": "hello there world"}]}]  # 10 tokens
Client = Callable[..., Any]


def bedrock_provider(mock_url: str) -> dict[str, Any]:
    return {"bedrock": {"kind": "bedrock", "region": REGION, "endpoint_url": mock_url}}


@pytest.fixture
def cert(tmp_path: Path) -> SelfSigned:
    return self_signed(tmp_path)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The gateway's own AWS credentials (the default chain reads the environment)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def start(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    cert: SelfSigned,
    **options: Any,
) -> Any:
    return running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tls=cert.server_context(),
        providers=bedrock_provider,
        mock_options=MockOptions(aws_region=REGION),
        **options,
    )


@pytest.fixture
async def gw(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    cert: SelfSigned,
    aws_env: None,
) -> AsyncIterator[Gateway]:
    async with await start(fresh_database_url, redis_url, monkeypatch, cert) as gateway:
        yield gateway


def make_client(
    gw: Gateway,
    cert: SelfSigned,
    key: str | None = None,
    *,
    retries: dict[str, Any] | None = None,
    **headers: str,
) -> Any:
    """A bedrock-runtime client whose bearer token is `key` (the customer's by default).
    The token is in the environment only while the client is made; `signature_version`
    "bearer" binds it then (botocore otherwise reads the variable again per request)."""
    with mock.patch.dict(os.environ, {"AWS_BEARER_TOKEN_BEDROCK": key or gw.key}):
        client = boto3.client(
            "bedrock-runtime",
            region_name=REGION,
            endpoint_url=gw.base_url,
            verify=str(cert.cert_path),
            config=Config(
                signature_version="bearer",
                retries=retries or {"max_attempts": 1, "mode": "standard"},
            ),
        )
    if headers:

        def add(request: Any, **_: Any) -> None:
            for name, value in headers.items():
                request.headers[name] = value

        client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


def meta(row: Any) -> dict[str, Any]:
    value = row["metadata"]
    return value if isinstance(value, dict) else json.loads(value)


CACHE_HEADERS = {
    "x-mock-cached-tokens": "700",
    "x-mock-cache-write-tokens": "500",
    "x-mock-cache-write-1h-tokens": "200",
    "x-mock-output-tokens": "6",
}


async def test_converse_is_metered_as_reported_with_cache_rates(
    gw: Gateway,
    cert: SelfSigned,
) -> None:
    client = make_client(gw, cert, **CACHE_HEADERS)
    answer = await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
    assert answer["usage"]["inputTokens"] == 10
    assert answer["usage"]["cacheDetails"] == [
        {"ttl": "1h", "inputTokens": 200},
        {"ttl": "5m", "inputTokens": 300},
    ]
    [row] = await gw.events()
    assert (row["provider"], row["model"], row["endpoint"]) == (
        "bedrock",
        CATALOG_MODEL,
        "converse",
    )
    assert row["status_code"] == 200 and row["streamed"] is False
    assert row["usage_source"] == "provider"
    assert (
        row["input_tokens"],
        row["cached_input_tokens"],
        row["cache_write_tokens"],
        row["output_tokens"],
    ) == (10 + 700 + 500, 700, 500, 6)
    assert (row["cost_usd"], row["price_usd"]) == expected_money(
        CATALOG_MODEL, row, cache_write_1h=200
    )
    assert meta(row)["requested_model"] == MODEL
    assert row["upstream_request_id"] == answer["ResponseMetadata"]["RequestId"]
    assert meta(row)["cache_write_1h_tokens"] == 200


async def test_converse_stream_is_relayed_and_metered_from_metadata(
    gw: Gateway,
    cert: SelfSigned,
) -> None:
    client = make_client(gw, cert, **CACHE_HEADERS)

    def run() -> tuple[list[dict[str, Any]], dict[str, str]]:
        answer = client.converse_stream(modelId=MODEL, messages=MESSAGES)
        return list(answer["stream"]), answer["ResponseMetadata"]["HTTPHeaders"]

    events, headers = await asyncio.to_thread(run)
    assert [next(iter(event)) for event in events] == [
        "messageStart",
        *["contentBlockDelta"] * 6,
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert headers["content-type"] == "application/vnd.amazon.eventstream"
    assert headers["x-accel-buffering"] == "no"  # a proxy in front must not hold it back
    reported = events[-1]["metadata"]["usage"]
    [row] = await gw.events()
    assert row["streamed"] is True and row["endpoint"] == "converse-stream"
    assert row["usage_source"] == "provider"
    assert row["input_tokens"] == (
        reported["inputTokens"]
        + reported["cacheReadInputTokens"]
        + reported["cacheWriteInputTokens"]
    )
    assert row["output_tokens"] == reported["outputTokens"] == 6
    assert (row["cost_usd"], row["price_usd"]) == expected_money(
        CATALOG_MODEL, row, cache_write_1h=200
    )


async def test_the_provider_gets_sigv4_and_never_the_tb_key(
    gw: Gateway,
    cert: SelfSigned,
) -> None:
    client = make_client(gw, cert)
    await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
    [seen] = gw.mock_requests
    assert gw.key not in repr(seen.headers) and gw.key.encode() not in seen.body
    assert "tb_" not in repr(seen.headers)
    authorization = seen.headers["authorization"]
    assert re.fullmatch(
        rf"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/\d{{8}}/{REGION}/bedrock/"
        r"aws4_request, SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}",
        authorization,
    )
    # The signature is right for what arrived (recomputed with the gateway's secret).
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    host = seen.headers["host"]
    url = f"http://{host}/model/{quote(MODEL, safe='-_.~')}/converse"
    request = AWSRequest(
        method="POST",
        url=url,
        data=seen.body,
        headers={name: seen.headers[name] for name in signed if name != "host"},
    )
    request.context["timestamp"] = seen.headers["x-amz-date"]
    signer = SigV4Auth(Credentials(AWS_KEY_ID, AWS_SECRET), "bedrock", REGION)
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    assert authorization.endswith("Signature=" + signer.signature(string_to_sign, request))
    assert "x-amz-date" in signed and "host" in signed


async def test_health_reports_the_aws_credentials(gw: Gateway, cert: SelfSigned) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.base_url + "/health", ssl=cert.client_context()) as health,
    ):
        body = await health.json()
    assert body["providers"]["bedrock"] == {"key": "set"}
    assert AWS_SECRET not in json.dumps(body) and AWS_KEY_ID not in json.dumps(body)


async def test_the_bearer_token_from_the_environment_as_users_set_it(
    gw: Gateway,
    cert: SelfSigned,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", gw.key)
    client = boto3.client(
        "bedrock-runtime", region_name=REGION, endpoint_url=gw.base_url, verify=str(cert.cert_path)
    )
    answer = await asyncio.to_thread(
        client.converse, modelId="amazon.nova-pro-v1:0", messages=MESSAGES
    )
    assert answer["usage"]["outputTokens"] == 20
    [row] = await gw.events()
    assert row["model"] == "nova-pro" and row["usage_source"] == "provider"


async def test_a_client_that_leaves_mid_stream_is_drained_and_metered(
    gw: Gateway,
    cert: SelfSigned,
) -> None:
    client = make_client(gw, cert, **{"x-mock-output-tokens": "30", "x-mock-token-delay-ms": "20"})

    def leave_early() -> None:
        answer = client.converse_stream(modelId=MODEL, messages=MESSAGES)
        stream = answer["stream"]
        for _ in stream:
            break
        stream.close()

    await asyncio.to_thread(leave_early)
    [row] = await gw.events(wait_for=1, timeout_s=15)
    assert row["usage_source"] == "provider"  # the drain read the final metadata
    assert (row["input_tokens"], row["output_tokens"]) == (10, 30)
    assert meta(row).get("client_disconnected") is True


@pytest.mark.parametrize("fault", ["reset", "truncate", "stream-error"])
async def test_a_stream_the_provider_cuts_is_estimated(
    gw: Gateway,
    cert: SelfSigned,
    fault: str,
) -> None:
    client = make_client(gw, cert, **{"x-mock-error": fault, "x-mock-output-tokens": "10"})

    def run() -> None:
        try:
            answer = client.converse_stream(modelId=MODEL, messages=MESSAGES)
            for _ in answer["stream"]:
                pass
        except Exception:  # boto3's own reaction to a cut stream is not what is tested
            pass

    await asyncio.to_thread(run)
    [row] = await gw.events()
    assert row["usage_source"] == "estimated" and row["status_code"] == 200
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    if fault == "reset":
        assert meta(row).get("upstream_broken") is True


async def test_a_bad_event_payload_does_not_lose_the_reported_usage(
    gw: Gateway,
    cert: SelfSigned,
) -> None:
    client = make_client(gw, cert, **{"x-mock-error": "invalid-json", "x-mock-output-tokens": "10"})

    def run() -> None:
        try:
            for _ in client.converse_stream(modelId=MODEL, messages=MESSAGES)["stream"]:
                pass
        except Exception:  # boto3 may refuse the bad payload; the gateway relays it as is
            pass

    await asyncio.to_thread(run)
    [row] = await gw.events()
    assert row["usage_source"] == "provider" and row["output_tokens"] == 10


async def test_errors_have_bedrocks_shape(gw: Gateway, cert: SelfSigned) -> None:
    bad = make_client(gw, cert, key="tb_" + "x" * 40)
    with pytest.raises(ClientError) as refused:
        await asyncio.to_thread(bad.converse, modelId=MODEL, messages=MESSAGES)
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    client = make_client(gw, cert)
    with pytest.raises(ClientError) as unknown:
        await asyncio.to_thread(
            client.converse, modelId="amazon.unknown-model-v1:0", messages=MESSAGES
        )
    assert unknown.value.response["Error"]["Code"] == "ValidationException"
    assert "unknown-model" in unknown.value.response["Error"]["Message"]
    assert gw.mock_requests == []  # refused before anything reached the provider


@pytest.mark.parametrize("mode", ["legacy", "standard"])
async def test_a_per_minute_limit_is_retried_and_a_monthly_one_is_not(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    cert: SelfSigned,
    aws_env: None,
    mode: str,
) -> None:
    tiers = {
        "free": {"limits": {"requests_per_minute": 1}},
        "pro": {"limits": {"requests_per_month": 1}},
    }
    async with await start(fresh_database_url, redis_url, monkeypatch, cert, tiers=tiers) as gw:
        retries = {"total_max_attempts": 3, "mode": mode}
        client = make_client(gw, cert, retries=retries)
        await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
        with pytest.raises(ClientError) as throttled:
            await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
        error = throttled.value.response
        assert error["Error"]["Code"] == "ThrottlingException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert error["ResponseMetadata"]["RetryAttempts"] == 2  # boto3 retried it

        accounts = gw.app[keys.accounts]
        monthly = "cust_monthly_" + mode
        await accounts.create_customer(monthly, tier="pro")
        _, monthly_key = await accounts.create_key(
            monthly, project_id="web", user_id="u2", name="monthly"
        )
        client = make_client(gw, cert, key=monthly_key, retries=retries)
        await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
        with pytest.raises(ClientError) as exhausted:
            await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
        error = exhausted.value.response
        assert error["Error"]["Code"] == "ServiceQuotaExceededException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert error["ResponseMetadata"]["RetryAttempts"] == 0  # boto3 stopped at once
        assert error["ResponseMetadata"]["HTTPHeaders"]["x-should-retry"] == "false"


async def test_a_bedrock_provider_a_reload_adds_is_ready_for_its_first_request(
    fresh_database_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    cert: SelfSigned,
    aws_env: None,
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "tollbooth.yaml"
    async with running_gateway(
        fresh_database_url,
        redis_url,
        monkeypatch,
        tls=cert.server_context(),
        config_path=config_path,
        mock_options=MockOptions(aws_region=REGION),
    ) as gw:
        client = make_client(gw, cert)
        with pytest.raises(ClientError) as unconfigured:
            await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
        assert unconfigured.value.response["Error"]["Code"] == "ValidationException"

        config = yaml.safe_load(config_path.read_bytes())
        config["providers"].update(bedrock_provider(gw.mock_url))
        config_path.write_bytes(yaml.safe_dump(config).encode())
        assert await gw.app[keys.config_watcher].reload()
        await asyncio.sleep(0.5)  # the credential chain is read in a worker thread
        answer = await asyncio.to_thread(client.converse, modelId=MODEL, messages=MESSAGES)
        assert answer["usage"]["outputTokens"] == 20
