"""UsageWriter against a real Postgres: exactly once, idempotent replays, dropped
connections, a stalled database that never slows `submit`, the journal replayed by the next
writer, one journal per database, and the disk-budget policies."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from storage.postgres import create_pool, migrate
from storage.usage.event import UsageEvent
from storage.usage.writer import JournalFullError, UsageWriter
from tests.helpers.numbered_events import numbered_event


async def test_ten_thousand_events_are_written_exactly_once(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    writer = UsageWriter(pool, journal_dir=tmp_path, batch_size=500, flush_interval_s=0.05)
    await writer.start()
    events = [numbered_event(i) for i in range(10_000)]
    for event in events:
        await writer.submit(event)
    await writer.close()

    assert writer.written == 10_000
    assert writer.backlog == 0
    row = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(input_tokens) AS input,"
        " sum(price_usd) AS price FROM usage_events"
    )
    assert row is not None
    assert (row["n"], row["ids"]) == (10_000, 10_000)
    assert row["input"] == sum(range(10_000))
    assert row["price"] == sum((e.price_usd or Decimal(0) for e in events), Decimal(0))
    stored = await pool.fetchrow("SELECT * FROM usage_events WHERE id = $1", events[4321].id)
    assert stored is not None
    assert dict(stored) == {c: getattr(events[4321], c) for c in UsageEvent.COLUMNS}


async def test_a_replayed_batch_is_not_doubled(pool: asyncpg.Pool, tmp_path: Path) -> None:
    events = [numbered_event(i) for i in range(300)]
    writer = UsageWriter(pool, journal_dir=tmp_path, batch_size=100)
    await writer.start()
    for event in events:
        await writer.submit(event)
    await writer.close()
    # The same events again, through another writer (a restart replaying what it held).
    replay = UsageWriter(pool, journal_dir=tmp_path, batch_size=64)
    await replay.start()
    for event in [*events[:150], *events]:
        await replay.submit(event)
    await replay.close()

    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 300


async def test_close_drains_the_journal_without_waiting_for_the_interval(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    writer = UsageWriter(pool, journal_dir=tmp_path, batch_size=10_000, flush_interval_s=30)
    await writer.start()
    for i in range(250):
        await writer.submit(numbered_event(i))
    assert writer.backlog == 250
    started = time.monotonic()
    await writer.close()
    assert time.monotonic() - started < 10
    assert writer.backlog == 0
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 250
    with pytest.raises(RuntimeError, match="not running"):
        await writer.submit(numbered_event(1))


async def test_connection_killed_mid_batch_loses_nothing(
    pool: asyncpg.Pool,
    fresh_database_url: str,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # Make every batch's INSERT take a while, so terminating backends hits writes in flight.
    await pool.execute(
        """
        CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$;
        CREATE TRIGGER slow_batches AFTER INSERT ON usage_events
        FOR EACH STATEMENT EXECUTE FUNCTION slow_down();
        """
    )
    admin = await asyncpg.connect(fresh_database_url)
    writer = UsageWriter(
        pool, journal_dir=tmp_path, batch_size=100, flush_interval_s=0.01, retry_max_s=0.4
    )
    terminated = 0

    async def kill_backends() -> None:
        nonlocal terminated
        for _ in range(15):
            await asyncio.sleep(0.07)
            terminated += await admin.fetchval(
                """
                SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                """
            )

    with caplog.at_level(logging.WARNING, logger="storage.usage.writer"):
        await writer.start()
        killer = asyncio.create_task(kill_backends())
        for i in range(2_000):
            await writer.submit(numbered_event(i))
            if i % 100 == 0:
                await asyncio.sleep(0.03)
        await killer
        await writer.close()
    await admin.close()

    assert terminated > 0
    failures = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert failures, "no write was interrupted; the test proved nothing"
    assert all(r.levelno == logging.WARNING for r in failures)
    row = await pool.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM usage_events")
    assert row is not None
    assert (row["n"], row["ids"]) == (2_000, 2_000)
    assert writer.written == 2_000


async def test_a_refused_batch_is_kept_and_retried_loudly(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Postgres refuses every insert until the operator "fixes" it (creates the allow table).
    await pool.execute(
        """
        CREATE FUNCTION refuse_until_allowed() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN
             IF to_regclass('allow_inserts') IS NULL THEN RAISE EXCEPTION 'not yet'; END IF;
             RETURN NULL;
           END $$;
        CREATE TRIGGER refuse AFTER INSERT ON usage_events
        FOR EACH STATEMENT EXECUTE FUNCTION refuse_until_allowed();
        """
    )
    writer = UsageWriter(
        pool, journal_dir=tmp_path, batch_size=10, flush_interval_s=0.01, retry_max_s=0.2
    )
    with caplog.at_level(logging.WARNING, logger="storage.usage.writer"):
        await writer.start()
        for i in range(25):
            await writer.submit(numbered_event(i))
        for _ in range(100):
            if any(r.levelno == logging.ERROR for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        assert writer.written == 0
        assert writer.backlog == 25
        await pool.execute("CREATE TABLE allow_inserts ()")
        await writer.close()
    assert any(
        r.levelno == logging.ERROR and "not yet" in (r.exc_text or "") for r in caplog.records
    )
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 25
    assert await pool.fetchval("SELECT count(*) FROM usage_dead_letters") == 0


STALL_WRITES = """
    CREATE FUNCTION refuse_until_allowed() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN
         IF to_regclass('allow_inserts') IS NULL THEN RAISE EXCEPTION 'stalled'; END IF;
         RETURN NULL;
       END $$;
    CREATE TRIGGER refuse AFTER INSERT ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_until_allowed();
