from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from storage.postgres import create_pool, migrate
from storage.usage_event import UsageEvent
from storage.usage_writer import UsageWriter


def make_event(i: int, **changes: object) -> UsageEvent:
    event = UsageEvent(
        id=uuid.uuid4(),
        created_at=datetime.now(UTC),
        customer_id=f"cust_{i % 7}",
        project_id="proj" if i % 2 else None,
        user_id=None,
        key_id="key_0123456789abcdef",
        tier="pro",
        provider="openai",
        model="gpt-4o-mini",
        endpoint="/v1/chat/completions",
        status_code=200,
        streamed=bool(i % 3),
        input_tokens=i,
        output_tokens=2 * i,
        cached_input_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        usage_source="provider",
        cost_usd=Decimal("0.0000001234") * i,
        price_usd=Decimal("0.0000001500") * i,
        price_version="test-1",
        latency_ms=i % 1000,
        upstream_request_id=f"chatcmpl-{i}",
        metadata={"i": i},
    )
    return replace(event, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database_url, max_size=4)
    await migrate(pool)
    try:
        yield pool
    finally:
        await pool.close()


async def test_ten_thousand_events_are_written_exactly_once(pool: asyncpg.Pool) -> None:
    writer = UsageWriter(pool, batch_size=500, flush_interval_s=0.05)
    await writer.start()
    events = [make_event(i) for i in range(10_000)]
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


async def test_a_replayed_batch_is_not_doubled(pool: asyncpg.Pool) -> None:
    events = [make_event(i) for i in range(300)]
    writer = UsageWriter(pool, batch_size=100)
    await writer.start()
    for event in events:
        await writer.submit(event)
    await writer.close()
    # The same events again, through another writer (a restart replaying what it held).
    replay = UsageWriter(pool, batch_size=64)
    await replay.start()
    for event in [*events[:150], *events]:
        await replay.submit(event)
    await replay.close()

    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 300


async def test_close_drains_the_queue_without_waiting_for_the_interval(
    pool: asyncpg.Pool,
) -> None:
    writer = UsageWriter(pool, batch_size=10_000, flush_interval_s=30)
    await writer.start()
    for i in range(250):
        await writer.submit(make_event(i))
    assert writer.backlog == 250
    started = time.monotonic()
    await writer.close()
    assert time.monotonic() - started < 10
    assert writer.backlog == 0
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 250
    with pytest.raises(RuntimeError, match="closed"):
        await writer.submit(make_event(1))


async def test_a_full_queue_makes_submit_wait_instead_of_dropping(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    writer = UsageWriter(pool, batch_size=5, flush_interval_s=0.01, queue_max=3)
    blocked = asyncio.gather(*(writer.submit(make_event(i)) for i in range(5)))
    await asyncio.sleep(0.2)
    assert not blocked.done()  # nothing consumes yet: the producers wait, nothing is dropped
    with caplog.at_level(logging.WARNING, logger="storage.usage_writer"):
        await writer.start()
        await blocked
        for i in range(5, 200):
            await writer.submit(make_event(i))
        await writer.close()
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 200
    assert any("queue is full" in r.getMessage() for r in caplog.records)


async def test_connection_killed_mid_batch_loses_nothing(
    pool: asyncpg.Pool, fresh_database_url: str, caplog: pytest.LogCaptureFixture
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
    writer = UsageWriter(pool, batch_size=100, flush_interval_s=0.01, retry_max_s=0.4)
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

    with caplog.at_level(logging.WARNING, logger="storage.usage_writer"):
        await writer.start()
        killer = asyncio.create_task(kill_backends())
        for i in range(2_000):
            await writer.submit(make_event(i))
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
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
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
    writer = UsageWriter(pool, batch_size=10, flush_interval_s=0.01, retry_max_s=0.2)
    with caplog.at_level(logging.WARNING, logger="storage.usage_writer"):
        await writer.start()
        for i in range(25):
            await writer.submit(make_event(i))
        for _ in range(100):
            if any(r.levelno == logging.ERROR for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        assert writer.written == 0
        assert writer.backlog == 25
        await pool.execute("CREATE TABLE allow_inserts ()")
        await writer.close()
    assert any(r.levelno == logging.ERROR and "not yet" in (r.exc_text or "")
               for r in caplog.records)
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 25


async def test_close_writes_events_submitted_before_start(pool: asyncpg.Pool) -> None:
    writer = UsageWriter(pool)
    for i in range(3):
        await writer.submit(make_event(i))
    await writer.close()
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 3
