"""The quota guarantee across processes: `tollbooth serve --workers 2` (two OS processes on one
port, SO_REUSEPORT) against one Valkey, 200 concurrent requests against a limit of 50 per
minute. Exactly 50 are admitted, exactly 50 reach the provider, exactly 50 usage events are
written (after a SIGTERM drain), and every other request is a 429."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.alerts import sign
from tests.helpers.two_workers import burst, two_workers

pytestmark = pytest.mark.slow

LIMIT = 50
REQUESTS = 200


async def count_events(database_url: str, customer: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer
            )
        )
    finally:
        await conn.close()


async def test_two_workers_admit_exactly_the_limit(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    async with two_workers(
        tmp_path, fresh_database_url, redis_url, mock_provider, {"requests_per_minute": LIMIT}
    ) as gw:
        statuses = await burst(gw, REQUESTS)
        async with (
            aiohttp.ClientSession() as session,
            session.get(mock_provider + "/_mock/requests") as r,
        ):
            reached = len(await r.json())
    output = gw.output
    print(
        f"\nadmitted across 2 workers: {statuses[200]} of {REQUESTS} (limit {LIMIT}); "
        f"refused 429: {statuses[429]}; reached provider: {reached}"
    )
    assert statuses == {200: LIMIT, 429: REQUESTS - LIMIT}, output
    assert reached == LIMIT
    assert output.count("listening on") == 2, output  # two worker processes served
    assert await count_events(fresh_database_url, gw.customer) == LIMIT


async def test_an_alert_fires_once_per_threshold_across_two_workers(
    tmp_path: Path, fresh_database_url: str, redis_url: str, mock_provider: str
) -> None:
    received: list[tuple[bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers["X-Tollbooth-Signature"]))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    server = TestServer(receiver, host="127.0.0.1")
    await server.start_server()
    secret = "whsec-test-secret"
    alerts = {
        "alerts": {"webhook_url": str(server.make_url("/hook")), "thresholds_percent": [50, 100]}
    }
    try:
        async with two_workers(
            tmp_path,
            fresh_database_url,
            redis_url,
            mock_provider,
            {"requests_per_month": 10},
            extra=alerts,
            env_extra={"TOLLBOOTH_ALERT_SECRET": secret},
        ) as gw:
            statuses = await burst(gw, 30)
            await asyncio.sleep(1.0)  # deliveries run in the background
    finally:
        await server.close()
    assert statuses == {200: 10, 429: 20}
    alerts_seen = sorted(
        (orjson.loads(body)["limit"], orjson.loads(body)["threshold_percent"])
        for body, _ in received
    )
    assert alerts_seen == [("requests_per_month", 50), ("requests_per_month", 100)]
    for body, header in received:
        stamp = int(header.split(",")[0].removeprefix("t="))
        assert header == sign(secret, stamp, body)
        assert orjson.loads(body)["customer_id"] == gw.customer
