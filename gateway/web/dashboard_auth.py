"""Who may see the operator dashboard: sign-in with the admin token, the session, sign-out.

The dashboard is on only while the variable named by `admin.token_env` (default
`TOLLBOOTH_ADMIN_TOKEN`) holds a token, like the admin API: unset, every dashboard URL
answers a 403 page. Never a token in a URL:

- `GET /admin/dashboard/login`: the form; its CSRF value is both in the `tb_login_csrf`
  cookie (path /admin/dashboard/login) and in the form (double submit).
- `POST /admin/dashboard/login`: the token compared in constant time. Failed attempts are
  counted per client IP in Redis (`tb:web1:admin-login:{IP}`, one minute); from
  `portal.login_attempts_per_minute` failures on, the form answers 429 without looking at
  the token. If Redis is unreachable the attempt is checked anyway and a warning logged: the
  token is the secret; the limit only slows guessing. Success: a session cookie `tb_admin`
  (kind "admin", HttpOnly, SameSite=Strict, Secure when the request came over TLS, path
  /admin/dashboard, `ADMIN_SESSION_TTL`) and a 303 to the dashboard.
- `POST /admin/dashboard/logout` (CSRF) drops the cookie.

`admin_session(request)` is the signed-in operator's session, else a 303 to the login form
(403 page when the dashboard is off). A session does not carry the token: rotating the token
ends no session before its expiry; rotating `TOLLBOOTH_PORTAL_SECRET` (the signing secret)
ends them all. Nothing here logs the token or the cookie.
"""

from __future__ import annotations

import hmac
import logging
import os
from datetime import timedelta

from aiohttp import web
from redis.exceptions import RedisError

from gateway import keys
from gateway.web import keys as web_keys
from gateway.web.render import render
from gateway.web.sessions import (
    COOKIE_NAMES,
    LOGIN_CSRF_COOKIE,
    Session,
    csrf_ok,
    new_login_csrf,
)

log = logging.getLogger("tollbooth.dashboard")

ADMIN_SESSION_TTL = timedelta(hours=8)
BASE = "/admin/dashboard"
LOGIN_PATH = f"{BASE}/login"
FAILURE_WINDOW_S = 60


def _expected_token(request: web.Request) -> str | None:
    env = request.app[keys.runtime].current.settings.admin.token_env
    return os.environ.get(env) or None


def message(request: web.Request, status: int, text: str) -> web.Response:
    return render(request, "dashboard_message.html", status=status, message=text)


def disabled(request: web.Request) -> web.Response:
    env = request.app[keys.runtime].current.settings.admin.token_env
    return message(request, 403, f"The operator dashboard is off: set {env} to turn it on.")


class DashboardOff(Exception):
    """The admin token is unset: every dashboard page answers the 403 page."""


def admin_session(request: web.Request) -> Session:
    """The operator's session; raises DashboardOff, or a 303 to the login form."""
    if _expected_token(request) is None:
        raise DashboardOff
    session = request.app[web_keys.sessions].read(request, "admin")
    if session is None:
        raise web.HTTPSeeOther(LOGIN_PATH)
    return session


def _form(request: web.Request, *, status: int = 200, error: str | None = None) -> web.Response:
    token = new_login_csrf()
    response = render(request, "dashboard_login.html", status=status, csrf=token, error=error)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path=LOGIN_PATH,
    )
    return response


async def login_form(request: web.Request) -> web.Response:
    if _expected_token(request) is None:
        return disabled(request)
    return _form(request)


def _failure_key(request: web.Request) -> str:
    return f"tb:web1:admin-login:{{{request.remote or 'unknown'}}}"


async def _failures(request: web.Request) -> int:
    try:
        value = await request.app[keys.redis_client].get(_failure_key(request))
    except RedisError as exc:
        log.warning("dashboard sign-in limit unavailable (checking the token anyway): %s", exc)
        return 0
    return int(value or 0)


async def _count_failure(request: web.Request) -> None:
    try:
        async with request.app[keys.redis_client].pipeline(transaction=True) as pipe:
            pipe.incr(_failure_key(request))
            pipe.expire(_failure_key(request), FAILURE_WINDOW_S, nx=True)
            await pipe.execute()
    except RedisError as exc:
        log.warning("dashboard sign-in failure not counted: %s", exc)


async def login(request: web.Request) -> web.Response:
    expected = _expected_token(request)
    if expected is None:
        return disabled(request)
    limit = request.app[keys.runtime].current.settings.portal.login_attempts_per_minute
    if await _failures(request) >= limit:
        response = message(request, 429, "Too many failed sign-ins. Wait a minute and retry.")
        response.headers["Retry-After"] = str(FAILURE_WINDOW_S)
        return response
    form = await request.post()
    if not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf")):
        return message(request, 403, "The sign-in form expired. Reload the page and retry.")
    given = form.get("token")
    if not isinstance(given, str) or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        await _count_failure(request)
        log.warning("dashboard sign-in refused from %s", request.remote)
        return _form(request, status=401, error="That token is not the admin token.")
    codec = request.app[web_keys.sessions]
    session = codec.new("admin", None, None, ADMIN_SESSION_TTL)
    response = web.Response(
        status=303,
        headers={"Location": BASE, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
    response.set_cookie(
        COOKIE_NAMES["admin"],
        codec.encode(session),
        max_age=int(ADMIN_SESSION_TTL.total_seconds()),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path=BASE,
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path=LOGIN_PATH)
    return response


async def logout(request: web.Request) -> web.Response:
    session = admin_session(request)
    form = await request.post()
    if not csrf_ok(session.csrf, form.get("csrf")):
        return message(request, 403, "The form expired. Reload the page and retry.")
    response = web.Response(status=303, headers={"Location": LOGIN_PATH})
    response.del_cookie(COOKIE_NAMES["admin"], path=BASE)
    return response
