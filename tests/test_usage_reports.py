"""Usage reports equal the raw events: every report, every filter, the window's edges, as
queries and as `tollbooth usage ...` run in a subprocess (JSON, CSV, tables, -o FILE)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import subprocess
import sys
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.cli.usage_render import DAILY_CSV_COLUMNS, PROJECTS_CSV_COLUMNS, TOTAL_COLUMNS
from storage.postgres import create_pool, migrate
from storage.reports.event_queries import export_events, usage_events_page
from storage.reports.rollups import UsageFilter
from storage.reports.usage_queries import (
    UsageTotals,
    report_period,
    usage_daily,
    usage_projects,
    usage_summary,
    usage_totals,
)
from storage.usage.event import UsageEvent
from storage.usage.partitions import ensure_partitions
from tests.usage_fixtures import insert_events, make_event, random_events, raw_totals

NOW = datetime(2026, 5, 20, 12, 30, 15, 500_000, tzinfo=UTC)  # not on an hour
FILTERS = [
    (None, None, None),
    ("acme", None, None),
    ("acme", "web", None),
    (None, None, "claude-x"),
    ("beta", "api", "gpt-4o"),
]


def plain(totals: UsageTotals) -> dict[str, Any]:
    return {name: getattr(totals, name) for name in TOTAL_COLUMNS}


@pytest.fixture
async def pool(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The shared migrated pool, with three months of partitions and events on the edges of
    every window."""
    for months_back in (2, 1, 0):
        await ensure_partitions(pool, months_ahead=1, now=NOW - timedelta(days=31 * months_back))
    rng = random.Random(11)
    events = random_events(rng, NOW, 2500, span_days=45)
    for days in (1, 7, 30):  # on, just inside and just outside each window's first instant
        since = NOW - timedelta(days=days)
        events += [
            make_event(since),
            make_event(since - timedelta(microseconds=1)),
            make_event(since + timedelta(microseconds=1), project_id=None),
        ]
    events += [make_event(NOW), make_event(NOW + timedelta(microseconds=1))]
    events += [make_event(NOW - timedelta(minutes=5), customer_id="beta") for _ in range(4)]
    for start in range(0, len(events), 500):
        await insert_events(pool, events[start : start + 500])
    return pool


@pytest.mark.parametrize("days", [1, 7, 30])
async def test_every_report_equals_the_raw_rows(pool: asyncpg.Pool, days: int) -> None:
    since = NOW - timedelta(days=days)
    for customer, project, model in FILTERS:
        want = await raw_totals(
            pool, since, NOW, customer_id=customer, project_id=project, model=model
        )
        scope: dict[str, Any] = {
            "days": days,
            "customer_id": customer,
            "project_id": project,
            "model": model,
            "now": NOW,
        }
        summary = await usage_summary(pool, **scope)
        assert plain(summary.totals) == want, (customer, project, model)
        for by_model in summary.by_model:
            assert plain(by_model.totals) == await raw_totals(
                pool, since, NOW, customer_id=customer, project_id=project, model=by_model.model
            )

        daily = await usage_daily(pool, **scope)
        assert plain(daily.totals) == want
        assert daily.days[0].day == since.date() and daily.days[-1].day == NOW.date()
        for day in daily.days[1:-1]:
            start = datetime(day.day.year, day.day.month, day.day.day, tzinfo=UTC)
            end = start + timedelta(days=1) - timedelta(microseconds=1)
            assert plain(day.totals) == await raw_totals(
                pool, start, end, customer_id=customer, project_id=project, model=model
            )

        projects = await usage_projects(pool, **scope)
        assert plain(projects.totals) == want
        for row in projects.projects:
            if row.project_id is not None:
                assert plain(row.totals) == await raw_totals(
                    pool,
                    since,
                    NOW,
                    customer_id=row.customer_id,
                    project_id=row.project_id,
                    model=model,
                )


async def test_summary_keeps_the_spec_shape(pool: asyncpg.Pool) -> None:
    body = (await usage_summary(pool, days=30, customer_id="acme", now=NOW)).to_json()
    spec = {
        "customer_id",
        "period_days",
        "requests",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "price_usd",
        "by_model",
    }
    assert spec <= set(body) and body["customer_id"] == "acme" and body["period_days"] == 30
    assert isinstance(body["price_usd"], str) and Decimal(body["price_usd"]) > 0
    for model in body["by_model"]:
        assert {
            "model",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "price_usd",
        } <= set(model)


