"""`POST /admin/portal-links` (admin token): a signed portal link for a SaaS to hand out.

Body `{"customer": ID, "project": P | null, "ttl_s": N}` (ttl_s default `portal.link_ttl_s`,
60 s to 90 days) → `{"url", "expires_at"}`. The URL's origin is `portal.base_url` when set,
else the origin this request came to. 404 for an unknown customer, 409 for a suspended one
(its link would not open), 400 for a bad field. Errors in the admin API's shape.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway import keys
from gateway.admin import Admin, ConflictError
from gateway.errors import InvalidRequestError
from gateway.routes.admin_access import admin_route
from gateway.routes.common import json_object, text_field
from gateway.web import keys as web_keys
from gateway.web.portal_links import issue_link, link_url

MAX_TTL_S = 90 * 86_400


async def create_portal_link(request: web.Request, admin: Admin) -> Any:
    body = await json_object(request)
    customer_id = text_field(body, "customer")
    if not customer_id:
        raise InvalidRequestError("customer is required", param="customer")
    project_id = text_field(body, "project")
    portal = request.app[keys.runtime].current.settings.portal
    ttl_s = body.get("ttl_s", portal.link_ttl_s)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 60 <= ttl_s <= MAX_TTL_S:
        raise InvalidRequestError(
            f"ttl_s must be a whole number of seconds, 60 to {MAX_TTL_S}", param="ttl_s"
        )
    customer = await admin.get_customer(customer_id)
    if customer.suspended:
        raise ConflictError(f"customer {customer_id!r} is suspended; its link would not open")
    token, expires = issue_link(
        request.app[web_keys.link_signer],
        customer.id,
        project_id,
        ttl=timedelta(seconds=ttl_s),
        now=request.app[web_keys.clock](),
    )
    base = portal.base_url or str(request.url.origin())
    return {"url": link_url(base, token), "expires_at": expires.isoformat()}


def add_portal_link_route(app: web.Application) -> None:
    app.router.add_post("/admin/portal-links", admin_route(create_portal_link))
