"""Two gateway apps behind Sentinel (valkey-server: 1 primary, 1 replica, 3 sentinels).

40 customers × limit 5 requests a month, 300 HTTP requests split over the two apps and
spread over 3 s, while `SENTINEL FAILOVER` promotes the replica; `on_redis_error: reject`,
and a client retries a 503 (a new request, as an SDK would). Every customer gets exactly
five 200s, nothing is admitted without quota, and requests are served by the new primary.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import aiohttp
import pytest

from gateway import keys
from tests.harness import running_gateway
from tests.helpers.quota_traffic import TIERS, add_customers, post
from tests.helpers.redis_topologies import SentinelSet, cli, wait_until

pytestmark = pytest.mark.slow


async def test_two_gateways_through_a_sentinel_failover_admit_exactly_the_limit(
    sentinel: SentinelSet, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(
                running_gateway(
                    fresh_database_url,
                    sentinel.url,
                    monkeypatch,
                    tiers=TIERS,
                    extra_config={"quotas": {"on_redis_error": "reject", "redis_wait_replicas": 1}},
                )
            )
            for _ in range(2)
        ]
        customers = await add_customers(gateways[0], 40, "free")
        ids = list(customers)
        unavailable = 0

        async def one(session: aiohttp.ClientSession, i: int) -> int:
            nonlocal unavailable
            await asyncio.sleep(3.0 * i / 300)
            while True:
                status = await post(session, gateways[i % 2], customers[ids[i % 40]])
                if status != 503:
                    return status
                unavailable += 1
                await asyncio.sleep(0.1)

        async with aiohttp.ClientSession() as session:
            load = asyncio.gather(*(one(session, i) for i in range(300)))
            await asyncio.sleep(0.5)
            assert "OK" in await asyncio.to_thread(
                cli, sentinel.sentinels[0], "SENTINEL", "FAILOVER", "mymaster"
            )
            statuses = await asyncio.wait_for(load, 60)
        await asyncio.to_thread(
            wait_until,
            lambda: sentinel.current_primary() == sentinel.replica,
            15,
            "the replica's promotion",
        )
        per_customer = dict.fromkeys(ids, 0)
        for i, status in enumerate(statuses):
            assert status in (200, 429), status
            per_customer[ids[i % 40]] += status == 200
        assert per_customer == dict.fromkeys(ids, 5)
        assert sum(gw.app[keys.quotas].redis_error_admissions for gw in gateways) == 0
