"""`run_portal_bench(options, command)`: seed a fresh database, then time the usage pages.

Steps: resolve Postgres and Valkey (the given URLs, else embedded servers under
`WORKDIR/data`); create a fresh database on that server (`tb_bench_portal_<hex>`, dropped at
the end unless `keep_database`); migrate; seed `events` events over `customers` customers
across the last `days` days (gateway.bench.portal_seed); check the rollups against the raw
rows (hourly on the newest day and a day mid-range, daily over the last week) and that the
all-customer total over the seeded range equals the rows in usage_events; then start the
gateway app in this process on a loopback port and time each view (gateway.bench.portal_views)
`runs` times by calling the functions its route calls and by HTTP GET, reading the
`Server-Timing` header. Progress goes to stderr. With `reuse_database` (a database an
earlier run kept), the seeding is skipped and the rest runs on what it holds.

How it fails: `PortalBenchError` for what stops the run (the embedded servers, the database
server refusing a new database); asyncpg's errors otherwise. The database is dropped and the
app stopped on the way out either way.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from gateway.bench import procs
from gateway.bench.portal_report import PortalBenchReport
from gateway.bench.portal_seed import DEFAULT_BATCH, SeedPlan, seed
from gateway.bench.portal_views import time_views
from storage.embedded.default import EmbeddedError, infrastructure
from storage.postgres import create_pool, migrate
from storage.reports.daily_rollups import verify_daily_rollups
from storage.reports.dashboard_queries import customers_usage
from storage.reports.rollups import verify_rollups


class PortalBenchError(Exception):
    """The benchmark could not run; the message says why."""


@dataclass(frozen=True)
class PortalBenchOptions:
    events: int = 5_000_000
    customers: int = 1000
    days: int = 90
    runs: int = 20
    batch_size: int = DEFAULT_BATCH
    database_url: str | None = None
    redis_url: str | None = None
    workdir: Path | None = None
    keep_database: bool = False
    reuse_database: str | None = None  # a database a previous run kept: checked and timed


def progress(line: str) -> None:
    print(f"bench portal: {line}", file=sys.stderr, flush=True)


@contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="tollbooth-bench-portal-") as tmp:
        yield Path(tmp)


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead (the rest, query included, unchanged)."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority = rest.partition("/")[0]
    return f"{scheme}://{authority}/{name}{sep}{query}"


@asynccontextmanager
async def fresh_database(server_url: str, keep: bool) -> AsyncIterator[str]:
    name = "tb_bench_portal_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError as exc:
        raise PortalBenchError(f"cannot create database {name}: {exc}") from exc
    finally:
        await conn.close()
    try:
        yield with_database(server_url, name)
    finally:
        if keep:
            progress(f"kept database {name}")
        else:
            conn = await asyncpg.connect(server_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()


async def _check(pool: asyncpg.Pool, plan: SeedPlan, report: PortalBenchReport) -> None:
    newest = plan.until - timedelta(days=1)
    middle = plan.since + (plan.until - plan.since) / 2
    mismatches = 0
    for since in (newest, middle):
        check = await verify_rollups(pool, since=since, until=since + timedelta(days=1))
        mismatches += len(check.mismatches)
    report.checks.append(
        ("hourly rollups equal the raw events (newest day, a day mid-range)", mismatches == 0)
    )
    daily = await verify_daily_rollups(pool, since=plan.until - timedelta(days=7), until=plan.until)
    report.checks.append(("daily rollups equal the hourly ones (last 7 days)", not daily))
    rows = await pool.fetchval("SELECT count(*) FROM usage_events")
    usages = await customers_usage(pool, since=plan.since, until=plan.until)
    total = sum(usage.totals.requests for usage in usages)
    report.facts.append(("events in usage_events", f"{rows:,}"))
    report.facts.append(("all-customer requests, seeded range", f"{total:,}"))
    report.checks.append(
        (
            f"all-customer requests over the seeded range ({total:,}) == rows in "
            f"usage_events ({rows:,}) == events seeded ({plan.events:,})",
            total == rows == plan.events,
        )
    )


async def _seeded_plan(pool: asyncpg.Pool) -> SeedPlan:
    """What a kept database holds, as the plan that seeded it."""
    row = await pool.fetchrow(
        "SELECT count(*) AS n, min(created_at) AS first, max(created_at) AS last FROM usage_events"
    )
    customers = await pool.fetchval("SELECT count(*) FROM customers")
    assert row is not None and row["n"] > 0, "the database holds no usage events"
    return SeedPlan(row["n"], customers, row["first"], row["last"] + timedelta(microseconds=1))


async def _prepare(
    pool: asyncpg.Pool, options: PortalBenchOptions, report: PortalBenchReport
) -> SeedPlan:
    if options.reuse_database:
        plan = await _seeded_plan(pool)
        report.facts.append(
            (
                "reused",
                f"{plan.events:,} events, {plan.customers:,} customers seeded by an earlier run",
            )
        )
        return plan
    until = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    plan = SeedPlan(
        options.events,
        options.customers,
        until - timedelta(days=options.days),
        until,
        batch_size=options.batch_size,
    )
    progress(f"seeding {plan.events:,} events over {plan.customers:,} customers")
    started = time.monotonic()
    await seed(pool, plan, progress)
    seconds = time.monotonic() - started
    report.facts.append(
        (
            "seeded",
            f"{plan.events:,} events, {plan.customers:,} "
            f"customers, {options.days} days, in {seconds:.1f} s "
            f"({plan.events / max(seconds, 1e-9):,.0f} events/s)",
        )
    )
    return plan


@asynccontextmanager
async def _database(server_url: str, options: PortalBenchOptions) -> AsyncIterator[str]:
    if options.reuse_database:
        yield options.reuse_database
        return
    async with fresh_database(server_url, options.keep_database) as url:
        yield url


async def _run(
    options: PortalBenchOptions,
    report: PortalBenchReport,
    server_url: str,
    redis_url: str,
    workdir: Path,
) -> None:
    async with _database(server_url, options) as url:
        pool = await create_pool(url, max_size=4)
        try:
            await migrate(pool)
            plan = await _prepare(pool, options, report)
            for table in ("usage_rollups_hourly", "usage_rollups_daily"):
                count = await pool.fetchval(f"SELECT count(*) FROM {table}")
                report.facts.append((f"rows in {table}", f"{count:,}"))
            progress("checking rollups")
            await _check(pool, plan, report)
        finally:
            await pool.close()
        progress(f"timing views, {options.runs} runs each")
        report.views.extend(await time_views(url, redis_url, workdir, runs=options.runs))


def run_portal_bench(options: PortalBenchOptions, command: str) -> PortalBenchReport:
    """Seed and time; raises PortalBenchError. Prints progress on stderr."""
    report = PortalBenchReport(command=command, machine=procs.machine_info())
    with _workdir(options.workdir) as workdir:
        try:
            # A reused database lives on --database-url's server, or the embedded one of
            # --workdir (started here again).
            with infrastructure(
                options.database_url, options.redis_url, workdir / "data", announce=progress
            ) as infra:
                asyncio.run(_run(options, report, infra.database_url, infra.redis_url, workdir))
        except EmbeddedError as exc:
            raise PortalBenchError(str(exc)) from exc
    return report
