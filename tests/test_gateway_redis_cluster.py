"""Two gateway apps on one real Redis Cluster (3 primaries, 3 replicas; valkey-server).

- 40 customers whose slots cover every primary, limit 5 requests a month, 300 concurrent
  HTTP requests split over the two apps: each customer gets exactly five 200s, the rest 429.
- A primary is killed under steady traffic: during the failover seconds
  `quotas.on_redis_error` decides (`reject`: 503s, nothing admitted without quota; `allow`:
  served, counted in `redis_error_admissions`); within 5 s of the replica's promotion every
  request is served normally again, and the quota written before is kept.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import aiohttp
import pytest

from gateway import keys
from tests.harness import running_gateway
from tests.helpers.quota_traffic import TIERS, add_customers, post
from tests.helpers.redis_topologies import Cluster

pytestmark = pytest.mark.slow


async def test_two_gateways_admit_each_customer_exactly_its_limit(
    cluster: Cluster, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(
                running_gateway(fresh_database_url, cluster.url, monkeypatch, tiers=TIERS)
            )
            for _ in range(2)
        ]
        customers = await add_customers(gateways[0], 40, "free")
        slots = {cluster.slot_of(c) for c in customers}
        assert len(slots) > 30  # spread over the slots, hence every primary
        ids = list(customers)
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(
                *(post(session, gateways[i % 2], customers[ids[i % 40]]) for i in range(300))
            )
        per_customer = dict.fromkeys(ids, 0)
        for i, status in enumerate(statuses):
            assert status in (200, 429), status
            per_customer[ids[i % 40]] += status == 200
        assert per_customer == dict.fromkeys(ids, 5)
        assert sum(gw.app[keys.quotas].redis_error_admissions for gw in gateways) == 0


@pytest.mark.parametrize("policy", ["reject", "allow"])
async def test_a_killed_primary_the_policy_decides_the_seconds_then_normal_service(
    cluster: Cluster, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    async with AsyncExitStack() as stack:
        gw = await stack.enter_async_context(
            running_gateway(
                fresh_database_url,
                cluster.url,
                monkeypatch,
                tiers=TIERS,
                extra_config={"quotas": {"on_redis_error": policy}},
            )
        )
        victim = cluster.primaries()[0]
        replica = cluster.replica_of(victim)
        customers = await add_customers(gw, 30, "big")
        on_victim = [c for c in customers if cluster.owns(victim, cluster.slot_of(c))]
        assert on_victim
        key = customers[on_victim[0]]
        quotas = gw.app[keys.quotas]
        seen: list[tuple[float, int]] = []
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                assert await post(session, gw, key) == 200
            cluster.kill(victim)
            promoted_at: float | None = None
            while promoted_at is None or time.monotonic() < promoted_at + 6:
                seen.append((time.monotonic(), await post(session, gw, key)))
                if promoted_at is None and cluster.role(replica) == "master":
                    promoted_at = time.monotonic()
                await asyncio.sleep(0.05)
                assert len(seen) < 2000
        statuses = {s for _, s in seen}
        if policy == "reject":
            assert 503 in statuses and statuses <= {200, 503}
            assert quotas.redis_error_admissions == 0
        else:
            assert statuses == {200}
            assert quotas.redis_error_admissions > 0
        # Within 5 s of the promotion: every request served, with its quota.
        assert promoted_at is not None
        after = [s for t, s in seen if t > promoted_at + 5]
        assert after and set(after) == {200}
        errors_before = quotas.redis_error_admissions
        usage = await gw.app[keys.quotas]._store.usage(on_victim[0])  # type: ignore[attr-defined]
        assert usage.month_requests >= 5 + len(after)  # the 5 from before were kept
        assert quotas.redis_error_admissions == errors_before
