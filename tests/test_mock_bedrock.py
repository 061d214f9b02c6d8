"""The mock provider's Bedrock Runtime endpoints, driven by boto3 itself (which signs with
SigV4 and reads the event-stream framing, CRCs included), and by raw HTTP for refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from pytest_aiohttp import AiohttpServer

from gateway.mock_provider import MOCK_REQUESTS, MockOptions, create_mock_app
from gateway.providers.eventstream import EventStreamDecoder

MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
MESSAGES: Any = [{"role": "user", "content": [{"text": "hello there world"}]}]  # 10 tokens
Serve = Callable[..., Awaitable[str]]


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDMOCKTEST0000EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "mock-secret-key")
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield


@pytest.fixture
def serve(aiohttp_server: AiohttpServer) -> Serve:
    async def start(**options: Any) -> str:
        server = await aiohttp_server(create_mock_app(MockOptions(**options)))
        return str(server.make_url("")).rstrip("/")

    return start


def client(url: str, region: str = "us-east-1", **headers: str) -> Any:
    made = boto3.client(
        "bedrock-runtime",
        region_name=region,
        endpoint_url=url,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    if headers:

        def add(request: Any, **_: Any) -> None:
            for name, value in headers.items():
                request.headers[name] = value

        made.meta.events.register("before-sign.bedrock-runtime.*", add)
    return made


async def test_converse_answers_with_usage_and_cache_details(serve: Serve) -> None:
    url = await serve()
    bedrock = client(
        url,
        **{
            "x-mock-cached-tokens": "7",
            "x-mock-cache-write-tokens": "5",
            "x-mock-cache-write-1h-tokens": "2",
            "x-mock-output-tokens": "4",
        },
    )
    answer = await asyncio.to_thread(bedrock.converse, modelId=MODEL, messages=MESSAGES)
    assert answer["output"]["message"]["content"] == [{"text": "tok0 tok1 tok2 tok3"}]
    assert answer["usage"] == {
        "inputTokens": 10,
        "outputTokens": 4,
        "totalTokens": 26,
        "cacheReadInputTokens": 7,
        "cacheWriteInputTokens": 5,
        "cacheDetails": [{"ttl": "1h", "inputTokens": 2}, {"ttl": "5m", "inputTokens": 3}],
    }
    assert answer["stopReason"] == "end_turn"


async def test_converse_stream_is_the_bedrock_event_sequence(
    serve: Serve, aiohttp_server: Any
) -> None:
    url = await serve()
    bedrock = client(url, **{"x-mock-output-tokens": "3"})

    def run() -> list[dict[str, Any]]:
        answer = bedrock.converse_stream(
            modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 2}
        )
        return list(answer["stream"])

    events = await asyncio.to_thread(run)
    assert [next(iter(event)) for event in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[-2]["messageStop"]["stopReason"] == "max_tokens"
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 10,
        "outputTokens": 2,
        "totalTokens": 12,
    }


async def test_the_model_id_is_read_percent_decoded_and_the_request_recorded(
    aiohttp_server: AiohttpServer,
) -> None:
    app = create_mock_app(MockOptions(aws_region="eu-west-1"))
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")
    await asyncio.to_thread(client(url, "eu-west-1").converse, modelId=MODEL, messages=MESSAGES)
    recorded = app[MOCK_REQUESTS][-1]
    assert recorded.path == f"/model/{MODEL}/converse"
    assert recorded.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID")
    assert "/eu-west-1/bedrock/aws4_request" in recorded.headers["authorization"]
    with pytest.raises(ClientError) as refused:
        await asyncio.to_thread(client(url, "us-east-1").converse, modelId=MODEL, messages=MESSAGES)
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_requests_without_sigv4_are_refused_in_bedrocks_shape(serve: Serve) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as session:
        for headers in (
            {},
            {"Authorization": "Bearer tb_abc"},
            {
                "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDX/20261204/us-east-1/"
                "s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "a" * 64,
                "X-Amz-Date": "20261204T000000Z",
            },
        ):
            async with session.post(
                f"{url}/model/{MODEL}/converse", json={}, headers=headers
            ) as response:
                assert response.status == 403
                assert response.headers["x-amzn-ErrorType"].endswith(
                    ":http://internal.amazon.com/coral/com.amazon.bedrock/"
                )
                assert set(await response.json()) == {"message"}


async def test_injected_errors_are_bedrock_exceptions(serve: Serve) -> None:
    url = await serve()
    for control, code, status in (
        ("429", "ThrottlingException", 429),
        ("insufficient-quota", "ServiceQuotaExceededException", 400),
        ("503", "ServiceUnavailableException", 503),
    ):
        with pytest.raises(ClientError) as failed:
            await asyncio.to_thread(
                client(url, **{"x-mock-error": control}).converse, modelId=MODEL, messages=MESSAGES
            )
        assert failed.value.response["Error"]["Code"] == code
        assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


async def test_a_truncated_stream_lacks_its_final_events(serve: Serve) -> None:
    url = await serve()
    bedrock = client(url, **{"x-mock-error": "truncate"})

    def raw() -> bytes:
        answer = bedrock.converse_stream(modelId=MODEL, messages=MESSAGES)
        return bytes(answer["stream"]._raw_stream.read())

    data = await asyncio.to_thread(raw)
    decoder = EventStreamDecoder()
    names = [message.event_type for message in decoder.feed(data)]
    assert names[0] == "messageStart" and "metadata" not in names and not decoder.broken
