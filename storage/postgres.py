"""The Postgres connection pool and the schema migrations every process applies at start.

`create_pool(url)` opens an asyncpg pool whose connections encode and decode `jsonb` as
Python dicts and lists (orjson; binary format, so the codec also works with binary COPY, which
the usage writer uses). A Decimal inside a metadata dict is stored as its exact string.

`migrate(pool)` applies storage/schema/NNN_*.sql in name order, each file once, and records it
in `schema_migrations`. Everything runs in one transaction that first takes a transaction-level
advisory lock, so two processes migrating at once serialize: the second waits, then finds
nothing left to do. A failing migration rolls back the whole run and raises `MigrationError`
naming the file. An applied file whose bytes changed since is reported with a warning, never
re-applied; a change to the schema is a new numbered file.

Through PgBouncer in transaction pooling mode (`create_pool(url, pgbouncer=True)`) nothing
here needs a session: the migration lock is transaction-level and the whole run is one
transaction, so migrations run through the bouncer like everything else.

Connection failures are not translated here: `create_pool` and `migrate` raise asyncpg's or
the OS's errors unchanged, for the caller (the CLI or the app's startup) to report.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

import asyncpg
import orjson

log = logging.getLogger(__name__)

# Arbitrary but fixed: the advisory lock key every Tollbooth process migrates under.
MIGRATION_LOCK_KEY = 0x7B_0071_2024

# jsonb's binary wire format is a version byte (1) followed by the JSON text.
_JSONB_VERSION = b"\x01"


class MigrationError(Exception):
    """A schema file could not be applied; the database is left as it was before the run."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # the file name without ".sql", e.g. "001_init"
    sql: str
    checksum: str  # sha256 hex of the file's bytes


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + orjson.dumps(value, default=_json_default)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, pgbouncer: bool = False
) -> asyncpg.Pool:
    """An asyncpg pool on `url` whose connections map jsonb to dicts.

    `pgbouncer`: `url` is a PgBouncer in transaction (or statement) pooling mode, where a
    named prepared statement made in one transaction is gone in the next (another server
    connection): asyncpg's statement cache is turned off, so every statement is an unnamed
    one, parsed and run within one exchange."""
    extra: dict[str, Any] = {"statement_cache_size": 0} if pgbouncer else {}
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection, **extra
    )
    return pool


def load_migrations() -> list[Migration]:
    """The schema files shipped in storage/schema, in the order they apply."""
    folder = resources.files("storage").joinpath("schema")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            raw = entry.read_bytes()
            found.append(
                Migration(
                    version=entry.name.removesuffix(".sql"),
                    sql=raw.decode("utf-8"),
                    checksum=hashlib.sha256(raw).hexdigest(),
                )
            )
    return sorted(found, key=lambda m: m.version)


_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply every schema file not applied yet; return the versions applied by this call."""
    migrations = load_migrations()
    applied_now: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_MIGRATIONS_TABLE)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {row["version"]: row["checksum"] for row in rows}
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    log.warning(
                        "schema file %s.sql changed after it was applied; the change is "
                        "ignored (add a new numbered file instead)",
                        migration.version,
                    )
                continue
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"schema file {migration.version}.sql failed: {exc}") from exc
            await conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                migration.version,
                migration.checksum,
            )
            applied_now.append(migration.version)
    if applied_now:
        log.info("applied schema migrations: %s", ", ".join(applied_now))
    return applied_now
