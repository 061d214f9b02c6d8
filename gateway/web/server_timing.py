"""`Server-Timing: app;dur=MS` on every web page's answer (the portal and the dashboard).

The duration is the handler's, rendering included, measured with a monotonic clock around
it; browsers show it in their network panel and the portal benchmark reads it. Only paths
under `/portal` and `/admin/dashboard` get it (the API's answers stay as they are). It never
changes a response otherwise and cannot fail: an exception passes through untouched.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler

PREFIXES = ("/portal", "/admin/dashboard")


@web.middleware
async def server_timing(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(PREFIXES):
        return await handler(request)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects: timed too
        exc.headers["Server-Timing"] = _value(started)
        raise
    if not response.prepared:
        response.headers["Server-Timing"] = _value(started)
    return response


def _value(started: float) -> str:
    return f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
