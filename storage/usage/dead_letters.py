"""Usage events PostgreSQL refused for what they hold, kept in `usage_dead_letters`.

The writer isolates a refused row from its batch (storage.usage.writer) and `record`s it here
with the error, the exact journal line (`journal_line`, bytea) and the event as a JSON object
(`event`, jsonb; NULL when PostgreSQL cannot hold the line as jsonb, e.g. a NUL character).
Recording is idempotent on `event_id`: a replayed journal line that fails again keeps its
first record.

`replay_dead_letters` retries them, oldest first, one transaction per row: the row's `event`
goes through `jsonb_populate_record(NULL::usage_events, event)` into `usage_events`
(`ON CONFLICT DO NOTHING`, so an event already there is not doubled) and the dead letter is
deleted in the same transaction. A row PostgreSQL still refuses stays, with `attempts + 1`,
`last_failed_at = now()` and the new error. A row whose `event` is NULL cannot be retried
until an operator writes a corrected `event` (UPDATE usage_dead_letters SET event = ...);
it counts as still failing. `dry_run` does each insert inside a transaction that is rolled
back and changes nothing. A connection failure raises (asyncpg's or the OS's error) and leaves
the rows not yet tried as they were; every row already handled is committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from storage.usage.event import UsageEvent
from storage.usage.journal_format import decode_line, line_event_id

_COLUMN_LIST = ", ".join(UsageEvent.COLUMNS)
_INSERT = (
    "INSERT INTO usage_dead_letters (event_id, event, journal_line, error) "
    "VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING"
)
_REPLAY_ONE = (
    f"INSERT INTO usage_events ({_COLUMN_LIST}) "
    f"SELECT {_COLUMN_LIST} FROM jsonb_populate_record(NULL::usage_events, $1::jsonb) "
    "ON CONFLICT DO NOTHING"
)
# SQLSTATE classes that say "the server is not available", not "this row is wrong":
# connection exception, insufficient resources, operator intervention (shutdown).
_OUTAGE_CLASSES = ("08", "53", "57")
# Classes (and one code) that are about the row itself: data exception, integrity
# constraint violation, and "index row size exceeds maximum".
_ROW_ERROR_CLASSES = ("22", "23")
_ROW_ERROR_CODES = ("54000",)
_NO_EVENT = (
    "event is NULL: the journal line cannot be stored as jsonb; write a corrected event "
    "into usage_dead_letters.event to replay it"
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    event_id: uuid.UUID
    event: dict[str, Any] | None
    journal_line: bytes
    error: str

    @classmethod
    def from_line(cls, columns: tuple[str, ...], line: bytes, error: str) -> DeadLetter:
        return cls(line_event_id(columns, line), decode_line(columns, line), line, error)


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    event_id: uuid.UUID
    written: bool  # with dry_run: would be written
    attempts: int  # after this replay
    error: str | None
    first_failed_at: datetime


def is_row_error(exc: BaseException) -> bool:
    """True when PostgreSQL refused a write for what a row holds (so bisecting finds it)."""
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    state = exc.sqlstate or ""
    return state[:2] in _ROW_ERROR_CLASSES or state in _ROW_ERROR_CODES


def describe(exc: BaseException) -> str:
    """The error as stored in `usage_dead_letters.error`: SQLSTATE, message, column, detail."""
    if not isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}: {exc}"
    message = exc.args[0] if exc.args else str(exc)  # str(exc) repeats the DETAIL line
    text = f"{exc.sqlstate}: {message}"
    column = getattr(exc, "column_name", None)
    if column:
        text += f" (column {column})"
    detail = getattr(exc, "detail", None)
    if detail:
        text += f"; {detail}"
    context = getattr(exc, "context", None)
    if context and "COPY" in context:
        text += f"; {context}"
    return text


async def record(pool: asyncpg.Pool, letters: Sequence[DeadLetter]) -> None:
    """Store `letters` (idempotent on event_id). Raises what asyncpg raises."""
    if letters:
        await pool.executemany(
            _INSERT, [(d.event_id, d.event, d.journal_line, d.error) for d in letters]
        )


class _RollBack(Exception):
    """Raised inside a dry run's transaction to undo it."""


async def replay_dead_letters(
    pool: asyncpg.Pool, *, limit: int | None = None, dry_run: bool = False
) -> list[ReplayOutcome]:
    """Retry up to `limit` dead letters, oldest first; see the module doc."""
    rows = await pool.fetch(
        "SELECT event_id, event, attempts, first_failed_at FROM usage_dead_letters "
        "ORDER BY first_failed_at, event_id LIMIT $1",
        limit,
    )
    outcomes = []
    async with pool.acquire() as conn:
        for row in rows:
            outcomes.append(await _replay_one(conn, row, dry_run))
    return outcomes


async def _replay_one(
    conn: asyncpg.Connection, row: asyncpg.Record, dry_run: bool
) -> ReplayOutcome:
    event_id: uuid.UUID = row["event_id"]
    attempts: int = row["attempts"]
    error: str | None = None
    if row["event"] is None:
        error = _NO_EVENT
    else:
        try:
            async with conn.transaction():
                await conn.execute(_REPLAY_ONE, row["event"])
                await conn.execute("DELETE FROM usage_dead_letters WHERE event_id = $1", event_id)
                if dry_run:
                    raise _RollBack
        except _RollBack:
            pass
        except asyncpg.PostgresError as exc:
            if (exc.sqlstate or "")[:2] in _OUTAGE_CLASSES:
                raise
            error = describe(exc)
    if error is None:
        return ReplayOutcome(event_id, True, attempts, None, row["first_failed_at"])
    if not dry_run:
        attempts = await conn.fetchval(
            "UPDATE usage_dead_letters SET attempts = attempts + 1, last_failed_at = now(), "
            "error = $2 WHERE event_id = $1 RETURNING attempts",
            event_id,
            error,
        )
    return ReplayOutcome(event_id, False, attempts, error, row["first_failed_at"])
