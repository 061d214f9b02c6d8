"""The admin token gate: `Authorization: Bearer <admin token>` in front of every /admin route.

The token comes from the environment variable named by `admin.token_env`; with it unset every
admin route answers 403. Comparison is constant-time. `admin_route` wraps a handler that takes
the request and an `Admin`, and answers its result as JSON.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway import keys
from gateway.admin import Admin, AdminError
from gateway.errors import AuthenticationError, GatewayError, InvalidRequestError
from gateway.routes.common import json_response

AdminHandler = Callable[[web.Request, Admin], Awaitable[Any]]


class AdminForbiddenError(GatewayError):
    status = 403
    error_type = "permission_error"
    code = "admin_disabled"


def check_admin_token(request: web.Request) -> None:
    env = request.app[keys.runtime].current.settings.admin.token_env
    expected = os.environ.get(env)
    if not expected:
        raise AdminForbiddenError(f"The admin API is disabled: set {env} to enable it.")
    auth = request.headers.get("Authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise AuthenticationError(
            "A valid admin token is required for /admin routes.", code="invalid_admin_token"
        )


def admin_route(
    handler: AdminHandler, status: int = 200
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        check_admin_token(request)
        settings = request.app[keys.runtime].current.settings
        admin = Admin(request.app[keys.accounts], settings)
        try:
            return json_response(await handler(request, admin), status)
        except AdminError as exc:
            error = InvalidRequestError(str(exc))
            error.status = exc.status
            raise error from None

    return route
