"""`add_web_routes(app)`: the web pages' wiring, called once by `gateway.app.create_app`.

It loads the static files and the templates at once, and adds a cleanup_ctx entry that loads
the signing secret after the Postgres pool exists (`sessions.load_web_secret`; a failure
stops the app from starting: pages must not sign with a secret other instances do not share).
Routes: `/static/{name}`, the customer portal (`gateway.web.portal_routes`) and the operator
dashboard (`gateway.web.dashboard_routes`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway import keys
from gateway.web import keys as web_keys
from gateway.web.dashboard_routes import add_dashboard_routes
from gateway.web.portal_link_route import add_portal_link_route
from gateway.web.portal_routes import add_portal_routes
from gateway.web.render import create_environment
from gateway.web.sessions import SessionCodec, Signer, load_web_secret, utc_now
from gateway.web.static import StaticFiles


async def _static(request: web.Request) -> web.Response:
    return request.app[web_keys.static_files].response(request.match_info["name"])


async def _signing(app: web.Application) -> AsyncIterator[None]:
    secret = await load_web_secret(app[keys.pool])
    clock = app[web_keys.clock]
    app[web_keys.sessions] = SessionCodec(secret, clock=clock)
    app[web_keys.link_signer] = Signer(secret, "portal-link")
    yield


def add_web_routes(app: web.Application) -> None:
    static = StaticFiles.load()
    app[web_keys.static_files] = static
    app[web_keys.templates] = create_environment(static)
    app[web_keys.clock] = utc_now  # tests replace it before the app starts
    app.cleanup_ctx.append(_signing)
    app.router.add_get("/static/{name}", _static)
    add_portal_routes(app)
    add_portal_link_route(app)
    add_dashboard_routes(app)
