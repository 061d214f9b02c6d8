"""Seed data and a threaded gateway for the usage portal's tests.

`seed_portal` creates two customers (acme, beta) with keys, one of acme's projects and key
names being an XSS payload, and usage events with known numbers in a fixed past month
(October 2025, UTC) over several models and projects, an estimated row and an error row,
written the way the usage writer writes them. `raw_totals` sums rows straight from
`usage_events`, independently of the code under test.

`ThreadedGateway` runs `tests.harness.running_gateway` on an event loop in its own thread,
so a blocking client (Selenium) can talk to it; `run(coro)` executes a coroutine there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from gateway import keys
from storage.usage.event import UsageEvent
from tests.harness import Gateway, running_gateway
from tests.usage_fixtures import insert_events, make_event

T = TypeVar("T")

MONTH_START = datetime(2025, 10, 1, tzinfo=UTC)
MONTH_QUERY = {"period": "custom", "since": "2025-10-01", "until": "2025-10-31"}
XSS_PROJECT = "<img/src=x/onerror=alert(1)>"
XSS_NAME = "<img src=x onerror=alert(2)>"
BETA_MODEL = "beta-only-model-7"
BETA_PROJECT = "beta-secret-project"
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "o3-mini")

PORTAL_TIERS: dict[str, Any] = {
    "free": {"limits": {"requests_per_minute": 60}},
    "pro": {
        "limits": {
            "requests_per_minute": 600,
            "tokens_per_minute": 2_000_000,
            "requests_per_month": 10_000,
            "tokens_per_month": 50_000_000,
            "spend_per_month_usd": "250.00",
        },
        "plan": {
            "base_price_usd": "49",
            "included": {"tokens": 10_000_000},
            "overage": {"tokens": {"unit_price_usd": "0.000002"}},
        },
    },
}


def portal_config(**portal: Any) -> dict[str, Any]:
    return {"portal": {"login_attempts_per_minute": 1000, **portal}}


@dataclass
class Seed:
    acme_key: str  # no project: the whole customer
    acme_web_key: str  # project "web"
    beta_key: str
    key_ids: dict[str, str]  # label -> key id
    events: list[UsageEvent]


def _events(key_ids: dict[str, str]) -> list[UsageEvent]:
    rng = random.Random(20251001)
    found: list[UsageEvent] = []
    plans = [
        ("acme", "web", "web"),
        ("acme", "batch", "all"),
        ("acme", XSS_PROJECT, "xss"),
        ("beta", BETA_PROJECT, "beta"),
    ]
    for day in range(31):
        for customer, project, key in plans:
            for _ in range(rng.randint(1, 4)):
                at = MONTH_START + timedelta(days=day, seconds=rng.randint(0, 86_399))
                model = BETA_MODEL if customer == "beta" else rng.choice(MODELS)
                event = make_event(
                    at,
                    customer_id=customer,
                    project_id=project,
                    model=model,
                    input_tokens=rng.randint(200, 90_000),
                    output_tokens=rng.randint(20, 9000),
                    cached_input_tokens=rng.randint(0, 150),
                    reasoning_tokens=rng.randint(0, 90),
                    price_usd=Decimal(rng.randint(1, 9_000_000)) / 10**7,
                    cost_usd=Decimal(rng.randint(1, 5_000_000)) / 10**7,
                )
                found.append(
                    dataclasses.replace(event, key_id=key_ids[key], streamed=rng.random() < 0.5)
                )
    # Boundary rows: the first and last instants of the month, an estimate, an error.
    found.append(
        dataclasses.replace(
            make_event(
                MONTH_START,
                customer_id="acme",
                project_id="web",
                model="gpt-4o",
                usage_source="estimated",
                input_tokens=777,
                output_tokens=77,
                price_usd=Decimal("0.0000001"),
            ),
            key_id=key_ids["web"],
        )
    )
    found.append(
        dataclasses.replace(
            make_event(
                MONTH_START + timedelta(days=31) - timedelta(microseconds=1),
                customer_id="acme",
                project_id="web",
                model="gpt-4o-mini",
                status_code=500,
                input_tokens=5,
                output_tokens=0,
                price_usd=Decimal("0"),
            ),
            key_id=key_ids["web"],
        )
    )
    # Outside the month: never counted in it.
    found.append(
        dataclasses.replace(
            make_event(
                MONTH_START + timedelta(days=31),
                customer_id="acme",
                project_id="web",
                input_tokens=999_999,
                price_usd=Decimal("99"),
            ),
            key_id=key_ids["web"],
        )
    )
    return found


async def seed_portal(app: web.Application) -> Seed:
    accounts = app[keys.accounts]
    await accounts.create_customer(
        "acme", tier="pro", name="Acme Corp", stripe_customer_id="cus_ACMESECRET123"
    )
    await accounts.create_customer("beta", tier="pro", name="Beta LLC")
    web_key, acme_web_key = await accounts.create_key("acme", project_id="web", name="web backend")
    all_key, acme_key = await accounts.create_key("acme", name="ops")
    xss_key, _ = await accounts.create_key("acme", project_id=XSS_PROJECT, name=XSS_NAME)
    beta_key_row, beta_key = await accounts.create_key(
        "beta", project_id=BETA_PROJECT, name="beta key"
    )
    key_ids = {"web": web_key.id, "all": all_key.id, "xss": xss_key.id, "beta": beta_key_row.id}
    events = _events(key_ids)
    await insert_events(app[keys.pool], events)
    return Seed(acme_key, acme_web_key, beta_key, key_ids, events)


@asynccontextmanager
async def seeded_portal_gateway(
    database_url: str, redis_url: str, monkeypatch: Any, admin_token: str
) -> AsyncIterator[tuple[Gateway, Seed]]:
    """A gateway with the portal tiers, three sign-ins a minute and the admin API on, and the
    portal's customers, keys and events seeded."""
    monkeypatch.setenv("TOLLBOOTH_ADMIN_TOKEN", admin_token)
    async with running_gateway(
        database_url,
        redis_url,
        monkeypatch,
        tiers=PORTAL_TIERS,
        extra_config=portal_config(login_attempts_per_minute=3),
    ) as gw:
        yield gw, await seed_portal(gw.app)


