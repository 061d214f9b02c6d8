"""Signed, expiring links to the customer usage portal: `/portal?token=TOKEN`.

A token is `Signer(secret, "portal-link")` over `{c: customer, p: project | null, exp: unix
seconds, n: random nonce}`: HMAC-SHA256, so it cannot be forged or altered (a changed
customer, project or expiry breaks the MAC), and it is not a `tb_` key, so it never
authenticates an API call. `verify_link` returns the link's grant, or None for a token that
is malformed, tampered with, signed by another secret, or expired. Whether the customer may
still use it (exists, not suspended) is checked by the portal when the token is exchanged,
and again on every request of the session that follows.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from gateway.web.sessions import Signer


@dataclass(frozen=True, slots=True)
class PortalGrant:
    customer_id: str
    project_id: str | None
    expires_at: datetime


def issue_link(
    signer: Signer, customer_id: str, project_id: str | None, *, ttl: timedelta, now: datetime
) -> tuple[str, datetime]:
    """(token, expires_at) for a link valid `ttl` from `now` (whole seconds)."""
    expires = (now + ttl).replace(microsecond=0)
    token = signer.sign(
        {
            "c": customer_id,
            "p": project_id,
            "exp": int(expires.timestamp()),
            "n": secrets.token_urlsafe(12),
        }
    )
    return token, expires


def verify_link(signer: Signer, token: str, *, now: datetime) -> PortalGrant | None:
    payload = signer.verify(token)
    if payload is None:
        return None
    customer, project, exp = payload.get("c"), payload.get("p"), payload.get("exp")
    if (
        not isinstance(customer, str)
        or not isinstance(project, str | None)
        or not isinstance(exp, int)
    ):
        return None
    expires = datetime.fromtimestamp(exp, UTC)
    if expires <= now:
        return None
    return PortalGrant(customer, project, expires)


def link_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/portal?{urlencode({'token': token})}"
