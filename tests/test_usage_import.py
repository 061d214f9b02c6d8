"""`tollbooth usage import` against real Postgres, run as a user runs it (`python -m
gateway.cli.main` in a subprocess) where the command line matters: export -> import ->
export round trips, a LiteLLM spend log export, bad rows, a second run, a kill -9 mid-import,
reports and invoices over the imported history; the rest in-process."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import random
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.config import load_settings
from gateway.runtime import build_pricing
from pricing.catalog import Catalog
from pricing.models import Usage
from storage.imports.run import ImportOptions, import_usage
from storage.postgres import create_pool, migrate
from storage.reports.rollups import verify_rollups
from storage.usage.event import UsageEvent
from storage.usage.partitions import list_partitions
from tests.helpers.databases import new_database
from tests.import_fixtures import Cli, write_usage_csv
from tests.usage_fixtures import insert_events, make_event, random_events

NOW = datetime.now(UTC)  # the command's clock is the wall clock: every time is relative to it


async def open_pool(url: str) -> asyncpg.Pool:
    pool = await create_pool(url)
    await migrate(pool)
    return pool


def summary_of(stdout: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(stdout)
    return found


def odd_events() -> list[UsageEvent]:
    """Values at the edges of each column: the money and token limits, text CSV must quote,
    an empty project (JSON tells it from NULL), nested metadata."""
    at = NOW - timedelta(days=3, microseconds=7)
    base = make_event(at, customer_id="edge")
    return [
        dataclasses.replace(
            base,
            price_usd=Decimal("9999999999.9999999999"),
            cost_usd=Decimal("0.0000000001"),
            input_tokens=2**62,
            output_tokens=0,
            latency_ms=2**31 - 1,
        ),
        dataclasses.replace(
            make_event(at, customer_id="edge"),
            project_id="",
            user_id='he said "hi",\n\ttab \\ back',
            upstream_request_id="é漢字🙂",
            streamed=True,
            price_version=None,
            metadata={"nested": {"a": [1, 2.5, None, True]}, "s": "x\ty"},
        ),
        dataclasses.replace(
            make_event(at, customer_id="edge"),
            cost_usd=None,
            price_usd=None,
            usage_source="estimated",
            status_code=599,
            metadata={},
        ),
    ]


def marked(row: dict[str, str]) -> dict[str, str]:
    """An exported row as its import should export it: the two import marks added."""
    metadata = (
        orjson.loads(row["metadata"]) if isinstance(row["metadata"], str) else dict(row["metadata"])
    )
    metadata["imported"] = "tollbooth"
    as_text = isinstance(row["metadata"], str)
    return {
        **row,
        "metadata": orjson.dumps(metadata, option=orjson.OPT_SORT_KEYS).decode()
        if as_text
        else metadata,
        "price_version": "imported:" + (row["price_version"] or "tollbooth"),
    }


def exported_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    rows: list[dict[str, Any]] = json.loads(text)["events"]
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_export_import_export_round_trips_every_column(
    fmt: str, tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    urls = [await new_database(postgres_url) for _ in range(3)]
    source = await open_pool(urls[0])
    events = random_events(random.Random(5), NOW - timedelta(hours=2), 3000, span_days=40)
    await insert_events(source, events + odd_events())
    await source.close()
    clis = []
    for n, url in enumerate(urls):
        (tmp_path / str(n)).mkdir()
        clis.append(Cli(tmp_path / str(n), url, redis_url))
    files = [tmp_path / f"export{n}.{fmt}" for n in range(3)]
    clis[0].ok("usage", "export", "--days", "60", "--format", fmt, "-o", str(files[0]))

    first = clis[1].ok("usage", "import", str(files[0]), "--create-customers", "--json")
    assert summary_of(first)["added"] == len(exported_rows(files[0], fmt)) > 3000
    clis[1].ok("usage", "export", "--days", "60", "--format", fmt, "-o", str(files[1]))
    # Every column of every row, money and tokens to the digit; only the import marks added.
    assert exported_rows(files[1], fmt) == [marked(r) for r in exported_rows(files[0], fmt)]

    # An export of imported rows imports to the same bytes.
    clis[2].ok("usage", "import", str(files[1]), "--create-customers")
    clis[2].ok("usage", "export", "--days", "60", "--format", fmt, "-o", str(files[2]))
    again, imported = (f.read_bytes().splitlines() for f in files[1:])
    head = 0 if fmt == "csv" else 1  # the JSON head holds the report window's times
    assert sorted(again[head:]) == sorted(imported[head:])


LITELLM_COLUMNS = (  # LiteLLM_SpendLogs in LiteLLM's schema.prisma, in its order
    "request_id",
    "call_type",
    "api_key",
    "spend",
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "startTime",
    "endTime",
    "request_duration_ms",
    "completionStartTime",
    "model",
    "model_id",
    "model_group",
    "custom_llm_provider",
    "api_base",
    "user",
    "metadata",
    "cache_hit",
    "cache_key",
    "request_tags",
    "team_id",
    "organization_id",
    "end_user",
    "requester_ip_address",
    "messages",
    "response",
    "session_id",
    "status",
    "mcp_namespaced_tool_name",
    "agent_id",
    "proxy_server_request",
)


def litellm_rows() -> list[dict[str, Any]]:
    day = (NOW - timedelta(days=20)).replace(microsecond=0, tzinfo=None)
    rows = []
    for n, (tenant, prompt, cached, status) in enumerate(
        (
            ("acme", 1000, 600, "success"),
            ("acme", 50, 0, "success"),
            ("acme", 10, 0, "failure"),
            ("ghost", 5, 0, "success"),
        )
    ):
        start = day + timedelta(minutes=n)
        rows.append(
            dict.fromkeys(LITELLM_COLUMNS, "")
            | {
                "request_id": f"chatcmpl-{n}",
                "call_type": "acompletion",
                "api_key": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
                "spend": "0.000123456789012345" if n == 0 else "0.00005",
                "total_tokens": str(prompt + 7),
                "prompt_tokens": str(prompt),
                "completion_tokens": "7",
                "startTime": start.isoformat(sep=" "),
                "endTime": (start + timedelta(seconds=2)).isoformat(sep=" "),
                "model": "gpt-4o",
                "model_group": "gpt-4o",
                "custom_llm_provider": "openai",
                "user": "ann",
                "team_id": "team-1",
                "status": status,
                "metadata": json.dumps(
                    {
                        "tenant": tenant,
                        "additional_usage_values": {
                            "prompt_tokens_details": {"cached_tokens": cached}
                        },
                    }
                ),
                "messages": "{}",
                "response": "{}",
                "request_tags": "[]",
            }
        )
    return rows


@pytest.mark.slow
def test_litellm_spend_logs_export_imports_once_from_csv_or_json(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    cli = Cli(tmp_path, fresh_database_url, redis_url)
    cli.ok("customers", "create", "acme", "--tier", "pro")
    rows = litellm_rows()
    as_csv = tmp_path / "spend_logs.csv"
    with open(as_csv, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, LITELLM_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    args = ("--source", "litellm", "--customer-from", "metadata.tenant", "--json")
    done = cli("usage", "import", str(as_csv), *args)
    assert done.returncode == 1, done.stderr  # one row refused
    report = summary_of(done.stdout)
    assert (report["added"], report["skipped"], report["refused"]) == (3, 0, 1)
    assert report["refusals"] == [
        {
            "line": 5,
            "reason": "customer 'ghost' does not exist; create it first or pass --create-customers",
        }
    ]

    async def stored() -> list[asyncpg.Record]:
        pool = await create_pool(fresh_database_url)
        try:
            return list(
                await pool.fetch(
                    f"SELECT {', '.join(UsageEvent.COLUMNS)} FROM usage_events "
                    "ORDER BY upstream_request_id"
                )
            )
        finally:
            await pool.close()

    first = asyncio.run(stored())[0]
    assert first["customer_id"] == "acme" and first["tier"] == "pro"
    assert (first["input_tokens"], first["cached_input_tokens"], first["output_tokens"]) == (
        1000,
        600,
        7,
    )
    assert first["price_usd"] == first["cost_usd"] == Decimal("0.0001234568")
    assert first["price_version"] == "imported:litellm"
    assert first["metadata"]["imported"] == "litellm" and first["latency_ms"] == 2000
    assert [r["status_code"] for r in asyncio.run(stored())] == [200, 200, 500]

    # The same logs fetched as JSON (/spend/logs) are the same events: nothing is added.
    as_json = tmp_path / "spend_logs.json"
    as_json.write_text(
        json.dumps(
            [{**r, "spend": float(r["spend"]), "metadata": json.loads(r["metadata"])} for r in rows]
        )
    )
    again = summary_of(cli("usage", "import", str(as_json), *args, "--create-customers").stdout)
    assert (again["added"], again["skipped"], again["customers_created"]) == (1, 3, ["ghost"])


@pytest.mark.slow
def test_bad_rows_are_refused_by_line_and_a_second_run_adds_nothing(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    generated = write_usage_csv(tmp_path / "history.csv", 100_000, now=NOW, bad_every=100)
    cli = Cli(tmp_path, fresh_database_url, redis_url)
    done = cli("usage", "import", str(generated.path), "--create-customers", "--json")
    assert done.returncode == 1, done.stderr
    report = summary_of(done.stdout)
    assert (report["rows"], report["added"], report["refused"]) == (100_000, 99_000, 1000)
    assert {r["line"] for r in report["refusals"]} == set(generated.bad_lines)
    for refusal in report["refusals"][:12]:
        assert refusal["reason"].startswith(generated.bad_lines[refusal["line"]])
    assert len(report["customers_created"]) == 20

    second = summary_of(cli("usage", "import", str(generated.path), "--json").stdout)
    assert (second["added"], second["skipped"], second["refused"]) == (0, 99_000, 1000)

    async def check() -> None:
        pool = await create_pool(fresh_database_url)
        try:
            assert await pool.fetchval("SELECT count(*) FROM usage_events") == 99_000
            assert await pool.fetchval("SELECT count(*) FROM usage_events_default") == 0
            rollups = await verify_rollups(pool, since=NOW - timedelta(days=160), until=NOW)
            assert rollups.mismatches == []
            assert len(await list_partitions(pool)) >= 6  # 150 days of history
        finally:
            await pool.close()

    asyncio.run(check())


@pytest.mark.slow
def test_an_import_killed_mid_way_resumes_with_exactly_the_remainder(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    generated = write_usage_csv(tmp_path / "big.csv", 60_000, now=NOW, customers=3)
    cli = Cli(tmp_path, fresh_database_url, redis_url)

    async def customers() -> None:
        pool = await open_pool(fresh_database_url)
        try:
            await pool.executemany(
                "INSERT INTO customers (id, tier) VALUES ($1, 'free')",
                [(f"cust-{n:02d}",) for n in range(3)],
            )
        finally:
            await pool.close()

    asyncio.run(customers())

    async def count() -> int:
        conn = await asyncpg.connect(fresh_database_url)
        try:
            found: int = await conn.fetchval("SELECT count(*) FROM usage_events")
            return found
        finally:
            await conn.close()

    process = subprocess.Popen(
        cli.command("usage", "import", str(generated.path), "--batch-size", "1000"),
        cwd=tmp_path,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while asyncio.run(count()) < 5_000:
        if process.poll() is not None:
            pytest.fail(f"the import ended before it was killed: {process.communicate()}")
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    present = asyncio.run(count())
    assert 5_000 <= present < 60_000

    report = summary_of(cli.ok("usage", "import", str(generated.path), "--json"))
    assert (report["added"], report["skipped"]) == (60_000 - present, present)
    assert asyncio.run(count()) == 60_000


@pytest.mark.slow
def test_reports_and_an_old_months_invoice_include_the_history(
    tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    month_start = (
        NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=70)
    ).replace(day=1)
    history = tmp_path / "history.csv"
    with open(history, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(
            [
                "created_at",
                "customer_id",
                "model",
                "input_tokens",
                "output_tokens",
                "price_usd",
                "cost_usd",
            ]
        )
        for n in range(40):
            writer.writerow(
                [
                    (month_start + timedelta(hours=7 * n)).isoformat(),
                    "acme",
                    "gpt-4o",
                    1000 + n,
                    10,
                    "0.0125",
                    "0.01",
                ]
            )
    cli = Cli(tmp_path, fresh_database_url, redis_url)
    cli.ok("customers", "create", "acme", "--tier", "pro")
    assert summary_of(cli.ok("usage", "import", str(history), "--json"))["added"] == 40
    summary = json.loads(
        cli.ok("usage", "summary", "--days", "180", "--customer", "acme", "--format", "json")
    )
    assert summary["requests"] == 40
    assert summary["input_tokens"] == sum(1000 + n for n in range(40))
    assert Decimal(summary["price_usd"]) == Decimal("0.5")
    invoice = json.loads(
        cli.ok(
            "billing",
            "invoice",
            "--customer",
            "acme",
            "--month",
            f"{month_start:%Y-%m}",
            "--format",
            "json",
        )
    )
    assert invoice["requests"] == 40 and invoice["tier"] == "pro"
    assert Decimal(invoice["subtotal"]) == Decimal("0.50")


def csv_text(rows: list[dict[str, Any]]) -> io.StringIO:
    out = io.StringIO()
    writer = csv.DictWriter(out, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    out.seek(0)
    return out


def plain_rows(n: int, customer: str = "acme") -> list[dict[str, Any]]:
    return [
        {
            "created_at": (NOW - timedelta(days=2, minutes=n + i)).isoformat(),
            "customer_id": customer,
            "model": "gpt-4o",
            "input_tokens": 1000 + i,
            "cached_input_tokens": 200,
            "output_tokens": 50,
            "latency_ms": 900,
            "price_usd": "1",
            "cost_usd": "1",
        }
        for i in range(n)
    ]


async def test_dry_run_counts_and_writes_nothing(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO customers (id, tier) VALUES ('acme', 'pro')")
    rows = plain_rows(5) + plain_rows(2, customer="newco")
    report = await import_usage(
        pool, csv_text(rows), ImportOptions(dry_run=True, create_customers=True)
    )
    assert (report.added, report.skipped, report.refused) == (7, 0, 0)
    assert report.customers_created == ["newco"]
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 0
    assert await pool.fetchval("SELECT count(*) FROM customers") == 1
    real = await import_usage(pool, csv_text(rows), ImportOptions(create_customers=True))
    assert (real.added, real.customers_created) == (7, ["newco"])
    assert await pool.fetchval("SELECT tier FROM customers WHERE id = 'newco'") == "default"
    dry = await import_usage(pool, csv_text(rows), ImportOptions(dry_run=True))
    assert (dry.added, dry.skipped) == (0, 7)


async def test_rows_of_unknown_customers_are_refused_unless_created(pool: asyncpg.Pool) -> None:
    report = await import_usage(pool, csv_text(plain_rows(3, customer="nobody")), ImportOptions())
    assert report.refused == 3 and [r.line for r in report.refusals] == [2, 3, 4]
    assert "--create-customers" in report.refusals[0].reason


async def test_reprice_prices_each_row_as_rerate_does_at_its_time(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    (tmp_path / "config.yaml").write_text(
        "providers: {openai: {kind: openai, base_url: 'http://x', api_key_env: K}}\n"
        "tiers: {pro: {}}\npricing: {markup_percent: '20'}\n"
    )
    rules = build_pricing(load_settings(tmp_path / "config.yaml"), Catalog.load_default())
    await pool.execute("INSERT INTO customers (id, tier) VALUES ('acme', 'pro')")
    rows = [*plain_rows(3), {**plain_rows(1)[0], "model": "no-such-model"}]
    report = await import_usage(pool, csv_text(rows), ImportOptions(pricing=rules))
    assert (report.added, report.repriced, report.unpriceable) == (4, 3, 1)
    stored = await pool.fetch("SELECT * FROM usage_events ORDER BY model = 'no-such-model'")
    for row in stored[:3]:
        charge = rules.charge(
            "gpt-4o",
            Usage(input_tokens=row["input_tokens"], cached_input_tokens=200, output_tokens=50),
            at=row["created_at"],
            customer_id="acme",
            tier="pro",
            duration_ms=900,
        )
        assert charge is not None and charge.price_usd != Decimal(1)
        assert (row["price_usd"], row["cost_usd"], row["price_version"]) == (
            charge.price_usd,
            charge.cost_usd,
            charge.price_version,
        )
    unpriced = stored[3]
    assert (unpriced["price_usd"], unpriced["price_version"]) == (Decimal(1), "imported:tollbooth")
    assert {r["metadata"]["imported"] for r in stored} == {"tollbooth"}


async def test_json_lines_and_a_row_without_id_dedupe_on_the_derived_id(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO customers (id, tier) VALUES ('acme', 'pro')")
    lines = "\n".join(json.dumps(r) for r in plain_rows(4)) + "\n"
    first = await import_usage(pool, io.StringIO(lines), ImportOptions(fmt="jsonl"))
    second = await import_usage(pool, io.StringIO(lines), ImportOptions(fmt="jsonl"))
    assert (first.added, second.added, second.skipped) == (4, 0, 4)
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 4
