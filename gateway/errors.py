"""Every error the gateway answers with, as one tree; the middleware shapes them per API.

    GatewayError (status, error_type, code)
    ├── AuthenticationError        401  missing, unknown or revoked key
    ├── PaymentRequiredError       402  customer suspended for an unpaid invoice
    ├── PermissionDeniedError      403  the customer's tier is not in the config
    ├── InvalidRequestError        400  malformed JSON, missing model, unknown model, a body
    │                                   labelled other than application/json
    ├── NotFoundError              404  unknown route
    ├── RequestTimeoutError        408  body not received within server.client_timeout_s
    ├── PayloadTooLargeError       413  body over server.max_body_mb
    ├── RateLimitError             429  a quota refused (retry_after_ms, should_retry)
    ├── ServiceUnavailableError    503  quota store down under on_redis_error: reject, draining
    ├── UpstreamUnreachableError   502  provider connection failed
    └── UpstreamTimeoutError       504  provider did not answer in time

Handlers raise these; `error_response.render_error` renders them, for aiohttp's middleware and
the fast front alike, in the shape of the API that was called (OpenAI `{"error": {...}}` or
Anthropic `{"type": "error", "error": {...}}`) with the status and headers each class carries.
Messages never contain a key or a provider secret.
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    # OpenAI-style error type and code; the Anthropic shape maps `status` to its own type.
    error_type: str = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}


class AuthenticationError(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PaymentRequiredError(GatewayError):
    status = 402
    error_type = "insufficient_quota"
    code = "billing_suspended"

    def headers(self) -> dict[str, str]:
        return {"x-should-retry": "false"}


class PermissionDeniedError(GatewayError):
    status = 403
    error_type = "permission_error"
    code = "tier_not_configured"


class InvalidRequestError(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class NotFoundError(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class RequestTimeoutError(GatewayError):
    """The client did not send its whole body in time; the connection is closed after this."""

    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"connection": "close"}


class PayloadTooLargeError(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(GatewayError):
    """A quota refused the request. `should_retry` is False for monthly limits and spend caps."""

    status = 429

    def __init__(
        self,
        message: str,
        *,
        retry_after_ms: int,
        should_retry: bool,
        limit: str,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            message, code="rate_limit_exceeded" if should_retry else "insufficient_quota"
        )
        self.error_type = "requests" if should_retry else "insufficient_quota"
        self.retry_after_ms = max(0, retry_after_ms)
        self.should_retry = should_retry
        self.limit = limit
        self.extra_headers = extra_headers or {}

    def headers(self) -> dict[str, str]:
        seconds = -(-self.retry_after_ms // 1000)  # whole seconds, rounded up
        headers = {
            "retry-after": str(max(1, seconds)),
            "retry-after-ms": str(self.retry_after_ms),
            **self.extra_headers,
        }
        if not self.should_retry:
            headers["x-should-retry"] = "false"
        return headers


class ServiceUnavailableError(GatewayError):
    status = 503
    error_type = "api_error"
    code = "service_unavailable"


class UpstreamUnreachableError(GatewayError):
    status = 502
    error_type = "api_error"
    code = "upstream_unreachable"


class UpstreamTimeoutError(GatewayError):
    status = 504
    error_type = "api_error"
    code = "upstream_timeout"
