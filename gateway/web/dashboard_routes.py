"""The operator dashboard's pages, for a signed-in operator (gateway.web.dashboard_auth).

    GET  /admin/dashboard                      every customer over the period: figures,
                                               a table searched, sorted and paged server
                                               side (`q`, `sort`, `order`, `page`)
    GET  /admin/dashboard/system               traffic, models, writer, dead letters,
                                               Stripe sync, config (gateway.web.dashboard_system)
    POST /admin/dashboard/system/reconcile     (CSRF) the month's reconciliation
                                               (gateway.web.dashboard_reconcile)
    GET  /admin/dashboard/customers/{id}       one customer as its portal shows it
                                               (gateway.web.portal_views.overview), `project=`
                                               narrows it, plus its newest events
    POST /admin/dashboard/customers/{id}/portal-link   (CSRF) a signed portal link, shown
                                               once on the answer page, never in a URL
    GET|POST /admin/dashboard/login, POST /admin/dashboard/logout

Every page takes the period parameters of gateway.web.periods (default: this calendar month,
UTC). A bad parameter answers a 400 page naming it; the dashboard off (no admin token), 403.
Each answer carries `Server-Timing: app;dur=MS` (gateway.web.server_timing, added here for
the portal's pages and these), which the portal benchmark reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from urllib.parse import urlencode

from aiohttp import web

from gateway import keys
from gateway.web import keys as web_keys
from gateway.web.dashboard_auth import (
    BASE,
    DashboardOff,
    admin_session,
    disabled,
    login,
    login_form,
    logout,
    message,
)
from gateway.web.dashboard_customers import SORT_KEYS, customers_view
from gateway.web.dashboard_page import layout
from gateway.web.dashboard_reconcile import reconcile_page
from gateway.web.dashboard_system import system_view
from gateway.web.portal_links import issue_link, link_url
from gateway.web.portal_page import BadParameter, view_period
from gateway.web.portal_views import HEADLINE, key_names, overview
from gateway.web.render import render
from gateway.web.server_timing import server_timing
from gateway.web.sessions import csrf_ok
from storage.reports.breakdown import events_page
from storage.reports.rollups import UsageFilter

RECENT_EVENTS = 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if not raw:
        return default
    if not raw.isdigit():
        raise BadParameter(f"{name}: expected a whole number")
    return int(raw)


async def customers_page(request: web.Request) -> web.Response:
    session = admin_session(request)
    period = view_period(request)
    sort = request.query.get("sort") or "spend"
    order = request.query.get("order") or ("asc" if sort in ("customer", "name") else "desc")
    try:
        view = await customers_view(
            request.app[keys.pool],
            request.app[keys.runtime].current.settings.tiers,
            period,
            q=request.query.get("q", ""),
            sort=sort,
            order=order,
            page=_int(request, "page", 1),
        )
    except ValueError as exc:
        raise BadParameter(str(exc)) from None
    base = {**period.query(), **({"q": view.q} if view.q else {})}

    def sort_url(key: str) -> str:
        flip = "asc" if view.sort == key and view.order == "desc" else "desc"
        return f"{BASE}?{urlencode({**base, 'sort': key, 'order': flip})}"

    def page_url(number: int) -> str:
        query = {**base, "sort": view.sort, "order": view.order, "page": number}
        return f"{BASE}?{urlencode(query)}"

    return render(
        request,
        "dashboard_customers.html",
        view=view,
        headline=HEADLINE,
        sort_urls={key: sort_url(key) for key in SORT_KEYS},
        page_url=page_url,
        customer_url=lambda cid: f"{BASE}/customers/{cid}?{urlencode(period.query())}",
        **layout(session, period, "customers"),
    )


async def system_page(request: web.Request) -> web.Response:
    session = admin_session(request)
    period = view_period(request)
    context = await system_view(request.app, period)
    return render(
        request, "dashboard_system.html", **{**context, **layout(session, period, "system")}
    )


async def customer_page(request: web.Request) -> web.Response:
    session = admin_session(request)
    period = view_period(request)
    customer_id = request.match_info["customer_id"]
    if await request.app[keys.accounts].get_customer(customer_id) is None:
        return message(request, 404, "No such customer.")
    project_id = request.query.get("project") or None
    context = await overview(request.app, customer_id, project_id, period)
    rows, _ = await events_page(
        request.app[keys.pool],
        since=period.since,
        until=period.until,
        limit=RECENT_EVENTS,
        cursor=None,
        usage_filter=UsageFilter(customer_id, project_id),
        status=None,
    )
    events = [
        {
            **dict(row),
            "time_text": row["created_at"].astimezone(period.tz).strftime("%Y-%m-%d %H:%M:%S"),
        }
        for row in rows
    ]
    return render(
        request,
        "dashboard_customer.html",
        events=events,
        key_names=await key_names(request.app, customer_id),
        **{**context, **layout(session, period, "customers")},
    )


async def portal_link(request: web.Request) -> web.Response:
    session = admin_session(request)
    form = await request.post()
    if not csrf_ok(session.csrf, form.get("csrf")):
        return message(request, 403, "The form expired. Reload the page and retry.")
    customer = await request.app[keys.accounts].get_customer(request.match_info["customer_id"])
    if customer is None:
        return message(request, 404, "No such customer.")
    if customer.suspended:
        return message(request, 409, "This customer is suspended: a portal link would not open.")
    project = form.get("project")
    project_id = (project.strip() or None) if isinstance(project, str) else None
    # As POST /admin/portal-links issues it (gateway.web.portal_link_route).
    portal = request.app[keys.runtime].current.settings.portal
    token, expires = issue_link(
        request.app[web_keys.link_signer],
        customer.id,
        project_id,
        ttl=timedelta(seconds=portal.link_ttl_s),
        now=request.app[web_keys.clock](),
    )
    url = link_url(portal.base_url or str(request.url.origin()), token)
    period = view_period(request)
    return render(
        request,
        "dashboard_link.html",
        customer=customer,
        project_id=project_id,
        url=url,
        expires_at=expires,
        **layout(session, period, "customers"),
    )


def _page(handler: Handler) -> Handler:
    """The dashboard off and bad parameters as pages."""

    async def route(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except DashboardOff:
            return disabled(request)
        except BadParameter as exc:
            return message(request, 400, str(exc))

    return route


def add_dashboard_routes(app: web.Application) -> None:
    app.middlewares.append(server_timing)  # innermost: the handler's own time
    r = app.router
    r.add_get(BASE, _page(customers_page))
    r.add_get(f"{BASE}/system", _page(system_page))
    r.add_post(f"{BASE}/system/reconcile", _page(reconcile_page))
    r.add_get(BASE + "/customers/{customer_id}", _page(customer_page))
    r.add_post(BASE + "/customers/{customer_id}/portal-link", _page(portal_link))
    r.add_get(f"{BASE}/login", _page(login_form))
    r.add_post(f"{BASE}/login", _page(login))
    r.add_post(f"{BASE}/logout", _page(logout))
