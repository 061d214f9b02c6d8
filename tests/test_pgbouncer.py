"""Postgres through a real PgBouncer in transaction pooling mode (`storage.pgbouncer: true`).

The bouncer pools at most two server connections, so statements of different clients (and of
one client's successive transactions) really share server connections: a named prepared
statement, a session advisory lock or a session temp table would break here.
Covered: migrations (two processes at once), the usage writer (events written once, a replay
stored once through the staging table), the `tollbooth usage summary` CLI, and the Stripe
meter sync against the fake Stripe (a second run sends nothing; a run while another holds
the lock is refused, and the lock is gone once that run ends).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway import keys
from storage.postgres import create_pool, migrate
from storage.stripe.client import StripeApi
from storage.stripe.sync import SYNC_LOCK_KEY, MeterSync, SyncBusyError, SyncPolicy
from storage.usage.event import UsageEvent
from storage.usage.writer import UsageWriter
from tests.fake_stripe import API_KEY, running_fake_stripe
from tests.harness import running_gateway
from tests.helpers.pgbouncer import PgBouncer, start_pgbouncer
from tests.usage_fixtures import make_event

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bouncer(postgres_url: str) -> Iterator[PgBouncer]:
    server = start_pgbouncer(postgres_url, pool_size=2)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bounced_url(fresh_database_url: str, bouncer: PgBouncer) -> str:
    """A fresh database, reached through the bouncer."""
    name = fresh_database_url.split("?")[0].rsplit("/", 1)[1]
    return bouncer.url(name)


@pytest.fixture
async def pool(bounced_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(bounced_url, min_size=4, max_size=8, pgbouncer=True)
    try:
        yield pool
    finally:
        await pool.close()


async def test_two_processes_migrate_at_once_through_the_bouncer(bounced_url: str) -> None:
    pools = [await create_pool(bounced_url, max_size=3, pgbouncer=True) for _ in range(2)]
    try:
        applied = await asyncio.gather(*(migrate(p) for p in pools))
        assert sorted(map(len, applied))[0] == 0 and sorted(map(len, applied))[1] > 0
        assert await migrate(pools[0]) == []
    finally:
        for p in pools:
            await p.close()


async def test_writer_stores_each_event_once_and_a_replay_changes_nothing(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await migrate(pool)
    start = datetime.now(UTC) - timedelta(hours=1)
    events = [make_event(start, input_tokens=i) for i in range(3000)]

    async def write(journal: Path, batch: list[UsageEvent]) -> UsageWriter:
        writer = UsageWriter(pool, journal_dir=journal, batch_size=200, flush_interval_s=0.02)
        await writer.start()
        for event in batch:
            await writer.submit(event)
        await writer.close()
        return writer

    # Two writers at once, sharing the bouncer's two server connections with each other.
    first, second = await asyncio.gather(
        write(tmp_path / "a", events[:1500]), write(tmp_path / "b", events[1500:])
    )
    assert first.written + second.written == 3000
    # The same events again (a replay after a lost acknowledgement): the staging table path.
    again = await write(tmp_path / "c", events[::7])
    assert again.dead_lettered == 0
    row = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, "
        "sum(input_tokens) AS input FROM usage_events"
    )
    assert row is not None
    assert (row["n"], row["ids"], row["input"]) == (3000, 3000, sum(range(3000)))


def test_usage_summary_cli_runs_through_the_bouncer(
    bounced_url: str, redis_url: str, tmp_path: Path
) -> None:
    async def seed() -> None:
        pool = await create_pool(bounced_url, pgbouncer=True)
        try:
            await migrate(pool)
            writer = UsageWriter(
                pool, journal_dir=tmp_path / "journal", batch_size=50, flush_interval_s=0.02
            )
            await writer.start()
            for i in range(1, 41):
                await writer.submit(
                    make_event(
                        datetime.now(UTC) - timedelta(hours=1), customer_id="acme", input_tokens=i
                    )
                )
            await writer.close()
        finally:
            await pool.close()

    asyncio.run(seed())
    (tmp_path / "config.yaml").write_text(
        "providers: {openai: {kind: openai, base_url: https://api.openai.com/v1}}\n"
        "storage: {pgbouncer: true}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")} | {
        "TOLLBOOTH_DATABASE_URL": bounced_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "usage",
            "summary",
            "--customer",
            "acme",
            "--format",
            "json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert "prepared statement" not in done.stderr
    assert json.dumps(summary).count("820") >= 1  # sum of input tokens 1..40


async def test_stripe_sync_sends_once_and_its_lock_ends_with_the_run(pool: asyncpg.Pool) -> None:
    await migrate(pool)
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    meters = {"input_tokens": "tollbooth_input_tokens", "requests": "tollbooth_requests"}
    async with running_fake_stripe() as fake:
        stripe_id = fake.add_customer("Acme")
        await pool.execute(
            "INSERT INTO customers (id, tier, stripe_customer_id) VALUES ('acme', 'free', $1)",
            stripe_id,
        )
        for hours_ago in (4, 3, 2):
            await pool.execute(
                "INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider,"
                " model, endpoint, status_code, streamed, input_tokens, output_tokens,"
                " cached_input_tokens, usage_source, cost_usd, price_usd, latency_ms) VALUES"
                " ($1, $2, 'acme', 'key_0000000000000000', 'free', 'openai', 'gpt-4o-mini',"
                " 'chat_completions', 200, false, 100, 20, 0, 'provider', 0.001, 0.001, 10)",
                uuid.uuid4(),
                hour - timedelta(hours=hours_ago, minutes=-5),
            )
        api = StripeApi(API_KEY, api_base=fake.url, timeout_s=2)
        policy = SyncPolicy(meters=meters, window_s=3600, settle_delay_s=900)  # type: ignore[arg-type]
        try:
            first = await MeterSync(pool, api, policy).run()
            assert first.ok and len(first.sent) == 6, first
            assert fake.totals() == {
                (stripe_id, "tollbooth_input_tokens"): 300,
                (stripe_id, "tollbooth_requests"): 3,
            }
            # A run holding the lock (through the bouncer) refuses a second one ...
            async with pool.acquire() as held, held.transaction():
                await held.execute("SELECT pg_advisory_xact_lock($1)", SYNC_LOCK_KEY)
                with pytest.raises(SyncBusyError):
                    await MeterSync(pool, api, policy).run()
            # ... and every run's lock ends with it, whichever server connection it used.
            for _ in range(3):
                again = await MeterSync(pool, api, policy).run()
                assert again.ok and again.sent == []
            assert len(fake.meter_event_posts) == 6
        finally:
            await api.close()


async def test_gateway_serves_and_meters_through_the_bouncer(
    bounced_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = {
        "pgbouncer": True,
        "writer_flush_interval_s": 0.05,
        "data_dir": tempfile.mkdtemp(prefix="tollbooth-gw-"),
    }
    async with running_gateway(
        bounced_url, redis_url, monkeypatch, extra_config={"storage": storage}
    ) as gw:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}

        async def one(session: aiohttp.ClientSession) -> int:
            async with session.post(
                f"{gw.openai_base_url}/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {gw.key}"},
            ) as reply:
                await reply.read()
                return reply.status

        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(*(one(session) for _ in range(30)))
        assert statuses == [200] * 30
        writer = gw.app[keys.writer]
        for _ in range(200):  # the writer flushes every 50 ms
            if writer.written >= 30:
                break
            await asyncio.sleep(0.05)
        count = await gw.app[keys.pool].fetchval(
            "SELECT count(*) FROM usage_events WHERE customer_id = $1", gw.customer_id
        )
        assert count == 30
        # The app's own pool, many statements at once over the bouncer's two connections.
        pool = gw.app[keys.pool]
        sums = await asyncio.gather(*(pool.fetchval("SELECT $1::int + 1", i) for i in range(300)))
        assert sums == [i + 1 for i in range(300)]
