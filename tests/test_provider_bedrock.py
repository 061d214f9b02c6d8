"""BedrockApi at the seam: routes and model ids from the path, the upstream URL as botocore
builds it, no client credential upstream, Bedrock-shaped errors and statuses, usage and prompt
text from Converse bodies."""

from __future__ import annotations

import orjson
import pytest

from gateway.config import ProviderConfig
from gateway.providers.bedrock import CONVERSE, CONVERSE_STREAM, BedrockApi
from gateway.providers.bedrock_stream import ConverseStreamMeter, EventStreamFramer
from gateway.providers.registry import match
from pricing.models import Usage

API = BedrockApi()
PROVIDER = ProviderConfig.model_validate({"kind": "bedrock", "region": "eu-west-1"})
MODEL = "eu.anthropic.claude-sonnet-4-5-20250929-v1:0"


def test_both_routes_match_with_the_model_id_percent_decoded() -> None:
    for suffix, endpoint in (("converse", CONVERSE), ("converse-stream", CONVERSE_STREAM)):
        found = match(f"/model/eu.anthropic.claude-sonnet-4-5-20250929-v1%3A0/{suffix}")
        assert found is not None
        (api, matched), call = found
        assert api.kind == "bedrock" and matched is endpoint
        assert call.params["model_id"] == MODEL
        assert api.catalog_model(PROVIDER, call.params["model_id"]) == "claude-sonnet-4-5"
    assert match("/model/amazon.nova-pro-v1:0/invoke") is None


def test_the_upstream_url_encodes_the_model_id_as_botocore_does() -> None:
    found = match(
        "/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A%3Afoundation-model%2F"
        "amazon.nova-lite-v1%3A0/converse-stream"
    )
    assert found is not None
    url = API.upstream_url(CONVERSE_STREAM, PROVIDER, found[1])
    assert url == (
        "https://bedrock-runtime.eu-west-1.amazonaws.com/model/arn%3Aaws%3Abedrock"
        "%3Aeu-west-1%3A%3Afoundation-model%2Famazon.nova-lite-v1%3A0/converse-stream"
    )
    local = ProviderConfig.model_validate(
        {"kind": "bedrock", "region": "eu-west-1", "endpoint_url": "http://127.0.0.1:9100/"}
    )
    assert API.upstream_url(
        CONVERSE, local, match(f"/model/{MODEL.replace(':', '%3A')}/converse")[1]
    ) == (  # type: ignore[index]
        "http://127.0.0.1:9100/model/eu.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    )


def test_no_client_credential_or_signature_goes_upstream() -> None:
    headers = API.upstream_headers(
        {
            "Authorization": "Bearer tb_secret",
            "X-Amz-Date": "20261204T000000Z",
            "X-Amz-Security-Token": "client-token",
            "x-amz-content-sha256": "abc",
            "Content-Type": "application/json",
            "amz-sdk-invocation-id": "id-1",
            "x-api-key": "tb_secret",
            "Host": "gateway",
        },
        None,
    )
    assert {name.lower() for name in headers} == {
        "content-type",
        "amz-sdk-invocation-id",
        "accept-encoding",
    }
    assert API.client_key({"Authorization": "Bearer tb_abc"}, {}) == "tb_abc"


@pytest.mark.parametrize(
    ("status", "code", "answered", "name"),
    [
        (401, "invalid_api_key", 403, "UnrecognizedClientException"),
        (402, "billing_suspended", 403, "AccessDeniedException"),
        (400, "model_not_found", 400, "ValidationException"),
        (429, "rate_limit_exceeded", 429, "ThrottlingException"),
        (429, "insufficient_quota", 400, "ServiceQuotaExceededException"),
        (503, "service_unavailable", 503, "ServiceUnavailableException"),
        (502, "upstream_unreachable", 502, "InternalServerException"),
    ],
)
def test_gateway_errors_read_as_bedrocks(status: int, code: str, answered: int, name: str) -> None:
    assert API.error_status(status, "x", code) == answered
    header = API.error_headers(status, "x", code)["x-amzn-ErrorType"]
    assert header == f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    assert orjson.loads(API.error_body(status, "x", "Nope.", code, None)) == {"message": "Nope."}


def test_usage_and_text_from_converse_bodies() -> None:
    body = orjson.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "Hi there"}]}},
            "stopReason": "end_turn",
            "usage": {
                "inputTokens": 4,
                "outputTokens": 2,
                "totalTokens": 6,
                "cacheReadInputTokens": 3,
                "cacheWriteInputTokens": 0,
            },
        }
    )
    found = API.usage_from_body(CONVERSE, body)
    assert found.usage == Usage(input_tokens=7, output_tokens=2, cached_input_tokens=3)
    no_usage = orjson.dumps({"output": {"message": {"content": [{"text": "Hi there"}]}}})
    assert API.usage_from_body(CONVERSE, no_usage).produced_text == "Hi there"
    assert API.usage_from_body(CONVERSE, b"not json").usage is None


def test_prompt_text_and_limits_from_the_request() -> None:
    body = {
        "system": [{"text": "Be terse."}],
        "messages": [
            {"role": "user", "content": [{"text": "What is 2+2?"}]},
            {
                "role": "assistant",
                "content": [
                    {"toolUse": {"toolUseId": "t1", "name": "calc", "input": {"expr": "2+2"}}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "toolResult": {
                            "toolUseId": "t1",
                            "content": [{"json": {"value": 4}}, {"text": "four"}],
                        }
                    }
                ],
            },
        ],
        "toolConfig": {"tools": [{"toolSpec": {"name": "calc"}}]},
        "inferenceConfig": {"maxTokens": 300},
    }
    text = API.prompt_text(CONVERSE, body)
    for part in (
        "Be terse.",
        "What is 2+2?",
        "calc",
        '{"expr":"2+2"}',
        '{"value":4}',
        "four",
        "toolSpec",
    ):
        assert part in text
    assert API.max_output_tokens(body) == 300
    assert API.max_output_tokens({"inferenceConfig": {"maxTokens": True}}) is None
    assert API.is_streaming(CONVERSE_STREAM, {}) and not API.is_streaming(CONVERSE, {})
    assert API.prepare_body(CONVERSE_STREAM, body) is False


def test_streams_are_event_stream_framed() -> None:
    assert API.stream_content_types == ("application/vnd.amazon.eventstream",)
    assert isinstance(API.stream_framer(CONVERSE_STREAM), EventStreamFramer)
    assert isinstance(API.stream_meter(CONVERSE_STREAM, False), ConverseStreamMeter)
