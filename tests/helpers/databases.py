"""New, empty databases on a test Postgres server (the session's embedded one, or a private
one a test starts), each under a random name so no two tests share one."""

from __future__ import annotations

import uuid

import asyncpg


def database_url(server_url: str, name: str) -> str:
    """`server_url` (an embedded Postgres URL, ...@/postgres?host=...) naming database `name`."""
    head, _, query = server_url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


async def new_database(server_url: str, prefix: str = "t_") -> str:
    """A new, empty database on the server at `server_url`; its URL."""
    name = prefix + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(server_url, name)
