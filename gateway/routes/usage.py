"""Usage report routes: a customer's own usage with its key, anyone's with the admin token.

Customer routes need a customer key (`Authorization: Bearer` or `x-api-key`) and only ever
show that customer's usage: the customer id comes from the key, never from the query.

    GET /usage/daily?days=N                 usage per UTC day (storage.reports.usage_queries)
    GET /usage/projects?days=N              usage per project
    GET /usage/events?limit=N&cursor=C      the newest events, newest first (limit 1..1000,
                                            default 50; `next_cursor` continues), no metadata

Admin routes need the admin token (gateway.routes.admin) and read any customer, or all of
them without `customer`:

    GET /admin/usage/daily?customer=ID      GET /admin/usage/projects?customer=ID
    GET /admin/usage/events?customer=ID     (events with their metadata)

All take `days` (default 30, the window up to now), `project` and `model` to narrow; events
take `days` too. Bad parameters answer 400 naming the parameter; a missing or wrong key
401; the JSON shapes are the reports' `to_json()` (docs/usage-storage.md). GET
/usage/summary and /admin/usage/summary are served by operator_routes and admin_routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway import keys
from gateway.admin import Admin
from gateway.errors import InvalidRequestError
from gateway.routes.admin_access import admin_route
from gateway.routes.common import days_param, json_response
from storage.reports.event_queries import (
    DEFAULT_EVENTS_LIMIT,
    MAX_EVENTS_LIMIT,
    EventsPage,
    usage_events_page,
)
from storage.reports.usage_queries import Period, daily_of, projects_of, report_period


def _period(request: web.Request, customer_id: str | None) -> Period:
    return report_period(
        days_param(request),
        customer_id,
        request.query.get("project") or None,
        request.query.get("model") or None,
    )


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_EVENTS_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequestError("limit must be a whole number", param="limit") from None
    if not 1 <= limit <= MAX_EVENTS_LIMIT:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_EVENTS_LIMIT}", param="limit")
    return limit


async def _daily(request: web.Request, period: Period) -> dict[str, Any]:
    daily = await daily_of(request.app[keys.pool], period)
    return daily.to_json()


async def _projects(request: web.Request, period: Period) -> dict[str, Any]:
    report = await projects_of(request.app[keys.pool], period)
    return report.to_json()


async def _events(request: web.Request, period: Period) -> EventsPage:
    limit = _limit(request)
    try:
        return await usage_events_page(
            request.app[keys.pool], period, limit=limit, cursor=request.query.get("cursor")
        )
    except ValueError as exc:  # a cursor this gateway did not issue
        raise InvalidRequestError(str(exc), param="cursor") from None


async def _customer_events(request: web.Request, period: Period) -> dict[str, Any]:
    return (await _events(request, period)).to_json(with_metadata=False)


async def _admin_events(request: web.Request, period: Period) -> dict[str, Any]:
    return (await _events(request, period)).to_json()


Report = Callable[[web.Request, Period], Awaitable[dict[str, Any]]]


def _customer_route(report: Report) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        principal = await request.app[keys.authenticator].authenticate(request.headers)
        return json_response(await report(request, _period(request, principal.customer_id)))

    return route


def _admin_report(report: Report) -> Callable[[web.Request, Admin], Awaitable[Any]]:
    async def handler(request: web.Request, admin: Admin) -> Any:
        return await report(request, _period(request, request.query.get("customer") or None))

    return handler


def add_usage_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/usage/daily", _customer_route(_daily))
    r.add_get("/usage/projects", _customer_route(_projects))
    r.add_get("/usage/events", _customer_route(_customer_events))
    r.add_get("/admin/usage/daily", admin_route(_admin_report(_daily)))
    r.add_get("/admin/usage/projects", admin_route(_admin_report(_projects)))
    r.add_get("/admin/usage/events", admin_route(_admin_report(_admin_events)))
