"""Who is calling: the Tollbooth key in `Authorization: Bearer` or `x-api-key` (on a forwarded
route, wherever its API's SDK sends a key: the adapter's `client_key`), resolved to a
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
from collections.abc import Mapping

from gateway.errors import AuthenticationError, ServiceUnavailableError
from gateway.providers.defaults import bearer_or_api_key
from storage.accounts import AccountStore, KeyPrincipal


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in a request's `Authorization: Bearer` or `x-api-key` header (case-insensitive
    names), or None. The forwarded routes ask their adapter instead (`client_key`)."""
    return bearer_or_api_key(headers)


class Authenticator:
    def __init__(self, accounts: AccountStore, *, ttl_s: float = 2.0, max_entries: int = 50_000):
        self._accounts = accounts
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._cache: OrderedDict[bytes, tuple[float, KeyPrincipal | None]] = OrderedDict()
        self._pending: dict[bytes, asyncio.Task[KeyPrincipal | None]] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> KeyPrincipal:
        """The principal of the key in `headers` (a case-insensitive mapping), or 401."""
        return await self.authenticate_key(presented_key(headers))

    async def authenticate_key(self, key: str | None) -> KeyPrincipal:
        """The principal of `key` (as the caller found it in the request), or 401."""
        if key is None:
            raise AuthenticationError(
                "Missing API key. Send your Tollbooth key where your SDK sends its API key: "
                "'Authorization: Bearer KEY' or 'x-api-key: KEY' ('api-key: KEY' on Azure "
                "OpenAI routes, 'x-goog-api-key: KEY' on Gemini routes)."
            )
        principal = await self._resolve(key)
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.")
        return principal

    async def _resolve(self, key: str) -> KeyPrincipal | None:
        digest = hashlib.sha256(key.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        lookup = self._pending.get(digest)
        if lookup is None:
            # Its own task, shared by every concurrent caller with this key: a caller that is
            # cancelled (client gone) never cancels the lookup the others are waiting for.
            lookup = asyncio.ensure_future(self._lookup(key, digest))
            self._pending[digest] = lookup
            lookup.add_done_callback(lambda _: self._pending.pop(digest, None))
        return await asyncio.shield(lookup)

    async def _lookup(self, key: str, digest: bytes) -> KeyPrincipal | None:
        try:
            principal = await self._accounts.lookup_key(key)
        except Exception as exc:
            stale = self._cache.get(digest)
            if stale is not None:  # known before: keep serving through a database outage
                return stale[1]
            raise ServiceUnavailableError("The key store is unavailable; retry shortly.") from exc
        self._cache[digest] = (time.monotonic() + self._ttl_s, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return principal
