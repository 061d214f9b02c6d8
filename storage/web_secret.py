"""The web signing secret kept in Postgres (`web_secrets`), shared by every instance.

`load_or_create_secret(pool)` returns the stored secret, generating and inserting one the
first time (`INSERT ... ON CONFLICT DO NOTHING` then a read, so two instances starting at once
agree on the row that won). Errors are asyncpg's, unchanged: the caller (the app's startup)
fails to start rather than sign with a secret the other instances do not share.
"""

from __future__ import annotations

import secrets

import asyncpg

SECRET_BYTES = 32


async def load_or_create_secret(pool: asyncpg.Pool, name: str = "web") -> bytes:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO web_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            name,
            secrets.token_bytes(SECRET_BYTES),
        )
        secret: bytes = await conn.fetchval("SELECT secret FROM web_secrets WHERE name = $1", name)
    return secret
