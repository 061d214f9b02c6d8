"""Customers and requests for the gateway tests that run quotas on multi-node Redis."""

from __future__ import annotations

import uuid

import aiohttp

from gateway import keys
from tests.harness import Gateway

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
TIERS = {
    "free": {"limits": {"requests_per_month": 5}},
    "big": {"limits": {"requests_per_month": 100_000}},
}


async def add_customers(gw: Gateway, count: int, tier: str) -> dict[str, str]:
    """`count` new customers of `tier`, with one key each: customer id -> key."""
    accounts = gw.app[keys.accounts]
    made = {}
    prefix = uuid.uuid4().hex[:6]
    for i in range(count):
        customer = f"cust_{prefix}_{i}"
        await accounts.create_customer(customer, tier=tier)
        _, key = await accounts.create_key(customer, project_id="web", user_id="u1", name="t")
        made[customer] = key
    return made


async def post(session: aiohttp.ClientSession, gw: Gateway, key: str) -> int:
    """One chat completion through `gw` with `key`; its HTTP status."""
    async with session.post(
        f"{gw.openai_base_url}/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {key}"},
    ) as reply:
        await reply.read()
        return reply.status
