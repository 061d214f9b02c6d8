"""QuotaStore on a real 3-primary, 3-replica Redis Cluster (valkey-server, loopback).

Two stores, each with its own `RedisCluster` client (two gateway processes), admit 40
customers whose slots cover every primary, limit 5 requests a month each, 300 requests at
once: every customer is admitted exactly 5. The same holds while a replica takes over its
primary (`CLUSTER FAILOVER`), while a hot customer's slot is migrated to another primary
(MIGRATING / IMPORTING, keys moved with MIGRATE: ASK and TRYAGAIN replies, then MOVED),
and when a primary is killed (its replica promoted after the 1 s node timeout; what was
written before is kept).
A store call that fails during those seconds is retried with the same request id, as the
batcher's own resend does: the scripts' idempotency is what keeps the count exact.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from storage.quota.store import QuotaLimits, QuotaStore, QuotaStoreUnavailable
from tests.helpers.redis_topologies import Cluster, cli, two_stores, wait_until

pytestmark = pytest.mark.slow

LIMITS = QuotaLimits(requests_per_month=5)
CUSTOMERS = 40
REQUESTS = 300


@pytest.fixture
async def stores(cluster: Cluster) -> AsyncIterator[list[QuotaStore]]:
    async with two_stores(cluster.url) as made:
        yield made


def customers_on_every_primary(cluster: Cluster, client: RedisCluster) -> list[str]:
    prefix = uuid.uuid4().hex[:6]
    names = [f"{prefix}-c{i}" for i in range(CUSTOMERS)]
    owners = {cluster.slot_of(n) for n in names}
    assert len(owners) > 30  # many slots, hence every primary
    return names


async def admit_all(
    stores: list[QuotaStore], customers: list[str], *, spread_s: float = 0.0
) -> tuple[dict[str, int], int]:
    """REQUESTS admits over the customers, alternately on each store, launched over
    `spread_s`; a call that fails is sent again with its request id. Returns the admitted
    count per customer and how many calls failed and were resent."""
    admitted = dict.fromkeys(customers, 0)
    resent = 0

    async def one(i: int) -> None:
        nonlocal resent
        await asyncio.sleep(spread_s * i / REQUESTS)
        customer = customers[i % len(customers)]
        request_id = f"req-{i}"
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = await stores[i % 2].admit(
                    customer_id=customer,
                    request_id=request_id,
                    limits=LIMITS,
                    tokens=10,
                    spend_micros=0,
                    reservation_ttl_ms=60_000,
                )
                break
            except QuotaStoreUnavailable:
                resent += 1
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        if reply.admitted:
            admitted[customer] += 1

    await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    return admitted, resent


async def assert_exact(
    stores: list[QuotaStore], customers: list[str], admitted: dict[str, int]
) -> None:
    assert admitted == dict.fromkeys(customers, 5)
    for customer in customers:
        assert (await stores[1].usage(customer)).month_requests == 5


async def test_every_customer_on_every_primary_is_admitted_exactly_its_limit(
    cluster: Cluster, stores: list[QuotaStore]
) -> None:
    customers = customers_on_every_primary(cluster, stores[0]._redis)  # type: ignore[arg-type]
    admitted, resent = await admit_all(stores, customers)
    await assert_exact(stores, customers, admitted)
    assert resent == 0
    # Pipelined per primary: far fewer round trips than calls.
    batches = sum(s._scripts.batches for s in stores)
    assert batches < REQUESTS


async def test_a_replica_taking_over_under_load_keeps_quotas_exact(
    cluster: Cluster, stores: list[QuotaStore]
) -> None:
    customers = customers_on_every_primary(cluster, stores[0]._redis)  # type: ignore[arg-type]
    old = cluster.primaries()[0]
    replica = cluster.replica_of(old)

    async def failover() -> None:
        await asyncio.sleep(0.4)
        assert "OK" in await asyncio.to_thread(cli, replica, "CLUSTER", "FAILOVER")

    load = asyncio.create_task(admit_all(stores, customers, spread_s=2.0))
    await failover()
    admitted, _ = await load
    await asyncio.to_thread(
        wait_until, lambda: cluster.role(replica) == "master", 10, "the replica's promotion"
    )
    await assert_exact(stores, customers, admitted)
    assert sum(s._scripts.rerouted for s in stores) > 0  # type: ignore[union-attr]  # MOVED


async def test_migrating_a_hot_customers_slot_under_load_keeps_quotas_exact(
    cluster: Cluster, stores: list[QuotaStore]
) -> None:
    customers = customers_on_every_primary(cluster, stores[0]._redis)  # type: ignore[arg-type]
    hot = customers[0]
    slot = str(cluster.slot_of(hot))
    ids = {port: cli(port, "CLUSTER", "MYID").strip() for port in cluster.primaries()}
    source = next(p for p in ids if cluster.owns(p, int(slot)))
    target = next(p for p in ids if p != source)
    # The hot customer gets many more requests than the others.
    hot_customers = [hot] * 20 + customers[1:]

    async def migrate() -> None:
        await asyncio.sleep(0.3)
        run = asyncio.to_thread
        await run(cli, target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        await run(cli, source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        await asyncio.sleep(0.3)  # admits now meet a migrating slot
        keys = (await run(cli, source, "CLUSTER", "GETKEYSINSLOT", slot, "1000")).split()
        if keys:
            await run(
                cli, source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys
            )
        await asyncio.sleep(0.3)
        for port in cluster.ports:
            await run(cli, port, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])

    load = asyncio.create_task(admit_all(stores, hot_customers, spread_s=2.0))
    await migrate()
    admitted, _ = await load
    assert cluster.owns(target, int(slot))
    # The hot customer's calls met the migration (ASK, TRYAGAIN, MOVED) and were sent again.
    assert sum(s._scripts.rerouted for s in stores) > 0  # type: ignore[union-attr]
    unique = sorted(set(hot_customers))
    assert {c: admitted[c] for c in unique} == dict.fromkeys(unique, 5)
    for customer in unique:
        assert (await stores[0].usage(customer)).month_requests == 5


async def test_a_killed_primary_is_replaced_and_its_quota_state_is_kept(
    cluster: Cluster, stores: list[QuotaStore]
) -> None:
    customers = customers_on_every_primary(cluster, stores[0]._redis)  # type: ignore[arg-type]
    victim = cluster.primaries()[1]
    replica = cluster.replica_of(victim)
    on_victim = [c for c in customers if cluster.owns(victim, cluster.slot_of(c))]
    assert on_victim and len(on_victim) < len(customers)
    # Written before the failover: kept by the replica that takes over.
    kept = on_victim[0]
    for i in range(5):
        reply = await stores[0].admit(
            customer_id=kept,
            request_id=f"pre-{i}",
            limits=LIMITS,
            tokens=1,
            spend_micros=0,
            reservation_ttl_ms=60_000,
        )
        assert reply.admitted
    others = [c for c in customers if c != kept]

    load = asyncio.create_task(admit_all(stores, others, spread_s=3.0))
    await asyncio.sleep(0.5)
    killed_at = time.monotonic()
    cluster.kill(victim)
    admitted, resent = await load
    await asyncio.to_thread(
        wait_until, lambda: cluster.role(replica) == "master", 15, "the replica's promotion"
    )
    assert resent > 0  # the failover seconds were felt, and bounded:
    assert time.monotonic() - killed_at < 30
    assert (await stores[1].usage(kept)).month_requests == 5
    assert not (
        await stores[1].admit(
            customer_id=kept,
            request_id="after",
            limits=LIMITS,
            tokens=1,
            spend_micros=0,
            reservation_ttl_ms=60_000,
        )
    ).admitted
    await assert_exact(stores, others, admitted)
