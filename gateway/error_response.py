"""The one renderer of gateway errors, and the one refusal counter, for both servers.

`render_error(path, error, request_id)` gives what a `GatewayError` is answered with: the status,
the headers and the JSON body in the shape of the API `path` belongs to. A forwarded route
(aliases and templated routes included) speaks its API's shape; any other path under
/v1/messages speaks Anthropic's, every other path OpenAI's. The headers are, in this order,
`Content-Type: application/json`, those the error carries (`Retry-After`, `x-ratelimit-*`...),
those its API's errors carry, and `x-request-id`. The fast front (`gateway.front.connection`)
writes them to the socket as they are; aiohttp (`gateway.middleware`) makes a `web.Response` of
them; each server then adds its own `Date`, framing and CORS headers (`gateway.cors`).

`count_refusal(metrics, route, error)` counts an error the gateway answered itself in
`tollbooth_refused_requests_total{route, status}`; an upstream failure (502, 504) is not a
refusal, it is recorded as a usage event. A bug is neither: `internal_error` logs it with its
traceback and gives the 500 to answer, which says nothing of the bug.

Pure functions of their arguments: nothing here fails but a provider adapter's own bug.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from gateway.errors import GatewayError, UpstreamTimeoutError, UpstreamUnreachableError
from gateway.metrics import Metrics
from gateway.providers.base import ProviderApi
from gateway.providers.registry import api_for_kind, match_path

log = logging.getLogger("tollbooth.errors")

_UPSTREAM_ERRORS = (UpstreamTimeoutError, UpstreamUnreachableError)


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def api_for_path(path: str) -> ProviderApi:
    # An alias such as /v1/v1/messages, or a templated route, speaks its API's shape.
    forwarded = match_path(path)
    if forwarded is not None:
        return forwarded[0][0]
    anthropic = path.startswith(("/v1/messages", "/v1/v1/messages"))
    return api_for_kind("anthropic" if anthropic else "openai")


def render_error(path: str, error: GatewayError, request_id: uuid.UUID) -> ErrorResponse:
    """What `error` is answered with on `path` (its API may say the status another way)."""
    api = api_for_path(path)
    status = api.error_status(error.status, error.error_type, error.code)
    body = api.error_body(error.status, error.error_type, error.message, error.code, error.param)
    extra = api.error_headers(error.status, error.error_type, error.code)
    headers = {
        "Content-Type": "application/json",
        **error.headers(),
        **extra,
        "x-request-id": str(request_id),
    }
    return ErrorResponse(status, headers, body)


def is_refusal(error: GatewayError) -> bool:
    """A refusal is counted in metrics; an upstream failure is recorded as a usage event."""
    return not isinstance(error, _UPSTREAM_ERRORS)


def count_refusal(metrics: Metrics, route: str, error: GatewayError) -> None:
    """Count `error` on `route` (the path a forwarded route is served as, an alias counted as
    the route it serves) if it is a refusal."""
    if is_refusal(error):
        metrics.refused.labels(route, str(error.status)).inc()


def internal_error(request_id: uuid.UUID) -> GatewayError:
    """Call in an `except` block: log the bug being handled and give the 500 to answer."""
    log.exception("unhandled error", extra={"request_id": str(request_id)})
    return GatewayError("The gateway had an internal error.")
