"""Rendering pages: the Jinja2 environment and `render`, which adds the security headers.

Templates live in gateway/web/templates/ and are autoescaped (every `{{ value }}` is HTML
escaped, so a customer-controlled string is shown as text); undefined variables raise
(`StrictUndefined`), so a template bug is a 500 in tests, not a blank figure in production.

Every page carries a Content-Security-Policy with no 'unsafe-inline' (scripts and styles only
from /static/; data for charts rides in `<script type="application/json">` blocks, which are
not executed), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` (a URL never
leaks to another site) and `Cache-Control: no-store` (usage and invoices are not cached by
browsers or proxies). `frame_ancestors` says who may frame the page ('self' by default; the
portal's comes from `portal.frame_ancestors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2
from aiohttp import web

from gateway.web import figures
from gateway.web import keys as web_keys
from gateway.web.static import StaticFiles

DEFAULT_FRAME_ANCESTORS = ("'self'",)


def create_environment(static: StaticFiles) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = static.url
    env.filters.update(figures.FILTERS)
    return env


def content_security_policy(frame_ancestors: Sequence[str] = DEFAULT_FRAME_ANCESTORS) -> str:
    ancestors = " ".join(frame_ancestors) or "'none'"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; "
        f"frame-ancestors {ancestors}"
    )


def security_headers(frame_ancestors: Sequence[str] = DEFAULT_FRAME_ANCESTORS) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(frame_ancestors),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def render(
    request: web.Request,
    template: str,
    *,
    status: int = 200,
    frame_ancestors: Sequence[str] = DEFAULT_FRAME_ANCESTORS,
    **context: Any,
) -> web.Response:
    """`template` rendered with `context` (plus `request_path`), as an HTML response."""
    env = request.app[web_keys.templates]
    html = env.get_template(template).render(request_path=request.path, **context)
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers=security_headers(frame_ancestors),
    )
