"""The system panel's reads: dead letters (count, oldest) and the Stripe sync's rows by
status for a period's windows, with when a run last recorded and sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from storage.reports.system_queries import dead_letter_state, stripe_sync_state

MONTH = datetime(2026, 3, 1, tzinfo=UTC)


async def _sync_row(
    pool: asyncpg.Pool,
    n: int,
    status: str,
    dimension: str,
    value: int,
    window: datetime,
    version: int = 1,
) -> None:
    await pool.execute(
        "INSERT INTO billing_sync (identifier, customer_id, stripe_customer_id, dimension, "
        "event_name, window_start, window_end, version, seq, value, status, sent_at) "
        "VALUES ($1, 'acme', 'cus_X', $2, 'ev', $3::timestamptz, "
        "$3::timestamptz + interval '1 hour', $4, 0, $5, $6, "
        "CASE WHEN $6 = 'sent' THEN $3::timestamptz + interval '2 hours' END)",
        f"id-{n}",
        dimension,
        window,
        version,
        value,
        status,
    )


async def test_dead_letters_and_stripe_sync_state(pool: asyncpg.Pool) -> None:
    assert (await dead_letter_state(pool)).count == 0
    first = MONTH + timedelta(days=2)
    await pool.execute(
        "INSERT INTO usage_dead_letters (event_id, journal_line, error, first_failed_at) VALUES "
        "(gen_random_uuid(), 'x', 'e', $1::timestamptz), (gen_random_uuid(), 'y', 'e', "
        "$1::timestamptz + interval '1 day')",
        first,
    )
    state = await dead_letter_state(pool)
    assert (state.count, state.oldest_failed_at) == (2, first)

    await _sync_row(pool, 1, "sent", "requests", 10, MONTH + timedelta(hours=1))
    await _sync_row(pool, 2, "sent", "input_tokens", 500, MONTH + timedelta(hours=1))
    await _sync_row(pool, 3, "pending", "requests", 3, MONTH + timedelta(hours=2))
    await _sync_row(pool, 4, "failed", "requests", 4, MONTH + timedelta(hours=3))
    await _sync_row(pool, 5, "sent", "requests", 99, MONTH - timedelta(hours=1))  # before
    await _sync_row(pool, 6, "sent", "requests", 77, MONTH + timedelta(hours=1), version=2)
    sync = await stripe_sync_state(pool, since=MONTH, until=MONTH + timedelta(days=31), version=1)
    assert sync.by_status["sent"].rows == 2
    assert sync.by_status["sent"].values == {"requests": 10, "input_tokens": 500}
    assert sync.by_status["pending"].values == {"requests": 3}
    assert sync.by_status["failed"].values == {"requests": 4}
    assert sync.by_status["skipped"].rows == 0
    assert sync.open_rows == 2
    assert set(sync.dimensions) == {"requests", "input_tokens"}
    assert sync.last_sent_at == MONTH + timedelta(hours=3)  # the newest of any version