"""


async def wait_drained(writer: UsageWriter, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while True:  # the backlog is a counter, not something to await
            if not writer.backlog:
                return
            await asyncio.sleep(0.02)


def journal_segments(journal_dir: Path) -> list[Path]:
    return sorted(journal_dir.glob("*/*/*.seg"))


async def test_submit_before_start_is_refused(pool: asyncpg.Pool, tmp_path: Path) -> None:
    writer = UsageWriter(pool, journal_dir=tmp_path)
    with pytest.raises(RuntimeError, match="not running"):
        await writer.submit(numbered_event(1))


async def test_a_stalled_postgres_never_slows_submit(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await pool.execute(STALL_WRITES)
    writer = UsageWriter(
        pool, journal_dir=tmp_path, batch_size=500, flush_interval_s=0.01, retry_max_s=0.2
    )
    await writer.start()
    events = [numbered_event(i) for i in range(20_000)]

    async def submit_all() -> None:
        for event in events:
            await writer.submit(event)

    # If submit waited for Postgres in any way, this would never finish.
    await asyncio.wait_for(submit_all(), timeout=20)
    assert writer.backlog == 20_000
    assert writer.written == 0
    assert writer.journal_bytes > 20_000 * 100
    await pool.execute("CREATE TABLE allow_inserts ()")
    await wait_drained(writer)
    await writer.close()
    row = await pool.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM usage_events")
    assert row is not None
    assert (row["n"], row["ids"]) == (20_000, 20_000)


async def test_events_left_at_close_are_written_by_the_next_writer(
    pool: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await pool.execute(STALL_WRITES)
    first = UsageWriter(
        pool,
        journal_dir=tmp_path,
        batch_size=100,
        flush_interval_s=0.01,
        retry_max_s=0.1,
        close_timeout_s=0.5,
    )
    await first.start()
    events = [numbered_event(i) for i in range(1_000)]
    for event in events:
        await first.submit(event)
    late = numbered_event(1_000)
    with caplog.at_level(logging.WARNING, logger="storage"):
        closing = asyncio.create_task(first.close())
        await asyncio.sleep(0.1)
        await first.submit(late)  # an exchange finishing during shutdown: still journaled
        await closing
    events.append(late)
    assert first.backlog == 1_001
    assert any("stay in the journal" in r.getMessage() for r in caplog.records)
    assert journal_segments(tmp_path)

    await pool.execute("CREATE TABLE allow_inserts ()")
    second = UsageWriter(pool, journal_dir=tmp_path, batch_size=64)
    await second.start()
    assert second.backlog == 1_001  # replayed from the journal the first writer left
    await wait_drained(second)
    await second.close()
    stored = {r["id"] for r in await pool.fetch("SELECT id FROM usage_events")}
    assert stored == {e.id for e in events}
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 1_001
    assert not journal_segments(tmp_path)


async def test_each_database_has_its_own_journal(
    pool: asyncpg.Pool, postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await pool.execute(STALL_WRITES)
    stalled = UsageWriter(pool, journal_dir=tmp_path, close_timeout_s=0.2, retry_max_s=0.1)
    await stalled.start()
    for i in range(50):
        await stalled.submit(numbered_event(i))
    await stalled.close()

    other_db = "t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f'CREATE DATABASE "{other_db}"')
    await admin.close()
    other_url = postgres_url.replace("/postgres?", f"/{other_db}?")
    other_pool = await create_pool(other_url, max_size=2)  # another database, same dir
    try:
        await migrate(other_pool)
        before = await other_pool.fetchval("SELECT count(*) FROM usage_events")
        other = UsageWriter(other_pool, journal_dir=tmp_path)
        with caplog.at_level(logging.WARNING, logger="storage.usage.writer"):
            await other.start()
        assert other.backlog == 0
        await other.close()
        assert await other_pool.fetchval("SELECT count(*) FROM usage_events") == before
    finally:
        await other_pool.close()
    assert any("another database" in r.getMessage() for r in caplog.records)

    await pool.execute("CREATE TABLE allow_inserts ()")
    again = UsageWriter(pool, journal_dir=tmp_path)
    await again.start()
    await wait_drained(again)
    await again.close()
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 50


async def test_refuse_policy_raises_journal_full_past_the_budget(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await pool.execute(STALL_WRITES)
    writer = UsageWriter(
        pool,
        journal_dir=tmp_path,
        batch_size=50,
        flush_interval_s=0.01,
        retry_max_s=0.1,
        segment_bytes=20_000,
        max_bytes=100_000,
        full_policy="refuse",
    )
    await writer.start()
    writer.check_accepting()
    submitted = 0
    while not writer.journal_over_budget:
        await writer.submit(numbered_event(submitted))
        submitted += 1
    with pytest.raises(JournalFullError, match="over its budget"):
        writer.check_accepting()
    for i in range(100):  # admitted requests still record their events
        await writer.submit(numbered_event(submitted + i))
    submitted += 100
    await pool.execute("CREATE TABLE allow_inserts ()")
    await wait_drained(writer)
    writer.check_accepting()  # the backlog is gone, and with it the committed segments
    assert writer.journal_bytes < 100_000
    await writer.close()
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == submitted


async def test_serve_policy_keeps_accepting_and_alerts(
    pool: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await pool.execute(STALL_WRITES)
    writer = UsageWriter(
        pool, journal_dir=tmp_path, retry_max_s=0.1, max_bytes=50_000, full_policy="serve"
    )
    await writer.start()
    with caplog.at_level(logging.ERROR, logger="storage.usage.writer"):
        for i in range(2_000):
            await writer.submit(numbered_event(i))
            writer.check_accepting()
    assert writer.journal_over_budget
    alerts = [r for r in caplog.records if "over budget" in r.getMessage()]
    assert len(alerts) == 1  # once a minute, not once per event
    await pool.execute("CREATE TABLE allow_inserts ()")
    await wait_drained(writer)
    await writer.close()
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 2_000


async def test_awkward_values_survive_the_journal_exactly(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    event = numbered_event(
        42,
        customer_id="tab\there",
        project_id="new\nline\r\nand \\N backslash \\ end\\",
        user_id="ünïcödé ✓ 😀",
        model="\\t not a tab",
        upstream_request_id="\x01\x7f control",
        cost_usd=Decimal("1E-10"),
        price_usd=None,
        price_version=None,
        metadata={
            "quote": 'say "hi"\t\n',
            "back\\slash": ["\\", "\\N"],
            "n": None,
            "money": Decimal("0.10"),
            "nested": {"ü": [1, 2.5, True]},
        },
    )
    writer = UsageWriter(pool, journal_dir=tmp_path)
    await writer.start()
    await writer.submit(event)
    await writer.close()
    stored = await pool.fetchrow("SELECT * FROM usage_events WHERE id = $1", event.id)
    assert stored is not None
    expected = {c: getattr(event, c) for c in UsageEvent.COLUMNS}
    expected["metadata"] = {**event.metadata, "money": "0.10"}  # Decimal in jsonb: its string
    assert dict(stored) == expected
