"""Amazon Bedrock Runtime, Converse API: `POST /model/{modelId}/converse` and
`/model/{modelId}/converse-stream`, for boto3's `bedrock-runtime` client.

The client authenticates with its Tollbooth key as a Bedrock bearer token
(`AWS_BEARER_TOKEN_BEDROCK=tb_...`: `Authorization: Bearer tb_...`, which boto3 sends only
over HTTPS). The model is the path's model id, percent-decoded (boto3 sends `:` as `%3A`),
priced as its catalog model (`bedrock_models.catalog_model`: region prefix, vendor, version
and date dropped) and recorded under that name (the id as requested goes in
`metadata.requested_model`).

Upstream: the provider's endpoint (`endpoint_url`, or `https://bedrock-runtime.{region}
.amazonaws.com`) with the model id percent-encoded as botocore encodes it, signed with SigV4
(service `bedrock`, the provider's `region`) by `gateway.aws_signing` with the AWS
credentials of the gateway's environment; the client's `Authorization` and any `X-Amz-*`
signing headers never go upstream. A ConverseStream answer is AWS event-stream framing,
relayed byte for byte and read by `bedrock_stream` (usage from the final `metadata` event).

Errors the gateway itself answers on these routes have Bedrock's shape: `{"message": ...}`
and an `x-amzn-ErrorType: NAME:http://internal.amazon.com/coral/com.amazon.bedrock/` header
botocore reads the error code from. A bad or missing key is a 403
`UnrecognizedClientException`; a per-minute limit a 429 `ThrottlingException` (botocore
retries it in every retry mode); an exhausted monthly limit or spend cap a 400
`ServiceQuotaExceededException`: botocore's default (legacy) retry mode retries any 429,
whatever its code, so only a non-429 status stops it (the standard and adaptive modes stop on
this code too). Other statuses keep their number with Bedrock's name for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from gateway.aws_signing import AwsCredentialsMissing, AwsSigning
from gateway.errors import ServiceUnavailableError
from gateway.providers.base import (
    Call,
    Endpoint,
    Framer,
    ResponseUsage,
    StreamMeter,
)
from gateway.providers.bedrock_models import catalog_model
from gateway.providers.bedrock_stream import ConverseStreamMeter, EventStreamFramer, converse_usage
from gateway.providers.common import dump_json, forward_headers, items, load_object, obj
from gateway.providers.defaults import DefaultHooks

if TYPE_CHECKING:
    from gateway.config import ProviderConfig

CONVERSE = Endpoint(
    "converse",
    "POST",
    "/model/{model_id}/converse",
    "/model/{model_id}/converse",
    needs_model=False,
    model_param="model_id",
)
CONVERSE_STREAM = Endpoint(
    "converse-stream",
    "POST",
    "/model/{model_id}/converse-stream",
    "/model/{model_id}/converse-stream",
    streams=True,
    needs_model=False,
    model_param="model_id",
)
EVENT_STREAM = "application/vnd.amazon.eventstream"
_ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
# The gateway's status -> what it answers on Bedrock routes and the exception's name.
_ERRORS: dict[int, tuple[int, str]] = {
    400: (400, "ValidationException"),
    401: (403, "UnrecognizedClientException"),
    402: (403, "AccessDeniedException"),
    403: (403, "AccessDeniedException"),
    404: (404, "ResourceNotFoundException"),
    408: (408, "ModelTimeoutException"),
    413: (413, "ValidationException"),
    429: (429, "ThrottlingException"),
    500: (500, "InternalServerException"),
    502: (502, "InternalServerException"),
    503: (503, "ServiceUnavailableException"),
    504: (504, "ModelTimeoutException"),
}
_QUOTA_EXHAUSTED = (400, "ServiceQuotaExceededException")
# Headers of the client's own request signing: the gateway signs anew.
_CLIENT_SIGNING = frozenset({"x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})


def _error(status: int, code: str | None) -> tuple[int, str]:
    if status == 429 and code == "insufficient_quota":
        return _QUOTA_EXHAUSTED
    return _ERRORS.get(
        status, (status, "ValidationException" if status < 500 else "InternalServerException")
    )


class BedrockApi(DefaultHooks):
    """Adapter for Bedrock Runtime's Converse API. Holds the AWS credentials it signs with
    (`gateway.aws_signing`); otherwise stateless."""

    kind: str = "bedrock"
    endpoints: tuple[Endpoint, ...] = (CONVERSE, CONVERSE_STREAM)
    stream_content_types: tuple[str, ...] = (EVENT_STREAM,)

    def __init__(self) -> None:
        self.signing = AwsSigning()

    def catalog_model(self, provider: ProviderConfig, requested: str) -> str | None:
        return catalog_model(requested)

    def upstream_url(self, endpoint: Endpoint, provider: ProviderConfig, call: Call) -> str:
        model_id = quote(call.params.get("model_id", ""), safe="-_.~")  # as botocore does
        path = endpoint.upstream_path.replace("{model_id}", model_id)
        return provider.base_url.rstrip("/") + path

    def upstream_headers(
        self, client_headers: Mapping[str, str], api_key: str | None
    ) -> dict[str, str]:
        headers = forward_headers(client_headers, None)
        for name in [name for name in headers if name.lower() in _CLIENT_SIGNING]:
            del headers[name]
        return headers

    def sign(
        self, provider: ProviderConfig, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> None:
        region = provider.region or "us-east-1"  # config requires a region for bedrock
        try:
            self.signing.sign(method, url, headers, body, region=region)
        except AwsCredentialsMissing:
            raise ServiceUnavailableError(
                "This gateway has no AWS credentials to reach Bedrock with right now."
            ) from None

    def credential_state(self, provider: ProviderConfig) -> str | None:
        return self.signing.state(None)

    async def warm_up(self, providers: Mapping[str, ProviderConfig]) -> None:
        if any(provider.kind == self.kind for provider in providers.values()):
            await self.signing.prepare({None})

    def stream_framer(self, endpoint: Endpoint) -> Framer | None:
        return EventStreamFramer()

    def is_streaming(self, endpoint: Endpoint, body: Mapping[str, Any]) -> bool:
        return endpoint.streams

    def prepare_body(self, endpoint: Endpoint, body: dict[str, Any]) -> bool:
        return False  # a ConverseStream always ends with its usage: nothing to ask for

    def usage_from_body(self, endpoint: Endpoint, body: bytes) -> ResponseUsage:
        parsed = load_object(body)
        if parsed is None:
            return ResponseUsage(None, None)
        found = converse_usage(parsed.get("usage"))
        if found is not None:
            return ResponseUsage(found, None)
        message = obj(obj(parsed.get("output")).get("message"))
        return ResponseUsage(None, None, "\n".join(_block_texts(message.get("content"))))

    def stream_meter(self, endpoint: Endpoint, strip_usage: bool) -> StreamMeter:
        return ConverseStreamMeter()

    def prompt_text(self, endpoint: Endpoint, body: Mapping[str, Any]) -> str:
        return "\n".join(part for part in _prompt_parts(body) if part)

    def max_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        value = obj(body.get("inferenceConfig")).get("maxTokens")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        return None

    def error_status(self, status: int, error_type: str, code: str | None) -> int:
        return _error(status, code)[0]

    def error_body(
        self, status: int, error_type: str, message: str, code: str | None, param: str | None
    ) -> bytes:
        return orjson.dumps({"message": message})

    def error_headers(self, status: int, error_type: str, code: str | None) -> dict[str, str]:
        return {"x-amzn-ErrorType": _error(status, code)[1] + _ERROR_NAMESPACE}


def _prompt_parts(body: Mapping[str, Any]) -> Iterator[str]:
    yield from _block_texts(body.get("system"))
    for message in items(body.get("messages")):
        yield from _block_texts(obj(message).get("content"))
    tools = obj(body.get("toolConfig")).get("tools")
    if tools:
        yield dump_json(tools)  # tool schemas are part of the prompt the model reads


def _block_texts(content: Any) -> Iterator[str]:
    """Text of Converse content blocks: text, tool use input, tool results, reasoning."""
    for block in items(content):
        block = obj(block)
        text = block.get("text")
        if isinstance(text, str):
            yield text
        tool_use = obj(block.get("toolUse"))
        if tool_use:
            yield str(tool_use.get("name") or "")
            yield dump_json(tool_use.get("input"))
        tool_result = obj(block.get("toolResult"))
        if tool_result:
            yield from _block_texts(tool_result.get("content"))
            for part in items(tool_result.get("content")):
                if "json" in obj(part):
                    yield dump_json(obj(part)["json"])
        reasoning = obj(obj(block.get("reasoningContent")).get("reasoningText")).get("text")
        if isinstance(reasoning, str):
            yield reasoning
