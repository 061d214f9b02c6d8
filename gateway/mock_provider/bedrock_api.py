"""The mock's Amazon Bedrock Runtime endpoints: Converse and ConverseStream.

`POST /model/{modelId}/converse` answers JSON; `/model/{modelId}/converse-stream` answers an
AWS event-stream (`application/vnd.amazon.eventstream`, framed by
`gateway.providers.eventstream` with both CRCs and the `:event-type`, `:content-type` and
`:message-type` headers), in Bedrock's order: messageStart, contentBlockDelta (one per word),
contentBlockStop, messageStop, metadata (usage and metrics). The model id comes from the path
(percent-decoded, as boto3 encodes `:` as `%3A`).

Auth: every request must carry a well-formed SigV4 `Authorization` header (the mock cannot
check the signature without the secret, so it checks its shape): algorithm
`AWS4-HMAC-SHA256`, a credential scope `KEY/YYYYMMDD/REGION/bedrock/aws4_request` whose date
is the `X-Amz-Date` header's, signed headers that include `host` and `x-amz-date`, a 64-hex
signature. `MockOptions.aws_region` (if set) is the only region accepted. Anything else is a
403 `UnrecognizedClientException` / `InvalidSignatureException`, as Bedrock answers.

Errors are Bedrock's: `{"message": ...}` with `x-amzn-ErrorType: NAME:http://internal...`;
`x-mock-error: 429` is a `ThrottlingException`, `insufficient-quota` a
`ServiceQuotaExceededException` (400). Tokens follow `tokens.py` (Bedrock's `inputTokens`
excludes cache reads and writes, as Anthropic's does); `x-mock-cache-write-1h-tokens: N`
reports N of the cache writes as 1-hour writes in `cacheDetails`.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from gateway.mock_provider.controls import Controls
from gateway.mock_provider.endpoint import Call, InvalidRequest, endpoint
from gateway.mock_provider.replies import EventStream, send_json, send_stream
from gateway.mock_provider.state import MOCK_OPTIONS
from gateway.mock_provider.tokens import conversation_tokens, message_contents
from gateway.providers.eventstream import event_message, exception_message

EVENT_STREAM_TYPE = "application/vnd.amazon.eventstream"
_ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_ERRORS = {
    400: ("ValidationException", "Malformed input request, please reformat your input."),
    403: (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request."),
    424: ("ModelErrorException", "The model returned an error."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error."),
    503: ("ServiceUnavailableException", "The service is unavailable. Try again later."),
}
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]{16,128})/(?P<date>\d{8})/"
    r"(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)/(?P<service>[a-z0-9-]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9-]+(?:;[a-z0-9-]+)*), Signature=(?P<signature>[0-9a-f]{64})"
)
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")


def error_response(
    status: int, request_id: str, message: str | None = None, name: str | None = None
) -> web.Response:
    stock_name, stock = _ERRORS.get(status, _ERRORS[500] if status >= 500 else _ERRORS[400])
    return web.Response(
        status=status,
        body=orjson.dumps({"message": message or stock}),
        headers={
            "x-amzn-RequestId": request_id,
            "x-amzn-ErrorType": (name or stock_name) + _ERROR_NAMESPACE,
        },
        content_type="application/json",
    )


class BedrockDialect:
    broken_event = event_message("contentBlockDelta", b'{"contentBlockIndex": 0, "delta": ')
    stream_error_event = exception_message(
        "modelStreamErrorException",
        b'{"message":"The model stream failed.","originalStatusCode":500}',
    )

    def new_request_id(self) -> str:
        return str(uuid.uuid4())

    def response_headers(self, request_id: str) -> dict[str, str]:
        return {"x-amzn-RequestId": request_id}

    def error(
        self, status: int, request_id: str, message: str | None = None, param: str | None = None
    ) -> web.Response:
        return error_response(status, request_id, message)

    def refuse(
        self, request: web.Request, api_key: str | None, request_id: str
    ) -> web.Response | None:
        authorization = request.headers.get("Authorization", "")
        if not authorization:
            return error_response(
                403,
                request_id,
                "Missing Authentication Token",
                "MissingAuthenticationTokenException",
            )
        found = _AUTHORIZATION.fullmatch(authorization)
        if found is None:
            return error_response(
                403,
                request_id,
                "The security token included in the request is invalid.",
                "UnrecognizedClientException",
            )
        amz_date = request.headers.get("X-Amz-Date", "")
        signed = found["signed"].split(";")
        region = request.app[MOCK_OPTIONS].aws_region
        problem = None
        if not _AMZ_DATE.fullmatch(amz_date) or amz_date[:8] != found["date"]:
            problem = "the credential scope's date is not the X-Amz-Date header's"
        elif found["service"] != "bedrock":
            problem = (
                f"credential should be scoped to correct service: 'bedrock', not "
                f"'{found['service']}'"
            )
        elif region is not None and found["region"] != region:
            problem = f"credential should be scoped to a valid region: '{region}'"
        elif "host" not in signed or "x-amz-date" not in signed or signed != sorted(signed):
            problem = "the signed headers must include host and x-amz-date, sorted"
        if problem is not None:
            return error_response(403, request_id, problem, "InvalidSignatureException")
        return None

    def injected_error(self, controls: Controls, request_id: str) -> web.Response:
        if controls.mode == "insufficient-quota":
            return error_response(
                400,
                request_id,
                "You have exceeded your service quota.",
                "ServiceQuotaExceededException",
            )
        return error_response(controls.error_status or 429, request_id)


def add_bedrock_routes(app: web.Application) -> None:
    dialect = BedrockDialect()
    app.router.add_post("/model/{model_id}/converse", endpoint(dialect, converse))
    app.router.add_post("/model/{model_id}/converse-stream", endpoint(dialect, converse_stream))


def _model(call: Call) -> str:
    raw = call.request.match_info.get("model_id", "")
    model = unquote(raw)
    if not model:
        raise InvalidRequest("modelId: must not be empty")
    return model


def _input_tokens(call: Call) -> int:
    messages = call.body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("A conversation must start with a user message.")
    contents = message_contents(messages)
    system = call.body.get("system")
    if isinstance(system, list) and system:
        contents.append(system)
    return conversation_tokens(contents)


def _answer(call: Call) -> tuple[dict[str, Any], tuple[str, ...], str]:
    """The usage object, the streamed words and the stop reason of this call."""
    model = _model(call)
    uncached = _input_tokens(call)
    config = call.body.get("inferenceConfig")
    max_tokens = config.get("maxTokens") if isinstance(config, dict) else None
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise InvalidRequest("inferenceConfig.maxTokens: must be a positive integer")
    plan = call.plan(model, max_tokens, reasons=False)
    read, write = call.controls.cached_tokens, call.controls.cache_write_tokens
    usage: dict[str, Any] = {
        "inputTokens": uncached,
        "outputTokens": plan.output_tokens,
        "totalTokens": uncached + read + write + plan.output_tokens,
    }
    if read or write:
        usage["cacheReadInputTokens"] = read
        usage["cacheWriteInputTokens"] = write
    if write:
        one_hour = min(write, _header_count(call, "x-mock-cache-write-1h-tokens"))
        details = [{"ttl": "1h", "inputTokens": one_hour}] if one_hour else []
        if write - one_hour:
            details.append({"ttl": "5m", "inputTokens": write - one_hour})
        usage["cacheDetails"] = details
    stop_reason = "max_tokens" if plan.hit_max_tokens else "end_turn"
    return usage, plan.words, stop_reason


def _header_count(call: Call, name: str) -> int:
    value = call.request.headers.get(name, "0").strip()
    if not value.isdigit():
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return int(value)


async def converse(call: Call) -> web.StreamResponse:
    usage, words, stop_reason = _answer(call)
    body: dict[str, Any] = {
        "output": {
            "message": {"role": "assistant", "content": [{"text": "".join(words)}] if words else []}
        },
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": 12},
    }
    if call.controls.no_usage:
        del body["usage"]
    return await send_json(call, body)


async def converse_stream(call: Call) -> web.StreamResponse:
    usage, words, stop_reason = _answer(call)
    events = [event_message("messageStart", orjson.dumps({"role": "assistant"}))]
    events.extend(
        event_message(
            "contentBlockDelta", orjson.dumps({"contentBlockIndex": 0, "delta": {"text": word}})
        )
        for word in words
    )
    terminal_at = len(events)
    events.append(event_message("contentBlockStop", orjson.dumps({"contentBlockIndex": 0})))
    events.append(event_message("messageStop", orjson.dumps({"stopReason": stop_reason})))
    metadata: dict[str, Any] = {"usage": usage, "metrics": {"latencyMs": 12}}
    if call.controls.no_usage:
        del metadata["usage"]
    events.append(event_message("metadata", orjson.dumps(metadata)))
    return await send_stream(call, EventStream(events, terminal_at, content_type=EVENT_STREAM_TYPE))