_RAW = """
SELECT count(*) AS requests,
       coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(cached_input_tokens), 0)::bigint AS cached_input_tokens,
       coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens,
       coalesce(sum(price_usd), 0)::numeric AS price_usd
FROM usage_events
WHERE customer_id = $1 AND created_at >= $2 AND created_at < $3
  AND ($4::text IS NULL OR project_id = $4)
"""


async def raw_totals(
    pool: asyncpg.Pool,
    customer_id: str,
    project_id: str | None = None,
    since: datetime = MONTH_START,
    until: datetime = MONTH_START + timedelta(days=31),
) -> dict[str, Any]:
    row = await pool.fetchrow(_RAW, customer_id, since, until, project_id)
    assert row is not None
    return dict(row)


class _Env:
    """What `running_gateway` needs of pytest's monkeypatch, restoring at `undo`."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def setenv(self, name: str, value: str) -> None:
        self._saved.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def undo(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ThreadedGateway:
    def __init__(self, database_url: str, redis_url: str, **options: Any) -> None:
        self._args = (database_url, redis_url)
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._env = _Env()
        self._cm: Any = None
        self.gateway: Gateway | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    @property
    def app(self) -> web.Application:
        assert self.gateway is not None
        return self.gateway.app

    @property
    def base_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.base_url

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()

        async def start() -> Gateway:
            self._cm = running_gateway(*self._args, self._env, **self._options)
            gateway: Gateway = await self._cm.__aenter__()
            return gateway

        self.gateway = self.run(start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._cm.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._env.undo()
