"""`tollbooth pricing ...` and `tollbooth billing invoice`, run as a user runs them: the CLI in a
subprocess, on the test session's Postgres and Valkey, with a temporary config.yaml."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage.postgres import create_pool

pytestmark = pytest.mark.slow

D = Decimal
CONFIG = """
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1}
tiers:
  free:
    limits: {requests_per_month: 10}
    plan: {included: {requests: 10}}
  pro:
    pricing: {per_request_usd: "0"}
    plan:
      base_price_usd: "29.00"
      included: {requests: 100}
      overage: {requests: "1.00"}
pricing:
  markup_percent: "20"
  per_request_usd: "1.00"
  per_compute_minute_usd: "0.01"
  models:
    gpt-4o: {input_per_mtok: "2.00"}
    llama-70b: {provider: vllm, input_per_mtok: "0.50", output_per_mtok: "0.50"}
  customers:
    acme: {markup_percent: "10"}
billing:
  tax: {rate_percent: "8", customers: {exempt: "0"}}
"""


class Cli:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli.main", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def cli(tmp_path: Path, fresh_database_url: str, redis_url: str) -> Cli:
    (tmp_path / "config.yaml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")}
    env |= {"TOLLBOOTH_DATABASE_URL": fresh_database_url, "TOLLBOOTH_REDIS_URL": redis_url}
    return Cli(tmp_path, env)


def run_db(url: str, work: Callable[[asyncpg.Pool], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        pool = await create_pool(url)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def insert_events(url: str, events: list[dict[str, Any]]) -> None:
    async def work(pool: asyncpg.Pool) -> None:
        for e in events:
            await pool.execute(
                """
                INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider,
                    model, endpoint, status_code, streamed, input_tokens, output_tokens,
                    usage_source, cost_usd, price_usd, price_version, latency_ms)
                VALUES ($1, $2, $3, 'key_0123456789abcdef', $4, 'openai', $5, 'chat', $6,
                    false, $7, $8, 'provider', $9, $10, 'old+1', $11)
                """,
                uuid.uuid4(),
                e["at"],
                e["customer"],
                e.get("tier", "pro"),
                e["model"],
                e.get("status", 200),
                e["input"],
                e.get("output", 0),
                e.get("cost"),
                e.get("price"),
                e.get("latency_ms", 0),
            )

    run_db(url, work)


# ----------------------------------------------------------------------------- pricing


def test_list_shows_catalog_overrides_and_added_models(cli: Cli) -> None:
    models = {m["model"]: m for m in json.loads(cli.ok("pricing", "list", "--format", "json"))}
    assert models["gpt-4o"]["source"] == "override"
    assert models["gpt-4o"]["input_per_mtok"] == "2"
    assert models["gpt-4o"]["cached_input_per_mtok"] == "1.25"
    assert models["llama-70b"]["source"] == "config"
    assert models["claude-haiku-4-5"]["cache_write_1h_per_mtok"] == "2"
    at_may = json.loads(cli.ok("pricing", "list", "--at", "2025-05-01", "--format", "json"))
    assert {m["model"]: m["input_per_mtok"] for m in at_may}["o3"] == "10"
    table = cli.ok("pricing", "list")
    assert "CACHE WRITE 1H" in table and "llama-70b" in table


def test_show_resolves_a_snapshot_and_lists_its_periods_and_rates(cli: Cli) -> None:
    body = json.loads(cli.ok("pricing", "show", "o3-2025-04-16", "--format", "json"))
    assert (body["requested"], body["model"]) == ("o3-2025-04-16", "o3")
    assert [p["effective_from"] for p in body["periods"]] == [
        "2025-04-16T00:00:00+00:00",
        "2025-06-10T00:00:00+00:00",
    ]
    rates = {r["scope"]: r for r in body["rates"]}
    assert rates["global"]["per_request_usd"] == "1"
    assert rates["tier pro"]["per_request_usd"] == "0"
    assert rates["customer acme"]["markup_percent"] == "10"
    assert "price periods" in cli.ok("pricing", "show", "gpt-4o")
    unknown = cli("pricing", "show", "gpt-9")
    assert unknown.returncode == 1 and "unknown model 'gpt-9'" in unknown.stderr


def test_check_passes_a_good_config_and_warns_about_double_billing(cli: Cli) -> None:
    done = cli("pricing", "check")
    assert done.returncode == 0, done.stderr
    assert "pricing OK" in done.stdout
    assert "plans: free, pro" in done.stdout
    # free meters requests while its requests still pay per_request_usd.
    assert "warning: tiers.free" in done.stderr and "tiers.pro" not in done.stderr


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("llama-70b: {provider: vllm, ", "llama-70b: {", "add provider"),
        ('gpt-4o: {input_per_mtok: "2.00"}', "gpt-4o: {input_per_mtok: 2.00}", "got the float"),
        ('overage: {requests: "1.00"}', 'overage: {requestz: "1.00"}', "requestz"),
        ("acme: {markup", '"ac me": {markup', "can never match a customer id"),
    ],
)
def test_check_fails_a_bad_config_with_a_clear_error(
    cli: Cli, replace: str, by: str, expected: str
) -> None:
    config = cli.workdir / "config.yaml"
    assert replace in CONFIG
    config.write_text(CONFIG.replace(replace, by))
    done = cli("pricing", "check")
    assert done.returncode == 1
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_rerate_prints_per_customer_differences_and_is_idempotent(
    cli: Cli, fresh_database_url: str
) -> None:
    cli.ok("migrate")
    at = datetime(2026, 10, 5, tzinfo=UTC)
    insert_events(
        fresh_database_url,
        [
            # acme on pro: 1M input x 2.00 (override) = 2; x 1.10 (acme) + 0 fee (pro) = 2.2
            {
                "customer": "acme",
                "model": "gpt-4o",
                "input": 1_000_000,
                "at": at,
                "cost": D("2.5"),
                "price": D("3"),
            },
            # bob on free, unpriced before: 1M x 0.50 = 0.5; x 1.2 + 1.00 + 1 min x 0.01 = 1.61
            {
                "customer": "bob",
                "tier": "free",
                "model": "llama-70b",
                "input": 1_000_000,
                "at": at,
                "latency_ms": 60_000,
            },
            {
                "customer": "bob",
                "model": "gpt-4o",
                "input": 5,
                "at": datetime(2026, 9, 1, tzinfo=UTC),
            },
        ],
    )
    dry = json.loads(
        cli.ok("pricing", "rerate", "--since", "2026-10-01", "--dry-run", "--format", "json")
    )
    assert dry["dry_run"] is True and dry["events_changed"] == 2
    real = json.loads(
        cli.ok(
            "pricing", "rerate", "--since", "2026-10-01", "--format", "json", "--batch-size", "1"
        )
    )
    customers = {c["customer_id"]: c for c in real["customers"]}
    assert (customers["acme"]["price_after"], customers["acme"]["price_delta"]) == ("2.2", "-0.8")
    assert customers["bob"]["newly_priced"] == 1
    assert customers["bob"]["price_after"] == "1.61"
    assert real["price_delta"] == "0.81"
    again = cli.ok("pricing", "rerate", "--since", "2026-10-01")
    assert "re-rated 0 of 2 events" in again
    bad = cli("pricing", "rerate", "--since", "last week")
    assert bad.returncode == 2 and "invalid date" in bad.stderr


# ----------------------------------------------------------------------------- invoices


def test_invoice_of_a_pro_customer_from_stored_events(cli: Cli, fresh_database_url: str) -> None:
    cli.ok("customers", "create", "acme", "--tier", "pro")
    at = datetime(2026, 10, 9, 8, tzinfo=UTC)
    events = [
        {"customer": "acme", "model": "gpt-4o", "input": 1, "at": at, "price": D("0.0123456789")}
        for _ in range(103)
    ]
    events.append(
        {"customer": "acme", "model": "gpt-4o", "input": 1, "at": at, "status": 502, "price": D(0)}
    )
    events.append(
        {
            "customer": "acme",
            "model": "gpt-4o",
            "input": 1,
            "price": D(100),
            "at": datetime(2026, 11, 1, tzinfo=UTC),
        }
    )  # November
    insert_events(fresh_database_url, events)

    body = json.loads(
        cli.ok("billing", "invoice", "--customer", "acme", "--month", "2026-10", "--format", "json")
    )
    # base 29.00; 103 tasks - 100 included = 3 x 1.00; usage 103 x 0.0123456789 = 1.2716049267
    # -> 1.27. Subtotal 33.27; tax 8% = 2.6616 -> 2.66; total 35.93.
    assert [(line["kind"], line["amount"]) for line in body["lines"]] == [
        ("base_fee", "29.00"),
        ("metered", "3.00"),
        ("usage", "1.27"),
    ]
    assert body["lines"][1]["quantity"] == "103"
    assert (body["subtotal"], body["tax"], body["total"]) == ("33.27", "2.66", "35.93")
    assert (body["plan"], body["currency"], body["failed_requests"]) == ("pro", "usd", 1)
    table = cli.ok("billing", "invoice", "--customer", "acme", "--month", "2026-10")
    assert "TOTAL USD" in table and "35.93" in table and "requests (tasks)" in table


def test_invoice_refuses_unknown_customers_and_bad_months(cli: Cli) -> None:
    unknown = cli("billing", "invoice", "--customer", "ghost", "--month", "2026-10")
    assert unknown.returncode == 1 and "unknown customer 'ghost'" in unknown.stderr
    bad = cli("billing", "invoice", "--customer", "acme", "--month", "October")
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr


def test_list_without_a_config_file_shows_the_catalog_alone(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "pricing", "list", "--format", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "catalog alone" in done.stderr
    models = {m["model"]: m for m in json.loads(done.stdout)}
    assert models["gpt-4o"]["source"] == "catalog"
    assert "llama-70b" not in models
