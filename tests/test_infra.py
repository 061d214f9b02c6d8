from __future__ import annotations

import asyncpg
import redis.asyncio as redis


async def test_embedded_postgres_and_valkey_answer(fresh_database_url: str, redis_url: str) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        assert await conn.fetchval("select 1 + 1") == 2
    finally:
        await conn.close()
    client = redis.Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()
