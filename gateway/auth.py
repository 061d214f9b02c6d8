"""Who is calling: the Tollbooth key in `Authorization: Bearer` or `x-api-key`, resolved to a
customer, project, user and tier.

Keys are looked up by their SHA-256 in Postgres through `AccountStore.lookup_key` and cached
in process for `ttl_s` seconds (default 2), unknown keys included, so a burst of requests with
one key costs one query and a revoked key is refused on every instance within `ttl_s` plus the
query time (the contract says 5 s). Concurrent misses for one key share one query. If Postgres
is unreachable, a key still in the cache keeps working; an uncached key gets a 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict

from aiohttp import web

from gateway.errors import AuthenticationError, ServiceUnavailableError
from storage.accounts import AccountStore, KeyPrincipal


def presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


class Authenticator:
    def __init__(self, accounts: AccountStore, *, ttl_s: float = 2.0, max_entries: int = 50_000):
        self._accounts = accounts
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: OrderedDict[bytes, tuple[float, KeyPrincipal | None]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[KeyPrincipal | None]] = {}

    async def authenticate(self, request: web.Request) -> KeyPrincipal:
        key = presented_key(request)
        if key is None:
            raise AuthenticationError(
                "Missing API key. Send your Tollbooth key as 'Authorization: Bearer KEY' "
                "or 'x-api-key: KEY'."
            )
        principal = await self._resolve(key)
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.")
        return principal

    async def _resolve(self, key: str) -> KeyPrincipal | None:
        digest = hashlib.sha256(key.encode()).digest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyPrincipal | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            principal = await self._accounts.lookup_key(key)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it re-raised below
            if hit is not None:  # stale but known: keep serving through a database outage
                return hit[1]
            raise ServiceUnavailableError(
                "The key store is unavailable; retry shortly."
            ) from exc
        finally:
            self._pending.pop(digest, None)
        future.set_result(principal)
        self._cache[digest] = (now + self._ttl_s, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return principal