async def test_event_pages_walk_every_event_once_newest_first(pool: asyncpg.Pool) -> None:
    period = report_period(7, "beta", now=NOW)
    same_instant = NOW - timedelta(hours=3)  # ties on created_at are broken by id
    await insert_events(pool, [make_event(same_instant, customer_id="beta") for _ in range(9)])
    want = await pool.fetch(
        "SELECT id FROM usage_events WHERE customer_id = 'beta' AND created_at >= $1 "
        "AND created_at <= $2 ORDER BY created_at DESC, id DESC",
        period.since,
        period.until,
    )
    seen: list[Any] = []
    cursor = None
    while True:
        page = await usage_events_page(pool, period, limit=7, cursor=cursor)
        assert len(page.events) <= 7
        seen += [row["id"] for row in page.events]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [row["id"] for row in want]
    assert {row["customer_id"] for row in page.events} <= {"beta"}
    with pytest.raises(ValueError, match="cursor"):
        await usage_events_page(pool, period, cursor="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        await usage_events_page(pool, period, limit=1001)


async def test_export_streams_every_event_of_the_window(pool: asyncpg.Pool) -> None:
    period = report_period(30, "acme", model="gpt-4o", now=NOW)
    async with aclosing(export_events(pool, period)) as events:
        rows = [row async for row in events]
    want = await raw_totals(pool, period.since, period.until, customer_id="acme", model="gpt-4o")
    assert len(rows) == want["requests"]
    assert sum((r["price_usd"] or Decimal(0) for r in rows), Decimal(0)) == want["price_usd"]
    assert [r["created_at"] for r in rows] == sorted(r["created_at"] for r in rows)


# ----------------------------------------------------------------------------- the CLI

CONFIG = "providers: {openai: {kind: openai, base_url: https://api.openai.com/v1}}\n"


class Cli:
    def __init__(self, workdir: Path, database_url: str, redis_url: str) -> None:
        self.workdir = workdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")} | {
            "TOLLBOOTH_DATABASE_URL": database_url,
            "TOLLBOOTH_REDIS_URL": redis_url,
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli.main", "usage", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout


def _seed_cli_data(url: str) -> None:
    """Events at least 2 hours away from now and from each window's start (1, 7 and 30
    days back), so every command run in this test sees the same events."""
    now = datetime.now(UTC)
    rng = random.Random(3)
    events = []
    for event in random_events(rng, now, 400, span_days=35):
        hours_back = rng.uniform(2, 22)
        day = rng.choice([0, 3, 10, 29, 31])
        events.append(
            make_event(
                now - timedelta(days=day, hours=hours_back),
                customer_id=event.customer_id,
                project_id=event.project_id,
                model=event.model,
                input_tokens=event.input_tokens,
                price_usd=event.price_usd,
                status_code=event.status_code,
            )
        )

    async def write() -> None:
        pool = await create_pool(url)
        try:
            await migrate(pool)
            await ensure_partitions(pool, months_ahead=1, now=now - timedelta(days=40))
            await insert_events(pool, events)
        finally:
            await pool.close()

    asyncio.run(write())


def _raw(url: str, body: dict[str, Any], **scope: Any) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        pool = await create_pool(url)
        try:
            since = datetime.fromisoformat(body["since"])
            until = datetime.fromisoformat(body["until"])
            return await raw_totals(pool, since, until, **scope)
        finally:
            await pool.close()

    raw = asyncio.run(read())
    return {k: str(v) if isinstance(v, Decimal) else v for k, v in raw.items()}


def _json_totals(body: dict[str, Any]) -> dict[str, Any]:
    return {
        name: str(Decimal(body[name])) if name.endswith("_usd") else body[name]
        for name in TOTAL_COLUMNS
    }


def _csv_sums(rows: list[dict[str, str]]) -> dict[str, Any]:
    return {
        name: str(sum(Decimal(r[name]) for r in rows))
        if name.endswith("_usd")
        else sum(int(r[name]) for r in rows)
        for name in TOTAL_COLUMNS
    }


def _same_money(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(
        (Decimal(a[k]) == Decimal(b[k])) if k.endswith("_usd") else a[k] == b[k]
        for k in TOTAL_COLUMNS
    )


@pytest.mark.slow
def test_usage_commands_report_the_raw_rows(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)
    cli = Cli(tmp_path, fresh_database_url, redis_url)
    _seed_cli_data(fresh_database_url)
    url = fresh_database_url

    summary = json.loads(
        cli.ok("summary", "--customer", "acme", "--project", "web", "--format", "json")
    )
    assert _same_money(
        _json_totals(summary), _raw(url, summary, customer_id="acme", project_id="web")
    )
    assert summary["filters"] == {"project_id": "web", "model": None}

    daily = json.loads(cli.ok("daily", "--days", "7", "--model", "gpt-4o", "--format", "json"))
    assert _same_money(_json_totals(daily), _raw(url, daily, model="gpt-4o"))
    assert len(daily["days"]) == 8 and daily["requests"] > 0
    daily_csv = list(
        csv.DictReader(
            io.StringIO(cli.ok("daily", "--days", "7", "--model", "gpt-4o", "--format", "csv"))
        )
    )
    assert list(daily_csv[0]) == list(DAILY_CSV_COLUMNS)
    assert _same_money(_csv_sums(daily_csv), _json_totals(daily))

    projects_file = tmp_path / "projects.csv"
    assert cli.ok("projects", "--format", "csv", "-o", str(projects_file)) == ""
    projects = list(csv.DictReader(io.StringIO(projects_file.read_text())))
    assert list(projects[0]) == list(PROJECTS_CSV_COLUMNS)
    everyone = json.loads(cli.ok("summary", "--format", "json"))
    assert _same_money(_csv_sums(projects), _json_totals(everyone))
    assert _same_money(_json_totals(everyone), _raw(url, everyone))
    assert {(r["customer_id"], r["project_id"]) for r in projects} >= {
        ("acme", ""),
        ("beta", "api"),
    }
    table = cli.ok("projects", "--customer", "gamma")
    assert "TOTAL" in table and "gamma" in table

    ids: list[str] = []
    cursor: list[str] = []
    while True:
        page = json.loads(
            cli.ok("events", "--customer", "beta", "--limit", "40", "--format", "json", *cursor)
        )
        ids += [event["id"] for event in page["events"]]
        assert all(event["customer_id"] == "beta" for event in page["events"])
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    beta = _raw(url, page, customer_id="beta")
    assert len(ids) == len(set(ids)) == beta["requests"] > 40

    export_file = tmp_path / "acme.csv"
    cli.ok("export", "--customer", "acme", "-o", str(export_file))
    exported = list(csv.DictReader(io.StringIO(export_file.read_text())))
    assert list(exported[0]) == list(UsageEvent.COLUMNS)
    acme = json.loads(cli.ok("summary", "--customer", "acme", "--format", "json"))
    assert len(exported) == acme["requests"]
    assert sum(Decimal(r["price_usd"] or "0") for r in exported) == Decimal(acme["price_usd"])
    assert not list(tmp_path.glob("*.partial"))
    exported_json = json.loads(
        cli.ok("export", "--customer", "acme", "--model", "claude-x", "--format", "json")
    )
    assert (
        len(exported_json["events"])
        == _raw(url, exported_json, customer_id="acme", model="claude-x")["requests"]
    )

    for bad in (
        ["summary", "--days", "0"],
        ["events", "--limit", "0"],
        ["events", "--cursor", "x"],
        ["daily", "--customer", "no such"],
    ):
        done = cli.run(*bad)
        assert done.returncode == 2 and done.stderr.startswith("tollbooth: "), bad


async def test_totals_of_any_window_equal_the_raw_rows(pool: asyncpg.Pool) -> None:
    month = datetime(2026, 5, 1, tzinfo=UTC)
    for customer in ("acme", "gamma", "nobody"):
        got = await usage_totals(
            pool, since=month, until=NOW, usage_filter=UsageFilter(customer_id=customer)
        )
        assert plain(got) == await raw_totals(pool, month, NOW, customer_id=customer)
