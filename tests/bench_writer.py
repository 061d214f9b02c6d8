"""Benchmark (run by hand, not a test): the usage writer's sustained events/s into Postgres.

    python -m tests.bench_writer [--events N] [--batch-size B] [--parallel P] [--database-url URL]

Without --database-url (or TOLLBOOTH_DATABASE_URL) it starts a private embedded PostgreSQL in
a temporary directory. Each run uses a new database with the full schema (partitions and
rollup triggers included). Two measurements:

- live: a producer submits N events as fast as it can (yielding to the writer every 1000)
  while the writer runs; the clock stops when the last one is committed. Printed: the submit
  cost per event in CPU time (journal append included), and events/s end to end.
- replay: N events already in the journal (as after an outage or a crash) when the writer
  starts; the clock runs from start() until the last one is committed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from storage.embedded.servers import start_postgres, stop_postgres
from storage.postgres import create_pool, migrate
from storage.usage.batches import database_key
from storage.usage.journal import Journal
from storage.usage.journal_format import encode_event
from storage.usage.writer import UsageWriter
from tests.helpers.numbered_events import numbered_event


async def bench(url: str, events: int, batch_size: int, parallel: int) -> None:
    name = "bench_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    head, _, query = url.partition("?")
    pool = await create_pool(
        f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else ""), max_size=4
    )
    try:
        await migrate(pool)
        made = [numbered_event(i) for i in range(events)]
        with tempfile.TemporaryDirectory() as journal_dir:
            writer = UsageWriter(
                pool,
                journal_dir=Path(journal_dir),
                batch_size=batch_size,
                flush_interval_s=0.05,
                parallel_batches=parallel,
            )
            await writer.start()
            started = time.perf_counter()
            submitting = 0.0  # CPU time of this thread: what a request pays, not the wait
            for offset in range(0, events, 1000):
                t0 = time.thread_time()
                for event in made[offset : offset + 1000]:
                    writer.submit_nowait(event)
                submitting += time.thread_time() - t0
                await asyncio.sleep(0)
            await drained(writer)
            elapsed = time.perf_counter() - started
            await writer.close()
        print(
            f"live:   {events} events, batch_size {batch_size}, parallel {parallel}: "
            f"submit {submitting / events * 1e6:.1f} us/event (CPU), "
            f"{elapsed:.2f} s = {events / elapsed:,.0f} events/s"
        )

        await pool.execute("TRUNCATE usage_events")
        with tempfile.TemporaryDirectory() as journal_dir:
            journal = Journal.open(Path(journal_dir) / await database_key(pool))
            for event in made:
                journal.append(encode_event(event))
            journal.close()  # nothing committed: it all stays for the writer to replay
            writer = UsageWriter(
                pool,
                journal_dir=Path(journal_dir),
                batch_size=batch_size,
                parallel_batches=parallel,
            )
            started = time.perf_counter()
            await writer.start()
            await drained(writer)
            elapsed = time.perf_counter() - started
            await writer.close()
        print(
            f"replay: {events} events, batch_size {batch_size}, parallel {parallel}: "
            f"{elapsed:.2f} s = {events / elapsed:,.0f} events/s"
        )
        stored = await pool.fetchval("SELECT count(*) FROM usage_events")
        assert stored == events, (stored, events)
    finally:
        await pool.close()


async def drained(writer: UsageWriter) -> None:
    while True:  # the backlog is a counter, not something to await
        if not writer.backlog:
            return
        await asyncio.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--parallel", type=int, default=2, help="batches in flight")
    parser.add_argument("--database-url", default=os.environ.get("TOLLBOOTH_DATABASE_URL"))
    args = parser.parse_args()
    if args.database_url:
        asyncio.run(bench(args.database_url, args.events, args.batch_size, args.parallel))
        return
    with tempfile.TemporaryDirectory() as tmp:
        pgdata = Path(tmp) / "pg"
        instance = start_postgres(pgdata)
        try:
            asyncio.run(
                bench(instance.url("postgres"), args.events, args.batch_size, args.parallel)
            )
        finally:
            stop_postgres(pgdata, instance.proc)


if __name__ == "__main__":
    main()
