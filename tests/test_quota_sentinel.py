"""QuotaStore behind Sentinel (valkey-server: one primary, one replica, three sentinels).

Two stores with their own clients (two gateway processes) on a `redis+sentinel://` URL admit
40 customers × limit 5 with 300 requests while `SENTINEL FAILOVER` promotes the replica:
the connections still on the old primary are dropped when it refuses (NOREPLICAS under
`min-replicas-to-write 1`, READONLY once demoted) and the calls go to the new primary;
every customer is admitted exactly 5, and what was written before the failover is kept.
A store call that fails during the failover seconds is retried with the same request id, as
the batcher's own resend does; the scripts' idempotency keeps the count exact.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from storage.quota.store import QuotaLimits, QuotaStore, QuotaStoreUnavailable
from tests.helpers.redis_topologies import SentinelSet, cli, two_stores, wait_until

pytestmark = pytest.mark.slow

LIMITS = QuotaLimits(requests_per_month=5)
CUSTOMERS = 40
REQUESTS = 300


@pytest.fixture
async def stores(sentinel: SentinelSet) -> AsyncIterator[list[QuotaStore]]:
    # Answered only once the replica holds each batch: the failover loses no admission.
    async with two_stores(sentinel.url, wait_replicas=1) as made:
        yield made


async def admit(store: QuotaStore, customer: str, request_id: str) -> bool:
    deadline = time.monotonic() + 30
    while True:
        try:
            reply = await store.admit(
                customer_id=customer,
                request_id=request_id,
                limits=LIMITS,
                tokens=10,
                spend_micros=0,
                reservation_ttl_ms=60_000,
            )
            return reply.admitted
        except QuotaStoreUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def test_a_sentinel_failover_under_load_keeps_quotas_exact(
    sentinel: SentinelSet, stores: list[QuotaStore]
) -> None:
    prefix = uuid.uuid4().hex[:6]
    customers = [f"{prefix}-c{i}" for i in range(CUSTOMERS)]
    kept = f"{prefix}-before"
    for i in range(5):
        assert await admit(stores[0], kept, f"pre-{i}")
    admitted = dict.fromkeys(customers, 0)

    async def one(i: int) -> None:
        await asyncio.sleep(3.0 * i / REQUESTS)
        customer = customers[i % CUSTOMERS]
        if await admit(stores[i % 2], customer, f"req-{i}"):
            admitted[customer] += 1

    load = asyncio.gather(*(one(i) for i in range(REQUESTS)))
    await asyncio.sleep(0.5)
    assert "OK" in await asyncio.to_thread(
        cli, sentinel.sentinels[0], "SENTINEL", "FAILOVER", "mymaster"
    )
    await load
    await asyncio.to_thread(
        wait_until,
        lambda: sentinel.current_primary() == sentinel.replica,
        15,
        "the replica's promotion",
    )
    assert admitted == dict.fromkeys(customers, 5)
    for customer in [*customers, kept]:
        assert (await stores[1].usage(customer)).month_requests == 5
    assert not await admit(stores[1], kept, "after")
    # Served by the new primary now.
    assert "role:master" in cli(sentinel.replica, "INFO", "replication")
