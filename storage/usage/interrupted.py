"""Usage events for the exchanges a stopped gateway left in flight (storage.usage.journal_open).

When a journal adopts a dead process's slot, its open records are the exchanges that process
had sent upstream, each with the last provisional event it journaled. `already_recorded` asks
Postgres which of them have an event after all, in `usage_events` or refused into
`usage_dead_letters`: the exchange finished and its real event was journaled before the
process died. The writer asks only once every adopted segment is committed, so a real event
that was still in the journal is in Postgres by then: the real event always wins.
`interrupted_events` turns the others into events as their records hold them (input tokens,
the output of the last progress record, `usage_source = estimated`, the interruption in
`metadata`), priced by the `reprice` callable the gateway gives the writer (pricing belongs
to the gateway; storage never imports it).

Failure semantics: `already_recorded` raises what asyncpg raises (the writer retries with
backoff, keeping the records). `interrupted_events` never raises: a record that cannot be
read back as an event is logged at ERROR with its id and left out (the caller counts it as
lost); an event that `reprice` cannot price (no `reprice` given, an unpriced model, or
`reprice` raising) is kept with NULL money, logged at ERROR.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import asyncpg

from storage.usage.event import UsageEvent
from storage.usage.journal_format import event_from_line
from storage.usage.journal_open import OpenRecord

log = logging.getLogger("storage.usage.writer")

Reprice = Callable[[UsageEvent], UsageEvent]

_CHUNK = 10_000
_RECORDED = (
    "SELECT id FROM usage_events WHERE id = ANY($1::uuid[]) "
    "UNION SELECT event_id FROM usage_dead_letters WHERE event_id = ANY($1::uuid[])"
)


async def already_recorded(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `ids` Postgres has an event for (stored or dead-lettered)."""
    found: set[uuid.UUID] = set()
    for start in range(0, len(ids), _CHUNK):
        rows = await pool.fetch(_RECORDED, ids[start : start + _CHUNK])
        found.update(row[0] for row in rows)
    return found


def interrupted_events(
    records: list[OpenRecord], reprice: Reprice | None
) -> tuple[list[UsageEvent], int]:
    """The events of these records, priced when possible, and how many could not be read."""
    events: list[UsageEvent] = []
    unreadable = unpriced = 0
    for record in records:
        event = event_from_line(record.columns, record.line)
        if event is None:
            unreadable += 1
            log.error(
                "usage event %s LOST: the provisional record of this interrupted "
                "exchange cannot be read back",
                record.event_id,
            )
            continue
        if reprice is not None:
            try:
                event = reprice(event)
            except Exception:
                log.error(
                    "pricing the interrupted exchange %s failed; it is recorded without money",
                    event.id,
                    exc_info=True,
                )
        if event.price_usd is None:
            unpriced += 1
        events.append(event)
    if unpriced:
        reason = (
            "the writer was given no pricing"
            if reprice is None
            else "unpriced model or pricing error"
        )
        log.error("%d interrupted exchanges recorded with NULL money (%s)", unpriced, reason)
    return events, unreadable
