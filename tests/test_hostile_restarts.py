"""Infrastructure restarted under a real `tollbooth serve`: Postgres, then Redis, each down a
few seconds under steady load; and the usage journal driven over its disk budget while
Postgres is down, under `storage.journal_full_policy: refuse`.

Proved against the real process, its private embedded Postgres and Valkey (started here: the
session's are shared by other tests) and a mock provider served in the test's loop (so what
reached the provider is counted exactly):
- every response a client saw complete has exactly one event afterwards (its x-request-id is
  the event id), none doubled, none for a refused request;
- under the default `quotas.on_redis_error: allow`, no request fails while either is down: a
  Redis outage admits without quota (counted in /metrics), and quotas enforce again once Redis
  is back; /health shows each outage and the recovery;
- with the journal over `journal_max_mb` and policy `refuse`, new requests get a 503 in the
  called API's shape before reaching the provider, and service resumes once Postgres is back.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway.mock_provider.app import MOCK_REQUESTS, MockOptions, create_mock_app
from storage.accounts import AccountStore
from storage.embedded.servers import (
    PostgresInstance,
    start_postgres,
    start_valkey,
    stop_postgres,
    stop_valkey,
)
from storage.postgres import create_pool
from tests.helpers.serve_process import (
    collect,
    free_port,
    serve_env,
    serve_popen,
    stored_ids,
    wait_healthy,
)

pytestmark = pytest.mark.slow

CONCURRENCY = 8
OUTAGE_S = 3.0
CAPPED_MONTHLY_REQUESTS = 3
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}


class Infra:
    """A private embedded Postgres and Valkey that a test may stop and start again."""

    def __init__(self, base: Path) -> None:
        self.pgdata = base / "pg"
        self.valkey_dir = base / "valkey"
        self.valkey_dir.mkdir()
        self.postgres: PostgresInstance = start_postgres(self.pgdata)
        self.valkey_port = free_port()
        self.valkey, port = start_valkey(self.valkey_dir, self.valkey_port)
        assert port == self.valkey_port

    @property
    def database_url(self) -> str:
        return self.postgres.url("postgres")

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.valkey_port}/0"

    def stop_postgres(self) -> None:
        stop_postgres(self.pgdata, self.postgres.proc)

    def start_postgres(self) -> None:
        self.postgres = start_postgres(self.pgdata)  # same data dir, same socket

    def stop_valkey(self) -> None:
        stop_valkey(self.valkey, self.valkey_port)

    def start_valkey(self) -> None:
        self.valkey, port = start_valkey(self.valkey_dir, self.valkey_port)
        assert port == self.valkey_port, "Valkey came back on another port"

    def close(self) -> None:
        stop_valkey(self.valkey, self.valkey_port)
        stop_postgres(self.pgdata, self.postgres.proc)


@pytest.fixture(scope="module")
def infra() -> Iterator[Infra]:
    # Not under pytest's tmp dir: pytest makes its root 0700 again at every session start,
    # and the Postgres server (its own system user under root) must traverse the path.
    base = Path(tempfile.mkdtemp(prefix="tollbooth-restarts-"))
    servers = Infra(base)
    try:
        yield servers
    finally:
        servers.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def mock() -> AsyncIterator[TestServer]:
    server = TestServer(create_mock_app(MockOptions(request_log_limit=None)), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@asynccontextmanager
async def serving(
    tmp_path: Path, infra: Infra, mock: TestServer, storage: dict[str, Any] | None = None
) -> AsyncIterator[str]:
    """`tollbooth serve` on the private servers; yields its base URL, stops it with SIGTERM
    and requires a clean exit."""
    mock_url = str(mock.make_url("")).rstrip("/")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1"},
                "storage": {
                    "data_dir": str(tmp_path / "data"),
                    "writer_flush_interval_s": 0.05,
                    **(storage or {}),
                },
                "providers": {
                    "openai": {
                        "kind": "openai",
                        "base_url": mock_url + "/v1",
                        "api_key_env": "MOCK_PROVIDER_KEY",
                    },
                    "anthropic": {
                        "kind": "anthropic",
                        "base_url": mock_url,
                        "api_key_env": "MOCK_PROVIDER_KEY",
                    },
                },
                "tiers": {
                    "open": {"limits": {}},
                    "capped": {"limits": {"requests_per_month": CAPPED_MONTHLY_REQUESTS}},
                },
                "pricing": {"markup_percent": "20"},
                "logging": {"requests": False},
            }
        )
    )
    env = serve_env(infra.database_url, infra.redis_url)
    port = free_port()
    serve = await asyncio.to_thread(serve_popen, config, port, env, "--workers", "1")
    lines: list[str] = []
    assert serve.stdout is not None
    threading.Thread(target=collect, args=(serve.stdout, lines), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_healthy(base, serve)
        yield base
    finally:
        serve.send_signal(signal.SIGTERM)
        await asyncio.to_thread(serve.wait, 60)
    assert serve.returncode == 0, "".join(lines[-40:])


async def customer_key(database_url: str, tier: str, **labels: str) -> tuple[str, str]:
    """A new customer on `tier` (serve has migrated the schema) and a key for it."""
    pool = await create_pool(database_url, max_size=1)
    try:
        accounts = AccountStore(pool)
        customer = "rs_" + uuid.uuid4().hex[:12]
        await accounts.create_customer(customer, tier=tier)
        _, key = await accounts.create_key(customer, **labels)
        return customer, key
    finally:
        await pool.close()


@dataclass(frozen=True)
class Reply:
    at: float  # time.monotonic() when the whole response was read
    status: int
    request_id: str
    body: dict[str, Any]


async def call(
    session: aiohttp.ClientSession, base: str, key: str, route: str = "/v1/chat/completions"
) -> Reply:
    payload = MESSAGE if route == "/v1/messages" else CHAT
    headers = {"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    async with session.post(base + route, json=payload, headers=headers) as response:
        raw = await response.read()
        return Reply(
            time.monotonic(), response.status, response.headers["x-request-id"], orjson.loads(raw)
        )


class Load:
    """CONCURRENCY clients sending back to back until `stop` is set."""

    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key
        self.replies: list[Reply] = []
        self.failures: Counter[str] = Counter()  # requests that got no response
        self.stop = asyncio.Event()

    async def run(self, *, until_status: int | None = None) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._client(session, until_status) for _ in range(CONCURRENCY)))

    async def _client(self, session: aiohttp.ClientSession, until_status: int | None) -> None:
        while not self.stop.is_set():
            try:
                reply = await call(session, self.base, self.key)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures[type(exc).__name__] += 1
                continue
            self.replies.append(reply)
            if reply.status == until_status:
                self.stop.set()

    def statuses(self) -> Counter[int]:
        return Counter(r.status for r in self.replies)

    def served_between(self, start: float, end: float) -> int:
        return sum(1 for r in self.replies if start <= r.at <= end and r.status == 200)

    def ids(self, status: int) -> list[str]:
        return [r.request_id for r in self.replies if r.status == status]


@dataclass(frozen=True)
class Health:
    at: float
    status: int
    body: dict[str, Any]


class HealthLog:
    """GET /health every 0.1 s until `stop` is set."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[Health] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while not self.stop.is_set():
                self.samples.append(await health(session, self.base))
                await asyncio.sleep(0.1)

    def between(self, start: float, end: float) -> list[Health]:
        return [h for h in self.samples if start <= h.at <= end]


