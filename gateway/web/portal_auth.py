"""Who is looking at the portal: signed links, key sign-in, the session, sign-out.

- `GET /portal?token=T` (a link from `tollbooth portal link` or `POST /admin/portal-links`):
  a valid, unexpired token of an existing, unsuspended customer becomes a session cookie, and
  the answer is a 303 to `/portal`, so the token leaves the address bar and the history. A bad,
  tampered or expired token gets a 403 page.
- `GET|POST /portal/login`: sign in with one of the customer's `tb_` keys (CSRF: a random
  value in both the `tb_login_csrf` cookie and the form). A key with a project opens that
  project's view only. At most `portal.login_attempts_per_minute` attempts per client IP and
  minute, counted in Redis (so the limit holds across instances): then 429. If Redis is
  unreachable the attempt is allowed and a warning logged: keys are 32+ random characters,
  the limit only slows guessing, and sign-in must not depend on the quota store.
- `POST /portal/logout` (CSRF) drops the cookie.

`portal_viewer(request)` reads the session and re-reads the customer on every request, so a
suspended or deleted customer is refused at once (the session and links carry no authority
of their own). The session and the link token are signed with keys of their own
(gateway.web.sessions) and are not `tb_` keys: neither authenticates an API or /usage call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web
from redis.exceptions import RedisError

from gateway import keys
from gateway.web import keys as web_keys
from gateway.web.portal_links import verify_link
from gateway.web.render import render
from gateway.web.sessions import (
    LOGIN_CSRF_COOKIE,
    Session,
    clear_session_cookie,
    cookie_options,
    csrf_ok,
    new_login_csrf,
    set_session_cookie,
)
from storage.accounts import Customer

log = logging.getLogger("tollbooth.portal")

LOGIN_WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class Viewer:
    session: Session
    customer: Customer

    @property
    def project_id(self) -> str | None:
        return self.session.project_id


def frame_ancestors(request: web.Request) -> list[str]:
    configured = request.app[keys.runtime].current.settings.portal.frame_ancestors
    return ["'self'", *configured]


def _cookie_flags(request: web.Request) -> dict[str, bool]:
    portal = request.app[keys.runtime].current.settings.portal
    return {"embeddable": bool(portal.frame_ancestors), "secure": portal.secure_cookies}


def page(
    request: web.Request, template: str, *, status: int = 200, **context: object
) -> web.Response:
    return render(
        request, template, status=status, frame_ancestors=frame_ancestors(request), **context
    )


def refusal(request: web.Request, status: int, message: str) -> web.Response:
    return page(
        request, "portal_message.html", status=status, title="Usage portal", message=message
    )


async def _usable(request: web.Request, customer_id: str) -> Customer | None:
    customer = await request.app[keys.accounts].get_customer(customer_id)
    return None if customer is None or customer.suspended else customer


async def portal_viewer(request: web.Request) -> Viewer | None:
    session = request.app[web_keys.sessions].read(request, "customer")
    if session is None or session.customer_id is None:
        return None
    customer = await _usable(request, session.customer_id)
    return None if customer is None else Viewer(session, customer)


def _signed_in(request: web.Request, customer_id: str, project_id: str | None) -> web.Response:
    codec = request.app[web_keys.sessions]
    ttl = timedelta(seconds=request.app[keys.runtime].current.settings.portal.session_ttl_s)
    session = codec.new("customer", customer_id, project_id, ttl)
    response = web.Response(
        status=303,
        headers={
            "Location": "/portal",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )
    set_session_cookie(response, request, codec, session, **_cookie_flags(request))
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/portal/login")
    return response


async def exchange_link(request: web.Request, token: str) -> web.Response:
    now = request.app[web_keys.clock]()
    grant = verify_link(request.app[web_keys.link_signer], token, now=now)
    if grant is None or await _usable(request, grant.customer_id) is None:
        return refusal(request, 403, "This link is invalid or has expired. Ask for a new one.")
    return _signed_in(request, grant.customer_id, grant.project_id)


def _login_form(
    request: web.Request, *, status: int = 200, error: str | None = None
) -> web.Response:
    token = new_login_csrf()
    response = page(request, "portal_login.html", status=status, csrf=token, error=error)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        **{**cookie_options(request, **_cookie_flags(request)), "path": "/portal/login"},
    )
    return response


async def login_form(request: web.Request) -> web.Response:
    return _login_form(request)


async def _allow_attempt(request: web.Request) -> bool:
    limit = request.app[keys.runtime].current.settings.portal.login_attempts_per_minute
    client = request.remote or "unknown"
    key = f"tb:web1:login:{{{client}}}"
    redis = request.app[keys.redis_client]
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, LOGIN_WINDOW_S, nx=True)
            count, _ = await pipe.execute()
    except RedisError as exc:
        log.warning("portal login rate limit unavailable (allowing): %s", exc)
        return True
    return int(count) <= limit


async def login(request: web.Request) -> web.Response:
    if not await _allow_attempt(request):
        response = refusal(request, 429, "Too many sign-in attempts. Wait a minute and retry.")
        response.headers["Retry-After"] = str(LOGIN_WINDOW_S)
        return response
    form = await request.post()
    if not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE), form.get("csrf")):
        return refusal(request, 403, "The sign-in form expired. Reload the page and retry.")
    key = form.get("key")
    principal = None
    if isinstance(key, str) and key.strip():
        principal = await request.app[keys.accounts].lookup_key(key.strip())
    if principal is None or principal.suspended:
        return _login_form(request, status=401, error="That key is not valid for the portal.")
    return _signed_in(request, principal.customer_id, principal.project_id)


async def logout(request: web.Request) -> web.Response:
    viewer = await portal_viewer(request)
    form = await request.post()
    if viewer is not None and not csrf_ok(viewer.session.csrf, form.get("csrf")):
        return refusal(request, 403, "The form expired. Reload the page and retry.")
    response = web.Response(status=303, headers={"Location": "/portal/login"})
    clear_session_cookie(response, "customer")
    return response
