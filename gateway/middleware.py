"""aiohttp's error boundary: every error a handler raises becomes a response here.

`GatewayError`s are answered as `gateway.error_response.render_error` renders them (the shape
of the API that was called, with the status and headers each class carries; the fast front
answers with the same renderer); aiohttp's own HTTP errors (404 for an unknown path, 405, 413
for a body over the limit) are translated into `GatewayError`s first; anything else is a bug:
logged with its traceback and answered as a 500 with no detail in the body. Every error
response carries `x-request-id`. Refusals are counted by `error_response.count_refusal`, on
the forwarded route the path belongs to (an alias as the route it serves), else on the
resource the request matched, else as `unmatched`.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway import keys
from gateway.error_response import count_refusal, internal_error, render_error
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
)
from gateway.providers.registry import match_path
from gateway.proxy import Handler


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


def _route(request: web.Request) -> str:
    """The route a refusal is counted on: a forwarded route's path for any request to it (an
    alias, or a method it does not serve: the fast front counts its own refusals so too),
    else the matched resource, else `unmatched`."""
    forwarded = match_path(request.path)
    if forwarded is not None:
        return forwarded[0][1].path
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = uuid.uuid4()
    request[keys.request_id] = request_id
    try:
        return await handler(request)
    except GatewayError as exc:
        error: GatewayError = exc
        count_refusal(request.app[keys.metrics], _route(request), error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _translate_http(exc)
        count_refusal(request.app[keys.metrics], _route(request), error)
    except Exception:
        error = internal_error(request_id)  # a bug: logged there, not a refusal
    answer = render_error(request.path, error, request_id)
    return web.Response(status=answer.status, headers=answer.headers, body=answer.body)
