"""Signed, stateless web sessions (a cookie), CSRF tokens, and the secret they are signed with.

A session is `{kind, customer, project, exp, csrf}` serialized as JSON, base64url'd and
followed by an HMAC-SHA256 of those bytes: `BODY.MAC`. `kind` is "customer" (the usage
portal: one customer, or one project of it) or "admin" (the operator dashboard). Nothing is
stored server side; a session ends at `exp` or when its cookie is dropped. The server still
checks the customer on every request (suspended or deleted: refused), so a session never
outlives its customer's right to it.

Each use of the secret gets its own key (`Signer(secret, purpose)`: HMAC(secret, purpose)),
so a portal link's token is not a valid session cookie, nor the other way round, and neither
is a `tb_` key: the API's authenticator never sees them.

CSRF: every session carries a random `csrf` token; a state-changing form posts it back in the
`csrf` field and `csrf_ok` compares it in constant time. Before sign-in (the login form), a
random token is both set in the `tb_login_csrf` cookie and posted in the form (double submit).

The secret: `TOLLBOOTH_PORTAL_SECRET` when set (at least 32 characters), else one generated
once and kept in Postgres (`storage.web_secret`), so every instance and restart agrees.
Decoding never raises: a malformed, tampered or expired value is `None`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import orjson
from aiohttp import web

from storage.web_secret import load_or_create_secret

SECRET_ENV = "TOLLBOOTH_PORTAL_SECRET"
MIN_SECRET_CHARS = 32
LOGIN_CSRF_COOKIE = "tb_login_csrf"
COOKIE_NAMES: dict[str, str] = {"customer": "tb_portal", "admin": "tb_admin"}

Clock = Callable[[], datetime]
SessionKind = Literal["customer", "admin"]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SecretError(Exception):
    """`TOLLBOOTH_PORTAL_SECRET` is set but too short to sign with."""


async def load_web_secret(pool: asyncpg.Pool) -> bytes:
    """The signing secret: the environment's when set, else the one stored in Postgres."""
    configured = os.environ.get(SECRET_ENV)
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise SecretError(
                f"{SECRET_ENV} must be at least {MIN_SECRET_CHARS} characters "
                "(e.g. the output of `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)"
            )
        return configured.encode()
    return await load_or_create_secret(pool)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """HMAC-SHA256 signatures of JSON objects, with a key of their own per `purpose`."""

    def __init__(self, secret: bytes, purpose: str) -> None:
        self._key = hmac.new(secret, b"tollbooth-web:" + purpose.encode(), hashlib.sha256).digest()

    def sign(self, payload: dict[str, Any]) -> str:
        body = _b64(orjson.dumps(payload))
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        body, dot, mac = token.partition(".")
        if not dot or not hmac.compare_digest(mac.encode(), self._mac(body).encode()):
            return None
        try:
            payload = orjson.loads(_unb64(body))
        except (binascii.Error, ValueError):
            return None
        return payload if isinstance(payload, dict) else None

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class Session:
    kind: SessionKind
    customer_id: str | None  # None: an admin session
    project_id: str | None  # None: every project of the customer
    expires_at: datetime
    csrf: str


class SessionCodec:
    """Encodes sessions to cookie values and back, checking signature and expiry."""

    def __init__(self, secret: bytes, *, clock: Clock = utc_now) -> None:
        self._signer = Signer(secret, "session")
        self._clock = clock

    def new(
        self, kind: SessionKind, customer_id: str | None, project_id: str | None, ttl: timedelta
    ) -> Session:
        expires = self._clock() + ttl
        return Session(kind, customer_id, project_id, expires, secrets.token_urlsafe(24))

    def encode(self, session: Session) -> str:
        return self._signer.sign(
            {
                "k": session.kind,
                "c": session.customer_id,
                "p": session.project_id,
                "exp": int(session.expires_at.timestamp()),
                "csrf": session.csrf,
            }
        )

    def decode(self, value: str | None, kind: SessionKind) -> Session | None:
        if not value:
            return None
        payload = self._signer.verify(value)
        if payload is None or payload.get("k") != kind:
            return None
        exp, customer, project, csrf = (
            payload.get("exp"),
            payload.get("c"),
            payload.get("p"),
            payload.get("csrf"),
        )
        if (
            not isinstance(exp, int)
            or not isinstance(csrf, str)
            or not isinstance(customer, str | None)
            or not isinstance(project, str | None)
        ):
            return None
        expires = datetime.fromtimestamp(exp, UTC)
        if expires <= self._clock():
            return None
        return Session(kind, customer, project, expires, csrf)

    def read(self, request: web.Request, kind: SessionKind) -> Session | None:
        return self.decode(request.cookies.get(COOKIE_NAMES[kind]), kind)


def cookie_options(
    request: web.Request, *, embeddable: bool, secure: bool = False
) -> dict[str, Any]:
    """HttpOnly; Secure when the request came over TLS or `secure` says a TLS proxy is in
    front; SameSite=Lax, or None when the page may be framed and the cookie is Secure (a
    cross-site iframe only sends SameSite=None cookies, and browsers require Secure for
    those)."""
    secure = secure or request.secure
    same_site = "None" if embeddable and secure else "Lax"
    return {"httponly": True, "samesite": same_site, "secure": secure, "path": "/"}


def set_session_cookie(
    response: web.StreamResponse,
    request: web.Request,
    codec: SessionCodec,
    session: Session,
    *,
    embeddable: bool = False,
    secure: bool = False,
) -> None:
    max_age = max(0, int((session.expires_at - utc_now()).total_seconds()))
    response.set_cookie(
        COOKIE_NAMES[session.kind],
        codec.encode(session),
        max_age=max_age,
        **cookie_options(request, embeddable=embeddable, secure=secure),
    )


def clear_session_cookie(response: web.StreamResponse, kind: SessionKind) -> None:
    response.del_cookie(COOKIE_NAMES[kind], path="/")


def csrf_ok(expected: str | None, given: object) -> bool:
    """True when a form's `csrf` value matches the expected token (constant time)."""
    if not expected or not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)