async def health(session: aiohttp.ClientSession, base: str) -> Health:
    async with session.get(base + "/health") as response:
        return Health(time.monotonic(), response.status, await response.json())


async def wait_health(base: str, ready: Callable[[Health], bool], timeout_s: float = 30) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout_s):
        while True:
            if ready(await health(session, base)):
                return
            await asyncio.sleep(0.1)


async def admitted_without_quota(base: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('tollbooth_redis_errors_total{action="admitted_without_quota"}')
    )


async def outage(
    stop: Callable[[], None],
    start: Callable[[], None],
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> tuple[float, float]:
    """Stop a server, keep it down OUTAGE_S (running `meanwhile`), start it again; returns
    when it went down and when it was back."""
    await asyncio.to_thread(stop)
    down_at = time.monotonic()
    if meanwhile is not None:
        await meanwhile()
    await asyncio.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
    await asyncio.to_thread(start)
    return down_at, time.monotonic()


@pytest.mark.timeout(120)
async def test_postgres_then_redis_restart_under_load_lose_nothing_and_quotas_recover(
    infra: Infra, mock: TestServer, tmp_path: Path
) -> None:
    async with serving(tmp_path, infra, mock) as base:
        customer, key = await customer_key(infra.database_url, "open")
        capped, capped_key = await customer_key(infra.database_url, "capped")
        load, health_log = Load(base, key), HealthLog(base)
        running = [asyncio.create_task(load.run()), asyncio.create_task(health_log.run())]
        capped_replies: dict[str, list[Reply]] = {}
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(1.0)  # warm: the key is cached, events flow
            pg_down, pg_back = await outage(infra.stop_postgres, infra.start_postgres)
            await wait_health(base, lambda h: h.body["postgres"] == "ok")
            await asyncio.sleep(0.5)
            quota_skips_before = await admitted_without_quota(base)

            async def capped_calls_while_redis_is_down() -> None:
                capped_replies["down"] = [
                    await call(session, base, capped_key)
                    for _ in range(CAPPED_MONTHLY_REQUESTS + 2)
                ]

            redis_down, redis_back = await outage(
                infra.stop_valkey, infra.start_valkey, capped_calls_while_redis_is_down
            )
            await wait_health(base, lambda h: h.status == 200)
            quota_skips = await admitted_without_quota(base) - quota_skips_before
            capped_replies["back"] = [
                await call(session, base, capped_key) for _ in range(CAPPED_MONTHLY_REQUESTS + 2)
            ]
            await asyncio.sleep(0.5)
            load.stop.set()
            health_log.stop.set()
            await asyncio.gather(*running)
            await wait_health(base, lambda h: h.status == 200 and h.body["writer"]["backlog"] == 0)
        ids = await stored_ids(infra.database_url, customer)
        capped_ids = await stored_ids(infra.database_url, capped)

    # Counted until the restart began (once a server is up again requests speed up).
    served_pg = load.served_between(pg_down, pg_down + OUTAGE_S)
    served_redis = load.served_between(redis_down, redis_down + OUTAGE_S)
    print(
        f"\nPostgres down {pg_back - pg_down:.1f}s: {served_pg} requests served; Redis down "
        f"{redis_back - redis_down:.1f}s: {served_redis} served, {quota_skips:.0f} admitted "
        f"without quota; outcomes {dict(load.statuses())}, no response {dict(load.failures)}; "
        f"events {len(ids)}"
    )
    # No request failed, and each completed one has exactly one event.
    assert set(load.statuses()) == {200} and not load.failures, (load.statuses(), load.failures)
    assert served_pg > 50 and served_redis > 50
    assert len(ids) == len(set(ids)) == len(load.replies)
    assert set(ids) == set(load.ids(200))
    # Redis down: admitted without quota, counted; back: the monthly cap holds again.
    down, back = capped_replies["down"], capped_replies["back"]
    assert [r.status for r in down] == [200] * len(down)
    # Requests completed well inside the outage were admitted during it. (Not all those of
    # the whole outage: one admitted just before it may finish late, its settle retrying.)
    inside = load.served_between(redis_down + 2.0, redis_down + OUTAGE_S)
    assert quota_skips >= len(down) + inside, (quota_skips, inside)
    assert [r.status for r in back] == [200] * CAPPED_MONTHLY_REQUESTS + [429, 429]
    assert back[-1].body["error"]["code"] == "insufficient_quota"
    assert sorted(capped_ids) == sorted(r.request_id for r in down + back if r.status == 200)
    assert len(mock.app[MOCK_REQUESTS]) == len(load.replies) + len(capped_ids)
    # /health saw each outage (until the restart began), and the recovery.
    pg_samples = health_log.between(pg_down + 0.3, pg_down + OUTAGE_S)
    redis_samples = health_log.between(redis_down + 0.3, redis_down + OUTAGE_S)
    assert pg_samples and all(h.status == 503 and h.body["postgres"] != "ok" for h in pg_samples), (
        pg_samples
    )
    assert redis_samples and all(
        h.status == 503 and h.body["redis"] != "ok" for h in redis_samples
    ), redis_samples
    assert health_log.samples[-1].status == 200


@pytest.mark.timeout(120)
async def test_journal_over_budget_refuses_before_the_provider_until_postgres_is_back(
    infra: Infra, mock: TestServer, tmp_path: Path
) -> None:
    storage = {"journal_max_mb": 1, "journal_segment_mb": 1, "journal_full_policy": "refuse"}
    async with serving(tmp_path, infra, mock, storage) as base:
        # Long labels (stored on every event) fill the 1 MB budget in fewer requests.
        customer, key = await customer_key(
            infra.database_url, "open", project_id="p" * 128, user_id="u" * 128
        )
        async with aiohttp.ClientSession() as session:
            warm = await call(session, base, key)  # the key is cached before Postgres goes
            assert warm.status == 200
            await asyncio.to_thread(infra.stop_postgres)
            load = Load(base, key)
            await asyncio.wait_for(load.run(until_status=503), timeout=60)
            upstream = len(mock.app[MOCK_REQUESTS])
            routes = ("/v1/chat/completions", "/v1/messages") * 3
            refused = [await call(session, base, key, route) for route in routes]
            assert len(mock.app[MOCK_REQUESTS]) == upstream, "a refused request went upstream"
            full = await health(session, base)
            await asyncio.to_thread(infra.start_postgres)
            await wait_health(
                base,
                lambda h: (
                    h.status == 200
                    and h.body["writer"]["backlog"] == 0
                    and not h.body["writer"]["over_budget"]
                ),
            )
            after = [await call(session, base, key) for _ in range(5)]
            await wait_health(base, lambda h: h.body["writer"]["backlog"] == 0)
        ids = await stored_ids(infra.database_url, customer)

    served = [warm.request_id, *load.ids(200), *(r.request_id for r in after)]
    refused_ids = {*load.ids(503), *(r.request_id for r in refused)}
    print(
        f"\njournal over budget after {len(load.ids(200))} requests with Postgres down "
        f"({full.body['writer']['journal_bytes']} bytes); outcomes {dict(load.statuses())}; "
        f"events {len(ids)}"
    )
    assert set(load.statuses()) <= {200, 503} and not load.failures, load.statuses()
    assert full.status == 503 and full.body["writer"]["over_budget"], full.body
    for route, reply in zip(routes, refused, strict=True):
        assert reply.status == 503, reply
        if route == "/v1/messages":  # Anthropic's shape
            assert reply.body["type"] == "error", reply.body
            assert reply.body["error"]["type"] == "overloaded_error", reply.body
        else:
            assert reply.body["error"]["code"] == "service_unavailable", reply.body
        assert "journal" in reply.body["error"]["message"]
    assert [r.status for r in after] == [200] * 5
    assert len(ids) == len(set(ids))
    assert set(ids) == set(served)  # every served request once, no refused one
    assert not refused_ids & set(ids)
