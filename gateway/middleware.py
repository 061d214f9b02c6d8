"""The one translator from errors to responses, in the shape of the API that was called.

A forwarded route (aliases included) speaks its API's error shape; any other path under
/v1/messages speaks Anthropic's, every other route OpenAI's.
`GatewayError`s carry their status, type, code and headers; aiohttp's own HTTP errors (404 for
an unknown path, 405, 413 for a body over the limit) are reshaped the same way; anything else
is a bug: it is logged with its traceback and answered as a 500 with no detail in the body.
Every error response carries `x-request-id` when one was assigned.
"""

from __future__ import annotations

import logging
import uuid

from aiohttp import web

from gateway import keys
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from gateway.providers.base import ProviderApi
from gateway.providers.registry import FORWARDED, api_for_kind, match_path
from gateway.proxy import Handler

log = logging.getLogger("tollbooth.errors")


def api_for_path(path: str) -> ProviderApi:
    # An alias such as /v1/v1/messages, or a templated route, speaks its API's shape.
    forwarded = match_path(path)
    if forwarded is not None:
        return forwarded[0][0]
    anthropic = path.startswith(("/v1/messages", "/v1/v1/messages"))
    return api_for_kind("anthropic" if anthropic else "openai")


def error_body(path: str, error: GatewayError) -> bytes:
    """The JSON body of `error` in the shape of the API `path` belongs to."""
    api = api_for_path(path)
    return api.error_body(error.status, error.error_type, error.message, error.code, error.param)


def error_headers(path: str, error: GatewayError) -> dict[str, str]:
    """The headers of `error` (Retry-After...) and those its API's errors carry."""
    extra = api_for_path(path).error_headers(error.status, error.error_type, error.code)
    return {**error.headers(), **extra} if extra else error.headers()


def error_status(path: str, error: GatewayError) -> int:
    """The status `error` is answered with on `path` (its API may say it another way)."""
    return api_for_path(path).error_status(error.status, error.error_type, error.code)


def render_error(request: web.Request, error: GatewayError) -> web.Response:
    return web.Response(
        status=error_status(request.path, error),
        body=error_body(request.path, error),
        content_type="application/json",
        headers=error_headers(request.path, error),
    )


def _translate_http(exc: web.HTTPException) -> GatewayError:
    if exc.status == 404:
        return NotFoundError("Unknown request URL. Tollbooth serves the routes in its README.")
    if exc.status == 405:
        err = InvalidRequestError(f"Method not allowed for this URL ({exc.reason}).")
        err.status = 405
        return err
    if exc.status == 413:
        return PayloadTooLargeError("The request body is larger than this gateway accepts.")
    err = InvalidRequestError(exc.reason or "Bad request.")
    err.status = exc.status
    return err


_UPSTREAM_ERRORS = (UpstreamTimeoutError, UpstreamUnreachableError)


def is_refusal(error: GatewayError) -> bool:
    """A refusal is counted in metrics; an upstream failure is recorded as a usage event."""
    return not isinstance(error, _UPSTREAM_ERRORS)


def _count_refusal(request: web.Request, status: int) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    forwarded = FORWARDED.get(route)
    if forwarded is not None:
        route = forwarded[1].path  # an alias is counted as the route it serves
    request.app[keys.metrics].refused.labels(route, str(status)).inc()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = uuid.uuid4()
    request[keys.request_id] = request_id
    try:
        return await handler(request)
    except GatewayError as exc:
        response = render_error(request, exc)
        if is_refusal(exc):
            _count_refusal(request, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = render_error(request, _translate_http(exc))
        _count_refusal(request, exc.status)
    except Exception:
        log.exception("unhandled error", extra={"request_id": str(request_id)})
        response = render_error(request, GatewayError("The gateway had an internal error."))
    response.headers["x-request-id"] = str(request_id)
    return response
