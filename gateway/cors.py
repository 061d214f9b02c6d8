"""CORS for browser clients (`server.cors_origins`): preflights, and the headers responses carry.

Off by default: while `server.cors_origins` is empty no response carries a CORS header and an
`OPTIONS` request is answered as any other unserved method (405). With origins listed (`"*"`:
any origin), on the routes a browser SDK calls — the forwarded routes (aliases included),
`/v1/models` and `/usage/*` — and nowhere else (not /admin, /health, /metrics, the portal):

- A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
  origin is answered 204 with `Access-Control-Allow-Origin: <that origin>`,
  `Access-Control-Allow-Methods`, `Access-Control-Allow-Headers` (the requested headers this
  gateway accepts, echoed), `Access-Control-Max-Age` and `Vary`. It needs no key, reaches no
  provider, reserves no quota and records no usage event. From an origin not allowed it gets
  403 in the API's error shape with no CORS header (aiohttp-cors's convention), so the
  browser's console names the refused origin.
- An actual response (JSON, an SSE stream, the gateway's own errors: 401, 429...) to a request
  from an allowed origin carries `Access-Control-Allow-Origin: <origin>`,
  `Access-Control-Expose-Headers` (what SDKs read: `x-request-id`, `retry-after`,
  `retry-after-ms`, `x-should-retry`, `x-ratelimit-*`) and `Vary: Origin`. A request from
  another origin is served as before, without them: the browser keeps the answer from the
  page, and non-browser clients, which send no `Origin`, are unaffected.

The origin is echoed, never `*`, and `Access-Control-Allow-Credentials` is never sent: keys
travel in headers, not cookies, so browser SDKs need no credentials mode and no page can ride
on a cookie. Opaque origins (`null`: sandboxed frames, `file://` pages) are never allowed, not
even by `"*"`. Allowed request headers are a list (the keys' two headers, `content-type`,
`accept`, Anthropic's three) plus the `openai-` and `x-stainless-` prefixes the SDKs send,
matched against `Access-Control-Request-Headers`; a wildcard `*` would not do, as it never
covers `Authorization` and would let pages send headers the gateway forwards unexamined.
A header not allowed is left out of the answer, and the browser then refuses the request.

Both servers apply this, reading `server.cors_origins` from the live settings snapshot (a
reload changes it for the next request): aiohttp through `install(app)` (a middleware that
answers preflights, a response-prepare hook that adds the headers), the fast front by calling
`preflight_headers` and `response_headers` itself (`gateway.front.connection`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys
from gateway.config import ORIGIN_PATTERN
from gateway.errors import PermissionDeniedError
from gateway.providers.registry import FORWARDED, match_path

ALLOW_METHODS = "GET, POST, OPTIONS"
MAX_AGE_S = 7200  # two hours: Chromium's ceiling (Firefox allows a day)
ALLOWED_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "content-type",
        "accept",
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
    }
)
ALLOWED_HEADER_PREFIXES = ("openai-", "x-stainless-")
EXPOSE_HEADERS = ", ".join(
    (
        "x-request-id",
        "x-upstream-request-id",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        *(
            f"x-ratelimit-{what}-{unit}"
            for unit in ("requests", "tokens")
            for what in ("limit", "remaining", "reset")
        ),
    )
)
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+", re.ASCII)  # an HTTP header name
_MAX_ORIGIN = 512


def applies(path: str) -> bool:
    """True for the paths CORS covers (when it is on)."""
    return (
        path in FORWARDED
        or path == "/v1/models"
        or path.startswith("/usage/")
        or match_path(path) is not None
    )


def allowed(origins: tuple[str, ...], origin: str | None) -> bool:
    """True if a page of `origin` may call the gateway under `server.cors_origins`."""
    if origin is None or len(origin) > _MAX_ORIGIN:
        return False
    lowered = origin.lower()
    if not ORIGIN_PATTERN.fullmatch(lowered):
        return False  # "null", or what no browser sends
    return "*" in origins or lowered in origins


def response_headers(
    origins: tuple[str, ...], request_headers: Mapping[str, str]
) -> dict[str, str] | None:
    """The headers an actual response carries, or None (no Origin, or one not allowed)."""
    origin = request_headers.get("origin")
    if origin is None or not allowed(origins, origin):
        return None
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": EXPOSE_HEADERS,
        "Vary": "Origin",
    }


def is_preflight(request_headers: Mapping[str, str]) -> bool:
    """An OPTIONS request is a preflight when it names an origin and the method to come."""
    return "origin" in request_headers and "access-control-request-method" in request_headers


def preflight_headers(
    origins: tuple[str, ...], request_headers: Mapping[str, str]
) -> dict[str, str] | None:
    """The 204's headers for a preflight, or None when its origin is not allowed (403)."""
    origin = request_headers.get("origin")
    if origin is None or not allowed(origins, origin):
        return None
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Max-Age": str(MAX_AGE_S),
        "Vary": _PREFLIGHT_VARY,
    }
    requested = request_headers.get("access-control-request-headers", "")
    names = [
        name
        for name in (part.strip().lower() for part in requested.split(","))
        if _header_allowed(name)
    ]
    if names:
        headers["Access-Control-Allow-Headers"] = ", ".join(dict.fromkeys(names))
    return headers


def _header_allowed(name: str) -> bool:
    if name in ALLOWED_HEADERS:
        return True
    return name.startswith(ALLOWED_HEADER_PREFIXES) and _TOKEN.fullmatch(name) is not None


def origin_refused() -> PermissionDeniedError:
    return PermissionDeniedError(
        "This origin may not call the gateway from a browser (it is not in the gateway's "
        "CORS origins).",
        code="cors_origin_not_allowed",
    )


# aiohttp's half


def install(app: web.Application) -> None:
    """Answer preflights and add the headers to aiohttp's responses. Call after the app's
    other middlewares are in place: the preflight middleware must run inside
    `error_middleware`, which renders its 403."""
    app.middlewares.append(_preflight_middleware)
    app.on_response_prepare.append(_add_headers)


@web.middleware
async def _preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        origins = request.app[keys.runtime].current.settings.server.cors_origins
        if origins and applies(request.path) and is_preflight(request.headers):
            headers = preflight_headers(origins, request.headers)
            if headers is None:
                raise origin_refused()
            return web.Response(status=204, headers=headers)
    return await handler(request)


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    origins = request.app[keys.runtime].current.settings.server.cors_origins
    if not origins or "Access-Control-Allow-Origin" in response.headers:
        return  # off, or a preflight's own answer
    if not applies(request.path):
        return
    headers = response_headers(origins, request.headers)
    if headers is None:
        return
    for name, value in headers.items():
        if name == "Vary":
            response.headers.add(name, value)  # beside a Vary the provider sent
        else:
            response.headers[name] = value
