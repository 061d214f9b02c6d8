"""The authenticator against real Postgres: keys from either header, one query for a burst,
revocation within the cache ttl, and behaviour when the key store is down."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.auth import Authenticator
from gateway.errors import AuthenticationError, ServiceUnavailableError
from storage.accounts import AccountStore, KeyPrincipal


class CountingStore(AccountStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.lookups = 0
        self.down = False

    async def lookup_key(self, key: str) -> KeyPrincipal | None:
        self.lookups += 1
        if self.down:
            raise ConnectionRefusedError("postgres is down")
        await asyncio.sleep(0.01)  # let concurrent callers pile up
        return await super().lookup_key(key)


@pytest.fixture
def store(pool: asyncpg.Pool) -> CountingStore:
    return CountingStore(pool)


def request(**headers: str):  # type: ignore[no-untyped-def]
    """The headers of a request (what the authenticator reads)."""
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers).headers


async def new_key(store: AccountStore) -> tuple[str, str]:
    await store.create_customer("acme", tier="free")
    record, key = await store.create_key("acme", project_id="web", user_id=None, name=None)
    return record.id, key


async def test_both_header_styles_resolve_the_customer(store: CountingStore) -> None:
    _, key = await new_key(store)
    auth = Authenticator(store)
    for req in (request(Authorization=f"Bearer {key}"), request(**{"x-api-key": key})):
        principal = await auth.authenticate(req)
        assert (principal.customer_id, principal.project_id) == ("acme", "web")
    with pytest.raises(AuthenticationError):
        await auth.authenticate(request())
    with pytest.raises(AuthenticationError):
        await auth.authenticate(request(Authorization="Bearer tb_unknown"))


async def test_a_burst_with_one_key_costs_one_query(store: CountingStore) -> None:
    _, key = await new_key(store)
    auth = Authenticator(store)
    results = await asyncio.gather(
        *(auth.authenticate(request(Authorization=f"Bearer {key}")) for _ in range(50))
    )
    assert {r.customer_id for r in results} == {"acme"}
    assert store.lookups == 1


async def test_a_revoked_key_is_refused_once_the_ttl_passes(store: CountingStore) -> None:
    key_id, key = await new_key(store)
    auth = Authenticator(store, ttl_s=0.3)
    await auth.authenticate(request(Authorization=f"Bearer {key}"))
    assert await store.revoke_key(key_id)
    await asyncio.sleep(0.35)
    with pytest.raises(AuthenticationError):
        await auth.authenticate(request(Authorization=f"Bearer {key}"))


async def test_key_store_down_known_keys_keep_working_unknown_get_503(
    store: CountingStore,
) -> None:
    _, key = await new_key(store)
    auth = Authenticator(store, ttl_s=0.05)
    await auth.authenticate(request(Authorization=f"Bearer {key}"))
    store.down = True
    await asyncio.sleep(0.1)  # cache entry expired: the next call queries and fails
    principal = await auth.authenticate(request(Authorization=f"Bearer {key}"))
    assert principal.customer_id == "acme"
    with pytest.raises(ServiceUnavailableError):
        await auth.authenticate(request(Authorization="Bearer tb_never_seen"))


async def test_a_cancelled_caller_does_not_strand_the_others(store: CountingStore) -> None:
    _, key = await new_key(store)
    auth = Authenticator(store)
    first = asyncio.ensure_future(auth.authenticate(request(Authorization=f"Bearer {key}")))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(auth.authenticate(request(Authorization=f"Bearer {key}")))
    await asyncio.sleep(0)
    first.cancel()
    principal = await asyncio.wait_for(second, timeout=2)
    assert principal.customer_id == "acme"
