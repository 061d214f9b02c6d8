"""The connection to providers: one pooled aiohttp ClientSession and the one place that
translates client-side network failures into gateway errors.

A connect failure, refused connection or a reset before the response head is a 502
(`UpstreamUnreachableError`); no response head within the read timeout is a 504
(`UpstreamTimeoutError`). Failures after the head arrived (a stream cut mid-way) surface as
`UpstreamBroken` to the relay, which records what was produced and ends the client's stream.
Provider keys travel only in the request headers built by the adapter; no error message here
includes a header or a URL query.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping

import aiohttp

from gateway.errors import UpstreamTimeoutError, UpstreamUnreachableError


class UpstreamBroken(Exception):
    """The upstream connection failed after the response head: a truncated body or stream."""


def create_session(*, connect_timeout_s: float, read_timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # no pool-wide cap: concurrency is bounded by the server, not by us
        limit_per_host=0,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # We ask for identity; a provider that compresses anyway is decoded here so its usage
        # can be read (the proxy drops Content-Encoding from what it relays).
        auto_decompress=True,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
) -> aiohttp.ClientResponse:
    """Send a request and return once the response head has arrived."""
    try:
        return await session.request(method, url, headers=headers, data=body, allow_redirects=False)
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeoutError("The provider did not answer in time.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachableError(
            f"The provider could not be reached ({type(exc).__name__})."
        ) from exc


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeoutError("The provider stopped answering mid-response.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachableError(
            f"The provider connection failed mid-response ({type(exc).__name__})."
        ) from exc


async def iter_chunks(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    """Yield body chunks as they arrive; a network failure becomes `UpstreamBroken`."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UpstreamBroken(type(exc).__name__) from exc
