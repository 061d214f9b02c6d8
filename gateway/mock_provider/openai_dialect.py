"""How the mock speaks OpenAI: request ids, `x-ratelimit-*` headers and error bodies.

Errors are `{"error": {"message", "type", "param", "code"}}` with the types and codes the
real API uses (`invalid_api_key`, `rate_limit_exceeded`, `insufficient_quota`,
`server_error`). The key is read from `Authorization: Bearer KEY` and never echoed back.
"""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web

from gateway.mock_provider.controls import Controls
from gateway.mock_provider.ids import hex_id

RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999000",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "2ms",
}
BASE_HEADERS = {
    "openai-version": "2020-10-01",
    "openai-organization": "mock-org",
    "openai-processing-ms": "1",
    **RATE_LIMIT_HEADERS,
}

# status -> (type, code, stock message)
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", None, "You are not allowed to sample from this model."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM): Limit 10000, Used 10000, Requested 1.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}
_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


def error_body(status: int, message: str | None = None, param: str | None = None) -> bytes:
    """The error for `status`; its `code` comes only with the stock message it belongs to."""
    kind, code, stock = _ERRORS.get(
        status, ("server_error", None, _ERRORS[500][2]) if status >= 500 else _ERRORS[400]
    )
    if message is not None:
        code = None
    return orjson.dumps(
        {"error": {"message": message or stock, "type": kind, "param": param, "code": code}}
    )


class OpenAIDialect:
    broken_event = b'data: {"id": "chatcmpl-broken", "choices": [\n\n'
    stream_error_event = b"data: " + error_body(500) + b"\n\n"

    def new_request_id(self) -> str:
        return "req_" + hex_id(32)

    def response_headers(self, request_id: str) -> dict[str, str]:
        return {**BASE_HEADERS, "x-request-id": request_id}

    def error(
        self, status: int, request_id: str, message: str | None = None, param: str | None = None
    ) -> web.Response:
        return self._reply(status, error_body(status, message, param), request_id)

    def refuse(
        self, request: web.Request, api_key: str | None, request_id: str
    ) -> web.Response | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return self.error(401, request_id, _NO_KEY_MESSAGE)
        if api_key is not None and not hmac.compare_digest(key.encode(), api_key.encode()):
            return self.error(401, request_id)
        return None

    def injected_error(self, controls: Controls, request_id: str) -> web.Response:
        if controls.mode == "insufficient-quota":
            body = orjson.dumps(
                {
                    "error": {
                        "message": _QUOTA_MESSAGE,
                        "type": "insufficient_quota",
                        "param": None,
                        "code": "insufficient_quota",
                    }
                }
            )
            return self._reply(429, body, request_id)
        status = controls.error_status or 500
        response = self.error(status, request_id)
        if status == 429:
            response.headers.update(
                {
                    "retry-after": str(controls.retry_after_s),
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": f"{controls.retry_after_s}s",
                }
            )
        return response

    def _reply(self, status: int, body: bytes, request_id: str) -> web.Response:
        return web.Response(
            status=status,
            body=body,
            headers=self.response_headers(request_id),
            content_type="application/json",
        )
