"""The admin HTTP API, behind `Authorization: Bearer <admin token>`.

The token comes from the environment variable named by `admin.token_env` (default
`TOLLBOOTH_ADMIN_TOKEN`); with it unset, every admin route answers 403 (the API is off).
Comparison is constant-time. Routes (JSON in, JSON out; errors in OpenAI's shape):

    GET   /admin/customers                  list
    POST  /admin/customers                  {"id", "tier"?, "name"?, "email"?,
                                             "stripe_customer_id"?}
    GET   /admin/customers/{id}             one
    PATCH /admin/customers/{id}             {"tier"?, "name"?, "email"?,
                                             "stripe_customer_id"?, "suspended"?}
    GET   /admin/keys[?customer=ID]         list (never the key itself)
    POST  /admin/keys                       {"customer_id", "project_id"?, "user_id"?,
                                             "name"?}: the answer has "key", once
    POST  /admin/keys/{key_id}/revoke       revoke
    GET   /admin/usage/summary[?customer=ID&days=N&project=P&model=M]   any customer's
                                            (or all) usage; daily, projects and events
                                            are in gateway.usage_routes

The same `gateway.admin.Admin` serves `tollbooth customers|keys`, so both enforce one set of rules.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway import keys
from gateway.admin import Admin, AdminError, customer_json, key_json
from gateway.errors import AuthenticationError, GatewayError, InvalidRequestError
from gateway.operator_routes import days_param
from storage.usage_queries import usage_summary as summarize

AdminHandler = Callable[[web.Request, Admin], Awaitable[Any]]


class AdminForbiddenError(GatewayError):
    status = 403
    error_type = "permission_error"
    code = "admin_disabled"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _check_token(request: web.Request) -> None:
    env = request.app[keys.runtime].current.settings.admin.token_env
    expected = os.environ.get(env)
    if not expected:
        raise AdminForbiddenError(f"The admin API is disabled: set {env} to enable it.")
    auth = request.headers.get("Authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                            expected.encode()):
        raise AuthenticationError("A valid admin token is required for /admin routes.",
                                  code="invalid_admin_token")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise InvalidRequestError("The body must be valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object.")
    return body


def _text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a string", param=field)
    return value


def _admin_route(handler: AdminHandler, status: int = 200) -> Callable[[web.Request],
                                                                          Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        _check_token(request)
        settings = request.app[keys.runtime].current.settings
        admin = Admin(request.app[keys.accounts], settings)
        try:
            return _json(await handler(request, admin), status)
        except AdminError as exc:
            error = InvalidRequestError(str(exc))
            error.status = exc.status
            raise error from None

    return route


async def list_customers(request: web.Request, admin: Admin) -> Any:
    return {"data": [customer_json(c) for c in await admin.list_customers()]}


async def create_customer(request: web.Request, admin: Admin) -> Any:
    body = await _body(request)
    customer_id = _text(body, "id")
    if not customer_id:
        raise InvalidRequestError("id is required", param="id")
    customer = await admin.create_customer(
        customer_id, tier=_text(body, "tier"), name=_text(body, "name"),
        email=_text(body, "email"), stripe_customer_id=_text(body, "stripe_customer_id"))
    return customer_json(customer)


async def get_customer(request: web.Request, admin: Admin) -> Any:
    return customer_json(await admin.get_customer(request.match_info["customer_id"]))


async def update_customer(request: web.Request, admin: Admin) -> Any:
    body = await _body(request)
    if "suspended" in body and not isinstance(body["suspended"], bool):
        raise InvalidRequestError("suspended must be true or false", param="suspended")
    changes = {k: v for k, v in body.items() if v is not None}
    customer = await admin.update_customer(request.match_info["customer_id"], changes)
    return customer_json(customer)


async def list_keys(request: web.Request, admin: Admin) -> Any:
    return {"data": [key_json(k) for k in await admin.list_keys(request.query.get("customer"))]}


async def create_key(request: web.Request, admin: Admin) -> Any:
    body = await _body(request)
    customer_id = _text(body, "customer_id")
    if not customer_id:
        raise InvalidRequestError("customer_id is required", param="customer_id")
    record, plaintext = await admin.create_key(
        customer_id, project_id=_text(body, "project_id"), user_id=_text(body, "user_id"),
        name=_text(body, "name"))
    return {**key_json(record), "key": plaintext}


async def revoke_key(request: web.Request, admin: Admin) -> Any:
    revoked = await admin.revoke_key(request.match_info["key_id"])
    return {"id": request.match_info["key_id"], "revoked": True, "was_active": revoked}


async def usage_summary(request: web.Request, admin: Admin) -> Any:
    result = await summarize(request.app[keys.pool], days=days_param(request),
                             customer_id=request.query.get("customer") or None,
                             project_id=request.query.get("project") or None,
                             model=request.query.get("model") or None)
    return result.to_json()


def add_admin_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/customers", _admin_route(list_customers))
    r.add_post("/admin/customers", _admin_route(create_customer, 201))
    r.add_get("/admin/customers/{customer_id}", _admin_route(get_customer))
    r.add_patch("/admin/customers/{customer_id}", _admin_route(update_customer))
    r.add_get("/admin/keys", _admin_route(list_keys))
    r.add_post("/admin/keys", _admin_route(create_key, 201))
    r.add_post("/admin/keys/{key_id}/revoke", _admin_route(revoke_key))
    r.add_get("/admin/usage/summary", _admin_route(usage_summary))
