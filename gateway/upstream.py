"""The connection to providers, and the one place that translates network failures on it
into gateway errors.

Forwarded requests go through `gateway.upstream_client.UpstreamClient` (pooled keep-alive
HTTP/1.1, httptools); other outgoing calls (alert webhooks) use the aiohttp session made by
`create_session`. Translation, for forwarded requests:
- a connect failure, refused connection or a reset before the response head is a 502
  (`UpstreamUnreachableError`); no connection or no response head within its timeout is a
  504 (`UpstreamTimeoutError`);
- failures after the head arrived (a stream cut mid-way, no data for the read timeout, a body
  that cannot be decoded) surface as `UpstreamBroken` to the relay, which records what was
  produced and ends the client's stream; for a whole-body read they are a 502 or a 504.
Provider keys travel only in the request headers built by the adapter; no error message here
includes a header or a URL query.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping

import aiohttp

from gateway.errors import InvalidRequestError, UpstreamTimeoutError, UpstreamUnreachableError
from gateway.upstream_client import (
    UnsafeHeaderError,
    UpstreamBodyTimeout,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamReadTimeout,
    UpstreamResponse,
    check_headers,
)
from gateway.upstream_client import UpstreamClient as UpstreamClient

__all__ = [
    "UpstreamBroken",
    "UpstreamClient",
    "UpstreamResponse",
    "check_forwardable",
    "create_session",
    "iter_chunks",
    "read_body",
    "send",
]


class UpstreamBroken(Exception):
    """The upstream connection failed after the response head: a truncated body or stream."""


def create_session(*, connect_timeout_s: float, read_timeout_s: float) -> aiohttp.ClientSession:
    """The aiohttp session for the gateway's own outgoing calls (alert webhooks)."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
    )
    return aiohttp.ClientSession(
        timeout=timeout,
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def check_forwardable(headers: Mapping[str, str]) -> None:
    """400 for a header that cannot be forwarded; call before anything is recorded or sent."""
    try:
        check_headers(headers)
    except UnsafeHeaderError:
        raise InvalidRequestError(
            "A header of this request cannot be forwarded (it holds a line break)."
        ) from None


async def send(
    client: UpstreamClient,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
) -> UpstreamResponse:
    """Send a request and return once the response head has arrived."""
    try:
        return await client.request(method, url, headers, body)
    except UnsafeHeaderError:
        raise InvalidRequestError(
            "A header of this request cannot be forwarded (it holds a line break)."
        ) from None
    except (UpstreamConnectTimeout, UpstreamReadTimeout) as exc:
        raise UpstreamTimeoutError("The provider did not answer in time.") from exc
    except UpstreamError as exc:
        raise UpstreamUnreachableError(
            f"The provider could not be reached ({type(exc).__name__})."
        ) from exc


async def read_body(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    except UpstreamBodyTimeout as exc:
        raise UpstreamTimeoutError("The provider stopped answering mid-response.") from exc
    except UpstreamError as exc:
        raise UpstreamUnreachableError(
            f"The provider connection failed mid-response ({type(exc).__name__})."
        ) from exc


async def iter_chunks(response: UpstreamResponse) -> AsyncGenerator[bytes, None]:
    """Yield body chunks as they arrive; a network failure becomes `UpstreamBroken`."""
    try:
        async for chunk in response.iter_chunks():
            yield chunk
    except UpstreamError as exc:
        raise UpstreamBroken(type(exc).__name__) from exc
