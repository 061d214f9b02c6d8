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
                                            are in gateway.routes.usage

The same `gateway.admin.Admin` serves `tollbooth customers|keys`, so both enforce one set of rules.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import keys
from gateway.admin import Admin, customer_json, key_json
from gateway.errors import InvalidRequestError
from gateway.routes.admin_access import admin_route
from gateway.routes.common import days_param, json_object, text_field
from storage.reports.usage_queries import usage_summary as summarize


async def list_customers(request: web.Request, admin: Admin) -> Any:
    return {"data": [customer_json(c) for c in await admin.list_customers()]}


async def create_customer(request: web.Request, admin: Admin) -> Any:
    body = await json_object(request)
    customer_id = text_field(body, "id")
    if not customer_id:
        raise InvalidRequestError("id is required", param="id")
    customer = await admin.create_customer(
        customer_id,
        tier=text_field(body, "tier"),
        name=text_field(body, "name"),
        email=text_field(body, "email"),
        stripe_customer_id=text_field(body, "stripe_customer_id"),
    )
    return customer_json(customer)


async def get_customer(request: web.Request, admin: Admin) -> Any:
    return customer_json(await admin.get_customer(request.match_info["customer_id"]))


async def update_customer(request: web.Request, admin: Admin) -> Any:
    body = await json_object(request)
    if "suspended" in body and not isinstance(body["suspended"], bool):
        raise InvalidRequestError("suspended must be true or false", param="suspended")
    changes = {k: v for k, v in body.items() if v is not None}
    customer = await admin.update_customer(request.match_info["customer_id"], changes)
    return customer_json(customer)


async def list_keys(request: web.Request, admin: Admin) -> Any:
    return {"data": [key_json(k) for k in await admin.list_keys(request.query.get("customer"))]}


async def create_key(request: web.Request, admin: Admin) -> Any:
    body = await json_object(request)
    customer_id = text_field(body, "customer_id")
    if not customer_id:
        raise InvalidRequestError("customer_id is required", param="customer_id")
    record, plaintext = await admin.create_key(
        customer_id,
        project_id=text_field(body, "project_id"),
        user_id=text_field(body, "user_id"),
        name=text_field(body, "name"),
    )
    return {**key_json(record), "key": plaintext}


async def revoke_key(request: web.Request, admin: Admin) -> Any:
    revoked = await admin.revoke_key(request.match_info["key_id"])
    return {"id": request.match_info["key_id"], "revoked": True, "was_active": revoked}


async def usage_summary(request: web.Request, admin: Admin) -> Any:
    result = await summarize(
        request.app[keys.pool],
        days=days_param(request),
        customer_id=request.query.get("customer") or None,
        project_id=request.query.get("project") or None,
        model=request.query.get("model") or None,
    )
    return result.to_json()


def add_admin_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/customers", admin_route(list_customers))
    r.add_post("/admin/customers", admin_route(create_customer, 201))
    r.add_get("/admin/customers/{customer_id}", admin_route(get_customer))
    r.add_patch("/admin/customers/{customer_id}", admin_route(update_customer))
    r.add_get("/admin/keys", admin_route(list_keys))
    r.add_post("/admin/keys", admin_route(create_key, 201))
    r.add_post("/admin/keys/{key_id}/revoke", admin_route(revoke_key))
    r.add_get("/admin/usage/summary", admin_route(usage_summary))
