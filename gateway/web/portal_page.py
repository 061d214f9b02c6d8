"""What every signed-in portal page shares: the viewer, the period, the layout's context.

`viewer_or_login` raises a 303 to /portal/login when no usable session is presented;
`view_period` raises `BadParameter` (shown as a 400 page naming the parameter).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.web import keys as web_keys
from gateway.web.periods import PERIOD_LABELS, ViewPeriod, parse_period
from gateway.web.portal_auth import Viewer, portal_viewer


class BadParameter(Exception):
    """A query parameter the page cannot use; the message names it."""


def view_period(request: web.Request) -> ViewPeriod:
    try:
        return parse_period(request.query, request.app[web_keys.clock]())
    except ValueError as exc:
        raise BadParameter(str(exc)) from None


async def viewer_or_login(request: web.Request) -> Viewer:
    viewer = await portal_viewer(request)
    if viewer is None:
        raise web.HTTPSeeOther("/portal/login")
    return viewer


def page_context(viewer: Viewer, period: ViewPeriod, active: str) -> dict[str, Any]:
    """What every portal page's layout needs: nav, the viewer, the period picker."""
    query = urlencode(period.query())
    nav = [
        {"href": f"{href}?{query}", "label": label, "active": name == active}
        for name, href, label in (
            ("overview", "/portal", "Overview"),
            ("events", "/portal/events", "Events"),
            ("invoices", "/portal/invoices", "Invoices"),
        )
        if name != "invoices" or viewer.project_id is None
    ]
    return {
        "nav": nav,
        "viewer": viewer,
        "customer": viewer.customer,
        "csrf": viewer.session.csrf,
        "period": period,
        "period_labels": PERIOD_LABELS,
        "tz_name": period.tz_name,
        "period_query": query,
        "active": active,
    }
