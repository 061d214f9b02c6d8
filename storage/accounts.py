"""Customers and their API keys in Postgres: create, change, list, revoke, and look a key up.

A key is `tb_` followed by 43 url-safe random characters (32 bytes from `secrets`). It is
returned once by `create_key` and never stored: `api_keys.key_hash` holds its SHA-256 and
`prefix` the 8 characters after `tb_`, for recognising a key in a listing. `lookup_key` hashes
the presented key and answers the `KeyPrincipal` the gateway authorises with, or None for an
unknown or revoked key. No record or message here ever contains a key or its hash.

Errors: every refusal is an `AccountError` with a message fit to show an operator
(`InvalidIdError`, `CustomerExistsError`, `UnknownCustomerError`, `UnknownKeyError`).
Database and connection errors pass through unchanged (asyncpg's), for the caller to report.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

KEY_PREFIX = "tb_"
# secrets.token_urlsafe(32) gives 43 characters; a key has at least 32 after `tb_`.
KEY_RANDOM_BYTES = 32
DISPLAY_PREFIX_CHARS = 8

CUSTOMER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
KEY_ID_PATTERN = re.compile(r"key_[0-9a-f]{16}")
# Project and user ids come from the operator's own systems (user ids may be emails), so they
# are only required to be short and free of whitespace and control characters.
LABEL_ID_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")
MAX_NAME_CHARS = 200

UPDATABLE_CUSTOMER_FIELDS = frozenset({"name", "email", "tier", "stripe_customer_id", "suspended"})


class AccountError(Exception):
    """A customer or key operation was refused; the message says why."""


class InvalidIdError(AccountError):
    pass


class CustomerExistsError(AccountError):
    pass


class UnknownCustomerError(AccountError):
    pass


class UnknownKeyError(AccountError):
    pass


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    name: str | None
    email: str | None
    tier: str
    stripe_customer_id: str | None
    suspended: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listings show it: never the key itself, never its hash."""

    id: str
    prefix: str
    customer_id: str
    project_id: str | None
    user_id: str | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class KeyPrincipal:
    """Who a presented key speaks for: what the gateway authorises and meters with."""

    key_id: str
    customer_id: str
    project_id: str | None
    user_id: str | None
    tier: str
    suspended: bool


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def validate_customer_id(customer_id: str) -> str:
    if not CUSTOMER_ID_PATTERN.fullmatch(customer_id):
        raise InvalidIdError(
            f"invalid customer id {customer_id!r}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return customer_id


def _validate_label(kind: str, value: str | None) -> str | None:
    if value is not None and not LABEL_ID_PATTERN.fullmatch(value):
        raise InvalidIdError(f"invalid {kind} {value!r}: use 1 to 128 characters without spaces")
    return value


def _validate_name(value: str | None) -> str | None:
    if value is not None and (len(value) > MAX_NAME_CHARS or not value.isprintable()):
        raise AccountError(f"name must be at most {MAX_NAME_CHARS} printable characters")
    return value


def _customer(row: asyncpg.Record) -> Customer:
    return Customer(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        tier=row["tier"],
        stripe_customer_id=row["stripe_customer_id"],
        suspended=row["suspended"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        prefix=row["prefix"],
        customer_id=row["customer_id"],
        project_id=row["project_id"],
        user_id=row["user_id"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


_CUSTOMER_COLUMNS = "id, name, email, tier, stripe_customer_id, suspended, created_at, updated_at"
_KEY_COLUMNS = "id, prefix, customer_id, project_id, user_id, name, created_at, revoked_at"


class AccountStore:
    """Customers and keys, read and written through one asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- customers -----------------------------------------------------------------------

    async def create_customer(
        self,
        customer_id: str,
        tier: str,
        name: str | None = None,
        email: str | None = None,
        stripe_customer_id: str | None = None,
    ) -> Customer:
        validate_customer_id(customer_id)
        if not tier:
            raise AccountError("a customer needs a tier")
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO customers (id, name, email, tier, stripe_customer_id)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (id) DO NOTHING
            RETURNING {_CUSTOMER_COLUMNS}
            """,
            customer_id,
            _validate_name(name),
            email,
            tier,
            stripe_customer_id,
        )
        if row is None:
            raise CustomerExistsError(f"customer {customer_id!r} already exists")
        return _customer(row)

    async def update_customer(self, customer_id: str, **changes: str | bool | None) -> Customer:
        """Change the given fields (name, email, tier, stripe_customer_id, suspended).

        A field passed as None is cleared; `tier` and `suspended` cannot be cleared.
        """
        validate_customer_id(customer_id)
        unknown = set(changes) - UPDATABLE_CUSTOMER_FIELDS
        if unknown:
            raise AccountError(f"cannot update customer field(s): {', '.join(sorted(unknown))}")
        if "tier" in changes and not isinstance(changes["tier"], str):
            raise AccountError("tier must be a tier name")
        if "suspended" in changes and not isinstance(changes["suspended"], bool):
            raise AccountError("suspended must be true or false")
        if "name" in changes:
            name = changes["name"]
            _validate_name(name if isinstance(name, str) else None)
        if not changes:
            customer = await self.get_customer(customer_id)
            if customer is None:
                raise UnknownCustomerError(f"no customer {customer_id!r}")
            return customer
        fields = sorted(changes)
        assignments = ", ".join(f"{field} = ${i}" for i, field in enumerate(fields, start=2))
        row = await self._pool.fetchrow(
            f"""
            UPDATE customers SET {assignments}, updated_at = now()
            WHERE id = $1
            RETURNING {_CUSTOMER_COLUMNS}
            """,
            customer_id,
            *(changes[field] for field in fields),
        )
        if row is None:
            raise UnknownCustomerError(f"no customer {customer_id!r}")
        return _customer(row)

    async def get_customer(self, customer_id: str) -> Customer | None:
        row = await self._pool.fetchrow(
            f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id = $1", customer_id
        )
        return _customer(row) if row is not None else None

    async def list_customers(self) -> list[Customer]:
        rows = await self._pool.fetch(f"SELECT {_CUSTOMER_COLUMNS} FROM customers ORDER BY id")
        return [_customer(row) for row in rows]

    # -- keys ----------------------------------------------------------------------------

    async def create_key(
        self,
        customer_id: str,
        project_id: str | None = None,
        user_id: str | None = None,
        name: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for the customer: its record, and the key itself (shown once, never stored)."""
        validate_customer_id(customer_id)
        _validate_label("project id", project_id)
        _validate_label("user id", user_id)
        _validate_name(name)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
        key_id = "key_" + secrets.token_hex(8)
        prefix = plaintext[len(KEY_PREFIX) : len(KEY_PREFIX) + DISPLAY_PREFIX_CHARS]
        try:
            row = await self._pool.fetchrow(
                f"""
                INSERT INTO api_keys (id, key_hash, prefix, customer_id, project_id, user_id, name)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                RETURNING {_KEY_COLUMNS}
                """,
                key_id,
                hash_key(plaintext),
                prefix,
                customer_id,
                project_id,
                user_id,
                name,
            )
        except asyncpg.ForeignKeyViolationError:
            raise UnknownCustomerError(f"no customer {customer_id!r}") from None
        assert row is not None  # INSERT ... RETURNING always returns the row
        return _api_key(row), plaintext

    async def list_keys(self, customer_id: str | None = None) -> list[ApiKey]:
        rows = await self._pool.fetch(
            f"""
            SELECT {_KEY_COLUMNS} FROM api_keys
            WHERE $1::text IS NULL OR customer_id = $1
            ORDER BY customer_id, created_at, id
            """,
            customer_id,
        )
        return [_api_key(row) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key: True if this call revoked it, False if it was already revoked.

        Raises `UnknownKeyError` when there is no such key.
        """
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise InvalidIdError(
                f"invalid key id {key_id!r}: key ids look like key_0123456789abcdef"
            )
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT revoked_at FROM api_keys WHERE id = $1 FOR UPDATE", key_id
            )
            if row is None:
                raise UnknownKeyError(f"no key {key_id!r}")
            if row["revoked_at"] is not None:
                return False
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key_id)
            return True

    async def lookup_key(self, key: str) -> KeyPrincipal | None:
        """The principal of an active key, or None for an unknown or revoked one."""
        if not key.startswith(KEY_PREFIX):
            return None
        row = await self._pool.fetchrow(
            """
            SELECT k.id, k.customer_id, k.project_id, k.user_id, c.tier, c.suspended
            FROM api_keys k JOIN customers c ON c.id = k.customer_id
            WHERE k.key_hash = $1 AND k.revoked_at IS NULL
            """,
            hash_key(key),
        )
        if row is None:
            return None
        return KeyPrincipal(
            key_id=row["id"],
            customer_id=row["customer_id"],
            project_id=row["project_id"],
            user_id=row["user_id"],
            tier=row["tier"],
            suspended=row["suspended"],
        )
