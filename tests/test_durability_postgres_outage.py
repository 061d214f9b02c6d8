"""Postgres stopped for 30 s under load: the gateway keeps serving (0 failed requests), events
pile up in the journal, and once Postgres is back every request's event is in usage_events,
once.

The test runs its own embedded PostgreSQL (the session's is shared by other tests), stops it
with `pg_ctl stop -m fast` and starts it again on the same data dir.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway import keys
from storage.embedded.servers import PostgresInstance, start_postgres, stop_postgres
from tests.harness import Gateway, running_gateway

pytestmark = pytest.mark.slow

OUTAGE_S = 30.0
CONCURRENCY = 8


class OwnPostgres:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.instance: PostgresInstance | None = None

    @property
    def url(self) -> str:
        assert self.instance is not None
        return self.instance.url("postgres")

    def start(self) -> None:
        self.instance = start_postgres(self.pgdata)

    def stop(self) -> None:
        if self.instance is not None:
            stop_postgres(self.pgdata, self.instance.proc)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    # Not under pytest's tmp dir: pytest makes its root 0700 again at every session start,
    # and the Postgres server (its own system user under root) must traverse the path.
    base = Path(tempfile.mkdtemp(prefix="tollbooth-outage-"))
    server = OwnPostgres(base / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


class Load:
    """Requests from CONCURRENCY clients until stopped: statuses and x-request-ids."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.statuses: Counter[int | str] = Counter()
        self.ids: list[str] = []
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._client(session) for _ in range(CONCURRENCY)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {self.gateway.key}"}
        while not self.stopped.is_set():
            try:
                async with session.post(
                    self.gateway.openai_base_url + "/chat/completions", json=body, headers=headers
                ) as response:
                    await response.read()
                    self.statuses[response.status] += 1
                    if response.status == 200:
                        self.ids.append(response.headers["x-request-id"])
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.statuses[type(exc).__name__] += 1
            await asyncio.sleep(0.005)


@pytest.fixture
async def gateway(
    own_postgres: OwnPostgres, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    storage = {"writer_flush_interval_s": 0.05, "data_dir": str(tmp_path / "data")}
    async with running_gateway(
        own_postgres.url, redis_url, monkeypatch, extra_config={"storage": storage}
    ) as gw:
        yield gw


@pytest.mark.timeout(240)
async def test_thirty_seconds_without_postgres_fail_no_request_and_lose_no_event(
    gateway: Gateway, own_postgres: OwnPostgres
) -> None:
    writer = gateway.app[keys.writer]
    load = Load(gateway)
    running = asyncio.create_task(load.run())
    await asyncio.sleep(2)  # warm: the key is cached, events flow to Postgres
    before_outage = sum(load.statuses.values())

    await asyncio.to_thread(own_postgres.stop)
    outage_started = time.monotonic()
    await asyncio.sleep(OUTAGE_S)
    served_during_outage = sum(load.statuses.values()) - before_outage
    backlog_at_peak = writer.backlog
    journal_bytes_at_peak = writer.journal_bytes
    await asyncio.to_thread(own_postgres.start)
    outage_s = time.monotonic() - outage_started

    await asyncio.sleep(2)
    load.stopped.set()
    await running
    async with asyncio.timeout(60):
        while True:  # the backlog is a counter, not something to await
            if not writer.backlog:
                break
            await asyncio.sleep(0.1)

    conn = await asyncpg.connect(own_postgres.url)
    try:
        rows = await conn.fetch(
            "SELECT id FROM usage_events WHERE customer_id = $1", gateway.customer_id
        )
    finally:
        await conn.close()
    stored = [str(r["id"]) for r in rows]
    print(
        f"\nPostgres down {outage_s:.1f}s: {served_during_outage} requests served meanwhile, "
        f"backlog peaked at {backlog_at_peak} events ({journal_bytes_at_peak} journal "
        f"bytes); outcomes {dict(load.statuses)}; events stored {len(stored)}"
    )
    assert set(load.statuses) == {200}, load.statuses  # 0 failed requests
    assert served_during_outage > 100
    assert backlog_at_peak > 100  # the events waited in the journal
    assert len(stored) == len(set(stored)) == len(load.ids)
    assert set(stored) == set(load.ids)
