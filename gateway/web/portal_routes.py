"""The customer usage portal's pages, for the signed-in customer (gateway.web.portal_auth).

    GET  /portal                 the period at a glance: figures, quotas, plan, charts, splits
    GET  /portal/events          the events table: filters, keyset paging
    GET  /portal/export          the same selection as CSV or JSON (`format=csv|json`), in
                                 the format of `tollbooth usage export`, streamed
    GET  /portal/invoices        the current month's invoice preview, past months (`month=`)
    POST /portal/billing         (CSRF) a Stripe billing portal session, then a 303 to it
    GET|POST /portal/login, POST /portal/logout, and link exchange: gateway.web.portal_auth

Every page takes the period parameters of gateway.web.periods (`period`, `since`, `until`,
`tz`). The customer always comes from the session, never from the URL; a project session sees
its project only, whatever `project=` says. Not signed in: 303 to /portal/login. A bad
parameter: a 400 page naming it.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any
from urllib.parse import urlencode

import asyncpg
from aiohttp import web

from gateway import keys
from gateway.cli.usage_render import write_export
from gateway.web.portal_auth import Viewer, exchange_link, login, login_form, logout, page, refusal
from gateway.web.portal_billing import invoices_page, manage_billing
from gateway.web.portal_page import BadParameter, page_context, view_period, viewer_or_login
from gateway.web.portal_views import events_view, overview
from storage.reports.breakdown import StatusFilter, export_rows
from storage.reports.rollups import UsageFilter
from storage.reports.usage_queries import Period

PAGE_SIZE = 50
_FLUSH_BYTES = 64 * 1024


async def home(request: web.Request) -> web.Response:
    token = request.query.get("token")
    if token:
        return await exchange_link(request, token)
    viewer = await viewer_or_login(request)
    period = view_period(request)
    context = await overview(request.app, viewer.customer.id, viewer.project_id, period)
    return page(
        request, "portal_overview.html", **{**context, **page_context(viewer, period, "overview")}
    )


def _status(request: web.Request) -> StatusFilter:
    raw = request.query.get("status") or None
    if raw not in (None, "ok", "error"):
        raise BadParameter("status: expected ok or error")
    return raw  # type: ignore[return-value]


def _selection(request: web.Request, viewer: Viewer) -> dict[str, Any]:
    project = viewer.project_id or request.query.get("project") or None
    model = request.query.get("model") or None
    return {
        "usage_filter": UsageFilter(viewer.customer.id, project, model),
        "status": _status(request),
    }


async def events(request: web.Request) -> web.Response:
    viewer = await viewer_or_login(request)
    period = view_period(request)
    selection = _selection(request, viewer)
    usage_filter: UsageFilter = selection["usage_filter"]
    try:
        view = await events_view(
            request.app,
            viewer.customer.id,
            usage_filter.project_id,
            period,
            model=usage_filter.model,
            status=selection["status"],
            cursor=request.query.get("cursor") or None,
            limit=PAGE_SIZE,
        )
    except ValueError as exc:
        raise BadParameter(f"cursor: {exc}") from None
    filters = {
        "project": "" if viewer.project_id else usage_filter.project_id or "",
        "model": usage_filter.model or "",
        "status": selection["status"] or "",
    }
    base = {**period.query(), **{k: v for k, v in filters.items() if v}}
    following = view["next_cursor"]
    return page(
        request,
        "portal_events.html",
        rows=view["rows"],
        filters=filters,
        key_names=view["key_names"],
        next_url=f"/portal/events?{urlencode({**base, 'cursor': following})}"
        if following
        else None,
        first_url=f"/portal/events?{urlencode(base)}",
        export_csv=f"/portal/export?{urlencode({**base, 'format': 'csv'})}",
        export_json=f"/portal/export?{urlencode({**base, 'format': 'json'})}",
        **page_context(viewer, period, "events"),
    )


async def export(request: web.Request) -> web.StreamResponse:
    viewer = await viewer_or_login(request)
    period = view_period(request)
    selection = _selection(request, viewer)
    fmt = request.query.get("format", "csv")
    if fmt not in ("csv", "json"):
        raise BadParameter("format: expected csv or json")
    usage_filter: UsageFilter = selection["usage_filter"]
    report = Period(
        viewer.customer.id, len(period.days()), period.since, period.until, usage_filter
    )
    name = f"usage-{period.first_day:%Y%m%d}-{period.last_day:%Y%m%d}.{fmt}"
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8"
            if fmt == "csv"
            else "application/json; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    await response.prepare(request)
    buffer = io.StringIO()

    async def flush() -> None:
        if buffer.tell():
            await response.write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()

    async def rows() -> AsyncIterator[asyncpg.Record]:
        async with aclosing(
            export_rows(request.app[keys.pool], since=period.since, until=period.until, **selection)
        ) as found:
            async for row in found:
                if buffer.tell() >= _FLUSH_BYTES:
                    await flush()
                yield row

    await write_export(buffer, report, rows(), fmt)
    await flush()
    await response.write_eof()
    return response


def _bad_parameters(handler: Any) -> Any:
    async def route(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except BadParameter as exc:
            return refusal(request, 400, str(exc))
        return response

    return route


def add_portal_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/portal", _bad_parameters(home))
    r.add_get("/portal/events", _bad_parameters(events))
    r.add_get("/portal/export", _bad_parameters(export))
    r.add_get("/portal/invoices", _bad_parameters(invoices_page))
    r.add_post("/portal/billing", manage_billing)
    r.add_get("/portal/login", login_form)
    r.add_post("/portal/login", login)
    r.add_post("/portal/logout", logout)
