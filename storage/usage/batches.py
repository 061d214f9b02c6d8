"""`BatchWriter`: one batch of journal lines into `usage_events`, idempotently, with the rows
PostgreSQL refuses isolated into `usage_dead_letters`.

A batch is lines of COPY text (storage.usage.journal_format) in the columns its segment declares.
It is written in one transaction, first as one `COPY usage_events FROM STDIN` (the fast path:
no per-row work in Python, no second pass in Postgres). If that COPY hits a unique violation
(some event of the batch is already stored: a retry after a lost commit acknowledgement, a
replay after a crash) the batch is written again through a temporary staging table:
`COPY` into it, then `INSERT INTO usage_events ... SELECT ... ON CONFLICT DO NOTHING` (no
conflict target: it holds for whatever unique key the table has, `id` or the partitioned
`(id, created_at)`; an event keeps its id and created_at on every retry). Writing a batch
twice stores it once.

`insert(columns, data)` is the same write returning how many rows it added and the refused
lines instead of recording them (`tollbooth usage import` reports those itself).

Failure semantics of `write(columns, data)`:
- PostgreSQL refuses the batch for what a row holds (`dead_letters.is_row_error`: SQLSTATE
  class 22 or 23): the batch is bisected, each good half committed on its own, until every
  refused line is alone; those are recorded in `usage_dead_letters` with their error and
  counted in the return value. No line is dropped.
- Anything else (a connection failure, a timeout, a missing table) is raised unchanged, for
  the caller to retry the whole batch: halves already committed are not doubled, dead letters
  already recorded are not recorded twice.
`is_connection_error(exc)` tells an outage (retry quietly) from a bug (retry loudly).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re

import asyncpg

from storage.usage import dead_letters
from storage.usage.dead_letters import DeadLetter

log = logging.getLogger("storage.usage.writer")

STAGING_TABLE = "usage_events_staging"

# ON COMMIT DROP: the staging table lives only inside the batch's transaction, so it works
# through PgBouncer in transaction pooling mode (where the next transaction of this client
# may run on another server connection). Only retried batches take this path.
_CREATE_STAGING = (
    f"CREATE TEMP TABLE {STAGING_TABLE} (LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DROP"
)

# Errors that mean "the database or the connection to it is not there right now".
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin shutdown, crash shutdown, cannot connect now
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed"
    # The pool failing to reset a connection the server just dropped ("another operation is
    # in progress"), possibly after the batch committed: the retry is idempotent.
    asyncpg.InternalClientError,
)


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised while handling, is a connection failure.

    The chain matters: an error raised while cleaning up after a dropped connection carries
    the drop as its context.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        # asyncpg's client-side DataError (a value it cannot encode) is an InterfaceError
        # too, and a ValueError: that one is a bug, not an outage.
        if isinstance(seen, _CONNECTION_ERRORS) and not isinstance(seen, ValueError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def database_key(pool: asyncpg.Pool) -> str:
    """`<database>@<system identifier>`: names the journal directory of this database, so
    one data dir used with two databases never replays one's events into the other."""
    try:
        row = await pool.fetchrow(
            "SELECT current_database() AS db, system_identifier::text AS cluster "
            "FROM pg_control_system()"
        )
    except asyncpg.PostgresError:  # no privilege, or a server without pg_control_system
        row = await pool.fetchrow("SELECT current_database() AS db, 'cluster' AS cluster")
    assert row is not None
    name = str(row["db"])
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
    if safe != name:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{safe}@{row['cluster']}"


class BatchWriter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def write(self, columns: tuple[str, ...], data: bytes) -> int:
        """Write the lines in `data`; return how many went to the dead-letter table."""
        _, refused = await self.insert(columns, data)
        if not refused:
            return 0
        letters = [
            DeadLetter.from_line(columns, line, dead_letters.describe(exc)) for line, exc in refused
        ]
        await dead_letters.record(self._pool, letters)
        for letter in letters:
            log.error(
                "usage event %s refused by Postgres, moved to usage_dead_letters: %s",
                letter.event_id,
                letter.error,
            )
        return len(letters)

    async def insert(
        self, columns: tuple[str, ...], data: bytes
    ) -> tuple[int, list[tuple[bytes, Exception]]]:
        """Write the lines in `data`, skipping events already stored; return how many rows
        were added and the lines PostgreSQL refused (with their errors), recorded nowhere."""
        try:
            return await self._copy_insert(columns, data), []
        except Exception as exc:
            if not dead_letters.is_row_error(exc):
                raise
            error = exc
        return await self._isolate(columns, data.split(b"\n")[:-1], error)

    async def _isolate(
        self, columns: tuple[str, ...], lines: list[bytes], error: Exception
    ) -> tuple[int, list[tuple[bytes, Exception]]]:
        """Bisect `lines` (which failed with `error`): commit the good halves, return how
        many rows they added and the refused lines with their errors."""
        if len(lines) == 1:
            return 0, [(lines[0], error)]
        middle = len(lines) // 2
        added, refused = 0, []
        for half in (lines[:middle], lines[middle:]):
            try:
                added += await self._copy_insert(columns, b"\n".join(half) + b"\n")
            except Exception as exc:
                if not dead_letters.is_row_error(exc):
                    raise
                more, isolated = await self._isolate(columns, half, exc)
                added += more
                refused += isolated
        return added, refused

    async def _copy_insert(self, columns: tuple[str, ...], data: bytes) -> int:
        # The common case, a batch of new events, is one COPY straight into usage_events. A
        # batch holding an event already stored (a retry after a lost acknowledgement, a
        # replay after a crash) fails that COPY with a unique violation and is written again
        # through the staging table, skipping what is there.
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                status = await conn.copy_to_table(
                    "usage_events", source=io.BytesIO(data), columns=columns, format="text"
                )
            return _row_count(status)
        except asyncpg.UniqueViolationError:
            pass
        column_list = ", ".join(columns)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_CREATE_STAGING)
            await conn.copy_to_table(
                STAGING_TABLE, source=io.BytesIO(data), columns=columns, format="text"
            )
            status = await conn.execute(
                f"INSERT INTO usage_events ({column_list}) SELECT {column_list} "
                f"FROM {STAGING_TABLE} ON CONFLICT DO NOTHING"
            )
        return _row_count(status)


def _row_count(status: str) -> int:
    """The row count at the end of a command tag: "COPY 500", "INSERT 0 12"."""
    return int(status.rsplit(" ", 1)[-1])
