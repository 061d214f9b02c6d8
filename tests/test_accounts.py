from __future__ import annotations

import hashlib
import re

import asyncpg
import pytest

from storage.accounts import (
    AccountError,
    AccountStore,
    CustomerExistsError,
    InvalidIdError,
    KeyPrincipal,
    UnknownCustomerError,
    UnknownKeyError,
)


@pytest.fixture
def store(pool: asyncpg.Pool) -> AccountStore:
    return AccountStore(pool)


async def test_customer_create_get_update_list(store: AccountStore) -> None:
    created = await store.create_customer(
        "acme", tier="free", name="Acme", email="ops@acme.test", stripe_customer_id="cus_1"
    )
    assert (created.id, created.tier, created.name, created.suspended) == (
        "acme",
        "free",
        "Acme",
        False,
    )
    assert created.created_at.tzinfo is not None
    await store.create_customer("beta.co", tier="pro")

    updated = await store.update_customer("acme", tier="pro", suspended=True, email=None)
    assert (updated.tier, updated.suspended, updated.email, updated.name) == (
        "pro",
        True,
        None,
        "Acme",
    )
    assert updated.updated_at >= created.updated_at
    assert await store.get_customer("acme") == updated
    assert await store.get_customer("nobody") is None
    assert [c.id for c in await store.list_customers()] == ["acme", "beta.co"]


async def test_customer_refusals(store: AccountStore) -> None:
    await store.create_customer("acme", tier="free")
    with pytest.raises(CustomerExistsError, match="already exists"):
        await store.create_customer("acme", tier="pro")
    for bad in ("", "has space", "x" * 65, "semi;colon"):
        with pytest.raises(InvalidIdError, match="invalid customer id"):
            await store.create_customer(bad, tier="free")
    with pytest.raises(UnknownCustomerError):
        await store.update_customer("nobody", tier="pro")
    with pytest.raises(AccountError, match="cannot update"):
        await store.update_customer("acme", id="other")


async def test_key_create_lookup_revoke(store: AccountStore) -> None:
    await store.create_customer("acme", tier="pro")
    record, key = await store.create_key(
        "acme", project_id="proj-1", user_id="u@acme.test", name="ci"
    )
    assert re.fullmatch(r"tb_[A-Za-z0-9_-]{32,}", key)
    assert re.fullmatch(r"key_[0-9a-f]{16}", record.id)
    assert record.prefix == key[3:11]
    assert record.active

    principal = await store.lookup_key(key)
    assert principal == KeyPrincipal(
        key_id=record.id,
        customer_id="acme",
        project_id="proj-1",
        user_id="u@acme.test",
        tier="pro",
        suspended=False,
    )
    await store.update_customer("acme", suspended=True, tier="free")
    principal = await store.lookup_key(key)
    assert principal is not None
    assert (principal.suspended, principal.tier) == (True, "free")

    assert await store.revoke_key(record.id) is True
    assert await store.lookup_key(key) is None
    assert await store.revoke_key(record.id) is False
    [listed] = await store.list_keys("acme")
    assert listed.id == record.id and listed.revoked_at is not None
    with pytest.raises(UnknownKeyError):
        await store.revoke_key("key_0000000000000000")


async def test_unknown_and_malformed_keys_find_nothing(store: AccountStore) -> None:
    await store.create_customer("acme", tier="pro")
    _, key = await store.create_key("acme")
    assert await store.lookup_key(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await store.lookup_key("sk-" + key[3:]) is None
    assert await store.lookup_key("") is None


async def test_keys_of_unknown_customer_are_refused(store: AccountStore) -> None:
    with pytest.raises(UnknownCustomerError):
        await store.create_key("nobody")


async def test_list_keys_by_customer(store: AccountStore) -> None:
    await store.create_customer("a", tier="pro")
    await store.create_customer("b", tier="pro")
    first, _ = await store.create_key("a")
    second, _ = await store.create_key("b")
    assert [k.id for k in await store.list_keys("a")] == [first.id]
    assert {k.id for k in await store.list_keys()} == {first.id, second.id}


async def test_only_the_hash_of_a_key_is_stored(store: AccountStore, pool: asyncpg.Pool) -> None:
    await store.create_customer("acme", tier="pro")
    record, key = await store.create_key("acme", name="prod")
    secret_part = key[3:]
    dump = await pool.fetch("SELECT t::text AS row FROM api_keys t")
    assert dump
    for row in dump:
        assert key not in row["row"]
        assert secret_part not in row["row"]
    stored = await pool.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", record.id)
    assert stored == hashlib.sha256(key.encode()).digest()
    assert secret_part not in repr(record)
    assert not {"key", "key_hash", "plaintext"} & set(record.__dataclass_fields__)
