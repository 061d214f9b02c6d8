"""What the portal benchmark times: each usage page, by its functions and over HTTP.

`time_views` starts the gateway app (`create_app`, a bench config with the seed's tiers) on a
loopback port in this process, signs in to the portal (a signed link for the busiest
customer) and to the dashboard (a random admin token, set for the run), then for each view
runs one warm-up and `runs` measured rounds. A round calls the view's functions (the ones its
route calls, with the app's own pool) and then GETs its page(s), reading `Server-Timing`
(summed when a view is two pages). Periods: last month (a whole calendar month, UTC) unless
the view says otherwise; the busiest customer is the seed's first (`cust-0001`).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml
from aiohttp import web

from gateway import keys
from gateway.app import create_app
from gateway.bench.portal_report import ViewTiming
from gateway.bench.portal_seed import customer_id
from gateway.config import parse_settings
from gateway.web import keys as web_keys
from gateway.web.dashboard_customers import customers_view
from gateway.web.dashboard_system import system_view
from gateway.web.periods import ViewPeriod, parse_period
from gateway.web.portal_links import issue_link
from gateway.web.portal_views import overview
from storage.reports.breakdown import events_page
from storage.reports.event_queries import EventCursor
from storage.reports.rollups import UsageFilter

ADMIN_TOKEN_ENV = "TOLLBOOTH_BENCH_ADMIN_TOKEN"
PORTAL_PAGE = 50
DRILL_EVENTS = 20
TIERS: dict[str, Any] = {
    "free": {
        "limits": {
            "requests_per_minute": 60,
            "requests_per_month": 50_000,
            "tokens_per_month": 100_000_000,
            "spend_per_month_usd": "100",
        }
    },
    "pro": {
        "limits": {
            "requests_per_minute": 600,
            "requests_per_month": 500_000,
            "tokens_per_month": 1_000_000_000,
            "spend_per_month_usd": "2000",
        }
    },
    "enterprise": {"limits": {"requests_per_minute": 6000, "spend_per_month_usd": "50000"}},
}


@dataclass
class _View:
    timing: ViewTiming
    call: Callable[[], Awaitable[object]]
    pages: list[str]  # paths with their query


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(workdir: Path) -> Any:
    raw = yaml.safe_dump(
        {
            "storage": {"data_dir": str(workdir / "gateway")},
            "tiers": TIERS,
            # Never called: the pages read what the seed wrote.
            "providers": {"none": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "admin": {"token_env": ADMIN_TOKEN_ENV},
            "logging": {"requests": False},
            "portal": {"login_attempts_per_minute": 1000},
        }
    )
    return parse_settings(raw.encode(), "bench-portal.yaml")


async def _deep_cursor(app: web.Application, customer: str, period: ViewPeriod) -> str:
    """A cursor half-way down the customer's events of the period (found once, untimed)."""
    pool = app[keys.pool]
    count = await pool.fetchval(
        "SELECT count(*) FROM usage_events WHERE customer_id = $1 AND created_at >= $2 "
        "AND created_at <= $3",
        customer,
        period.since,
        period.until,
    )
    row = await pool.fetchrow(
        "SELECT created_at, id FROM usage_events WHERE customer_id = $1 AND created_at >= $2 "
        "AND created_at <= $3 ORDER BY created_at DESC, id DESC OFFSET $4 LIMIT 1",
        customer,
        period.since,
        period.until,
        max(0, count // 2),
    )
    assert row is not None, "the busiest customer has no events last month"
    return EventCursor(row["created_at"], row["id"]).encode()


def _views(
    app: web.Application, customer: str, last: ViewPeriod, this: ViewPeriod, deep: str
) -> list[_View]:
    pool, tiers = app[keys.pool], app[keys.runtime].current.settings.tiers
    mine = UsageFilter(customer)

    def q(period: ViewPeriod, **extra: str) -> str:
        return urlencode({**period.query(), **extra})

    async def portal_month() -> None:
        await overview(app, customer, None, last)
        await events_page(
            pool, since=last.since, until=last.until, usage_filter=mine, limit=PORTAL_PAGE
        )

    async def drill_down() -> None:
        await overview(app, customer, None, last)
        await events_page(
            pool, since=last.since, until=last.until, usage_filter=mine, limit=DRILL_EVENTS
        )

    return [
        _View(
            ViewTiming("portal: month view (both pages)", f"{customer}, last month"),
            portal_month,
            [f"/portal?{q(last)}", f"/portal/events?{q(last)}"],
        ),
        _View(
            ViewTiming("portal: overview page", f"{customer}, last month"),
            lambda: overview(app, customer, None, last),
            [f"/portal?{q(last)}"],
        ),
        _View(
            ViewTiming("portal: events, first page", f"{customer}, last month"),
            lambda: events_page(
                pool, since=last.since, until=last.until, usage_filter=mine, limit=PORTAL_PAGE
            ),
            [f"/portal/events?{q(last)}"],
        ),
        _View(
            ViewTiming("portal: events, deep page (cursor)", f"{customer}, half-way"),
            lambda: events_page(
                pool,
                since=last.since,
                until=last.until,
                usage_filter=mine,
                limit=PORTAL_PAGE,
                cursor=deep,
            ),
            [f"/portal/events?{q(last, cursor=deep)}"],
        ),
        _View(
            ViewTiming("dashboard: all customers", "last month"),
            lambda: customers_view(pool, tiers, last),
            [f"/admin/dashboard?{q(last)}"],
        ),
        _View(
            ViewTiming("dashboard: all customers", "this month"),
            lambda: customers_view(pool, tiers, this),
            [f"/admin/dashboard?{q(this)}"],
        ),
        _View(
            ViewTiming("dashboard: system", "last month"),
            lambda: system_view(app, last),
            [f"/admin/dashboard/system?{q(last)}"],
        ),
        _View(
            ViewTiming("dashboard: customer drill-down", f"{customer}, last month"),
            drill_down,
            [f"/admin/dashboard/customers/{customer}?{q(last)}"],
        ),
    ]


async def _sign_in(
    client: aiohttp.ClientSession, app: web.Application, base: str, customer: str, admin_token: str
) -> None:
    token, _ = issue_link(
        app[web_keys.link_signer], customer, None, ttl=timedelta(hours=2), now=app[web_keys.clock]()
    )
    async with client.get(f"{base}/portal", params={"token": token}) as answer:
        answer.raise_for_status()
    async with client.get(f"{base}/admin/dashboard/login") as form:
        found = re.search(r'name="csrf" value="([^"]+)"', await form.text())
    assert found is not None
    async with client.post(
        f"{base}/admin/dashboard/login", data={"csrf": found.group(1), "token": admin_token}
    ) as answer:
        answer.raise_for_status()


async def _get(client: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(server ms from Server-Timing, client ms) of one GET, which must answer 200."""
    started = time.perf_counter()
    async with client.get(url, allow_redirects=False) as answer:
        await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"GET {url} answered {answer.status}")
        timing = answer.headers.get("Server-Timing", "")
    client_ms = (time.perf_counter() - started) * 1000
    found = re.search(r"dur=([0-9.]+)", timing)
    return (float(found.group(1)) if found else float("nan")), client_ms


async def time_views(
    database_url: str, redis_url: str, workdir: Path, *, runs: int
) -> list[ViewTiming]:
    admin_token = secrets.token_urlsafe(32)
    os.environ[ADMIN_TOKEN_ENV] = admin_token
    app = create_app(_settings(workdir), database_url=database_url, redis_url=redis_url)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        customer = customer_id(0)
        now = app[web_keys.clock]()
        last = parse_period({"period": "last_month"}, now)
        this = parse_period({"period": "this_month"}, now)
        views = _views(app, customer, last, this, await _deep_cursor(app, customer, last))
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            await _sign_in(client, app, base, customer, admin_token)
            for round_ in range(runs + 1):
                for view in views:
                    started = time.perf_counter()
                    await view.call()
                    call_ms = (time.perf_counter() - started) * 1000
                    server_ms = client_ms = 0.0
                    for page in view.pages:
                        server, spent = await _get(client, base + page)
                        server_ms += server
                        client_ms += spent
                    if round_ > 0:  # round 0 warms caches and plans
                        view.timing.calls.append(call_ms)
                        view.timing.http_server.append(server_ms)
                        view.timing.http_client.append(client_ms)
        return [view.timing for view in views]
    finally:
        await runner.cleanup()
        os.environ.pop(ADMIN_TOKEN_ENV, None)
