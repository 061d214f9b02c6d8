"""The admin commands, run as a user runs them: `python -m gateway.cli.main ...` in a subprocess."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage.accounts import AccountStore
from storage.postgres import create_pool, load_migrations

pytestmark = pytest.mark.slow

CONFIG = """
providers:
  openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
tiers:
  free: {limits: {requests_per_minute: 20}}
  pro: {limits: {requests_per_minute: 600}}
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


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")}


@pytest.fixture
def cli(tmp_path: Path, fresh_database_url: str, redis_url: str) -> Cli:
    (tmp_path / "config.yaml").write_text(CONFIG)
    env = _base_env() | {
        "TOLLBOOTH_DATABASE_URL": fresh_database_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
    }
    return Cli(tmp_path, env)


def run_db(url: str, work: Any) -> Any:
    async def main() -> Any:
        pool = await create_pool(url)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def test_migrate_then_nothing_left(cli: Cli) -> None:
    versions = [m.version for m in load_migrations()]
    assert cli.ok("migrate").strip() == "applied: " + ", ".join(versions)
    assert cli.ok("migrate").strip() == "schema is up to date"


def test_customers_and_keys(cli: Cli, fresh_database_url: str) -> None:
    cli.ok(
        "customers",
        "create",
        "acme",
        "--name",
        "Acme",
        "--email",
        "ops@acme.test",
        "--stripe-customer",
        "cus_123",
    )
    cli.ok("customers", "create", "beta")  # default tier: the first in config.yaml
    duplicate = cli("customers", "create", "acme")
    assert duplicate.returncode == 1
    assert duplicate.stderr.strip() == "tollbooth: customer 'acme' already exists"
    unknown_tier = cli("customers", "create", "gamma", "--tier", "gold")
    assert unknown_tier.returncode == 2
    assert "unknown tier 'gold'" in unknown_tier.stderr
    assert len(unknown_tier.stderr.strip().splitlines()) == 1
    assert cli("customers", "update", "acme").returncode == 2
    cli.ok("customers", "update", "acme", "--tier", "pro")

    customers = json.loads(cli.ok("customers", "list", "--format", "json"))
    assert [(c["id"], c["tier"]) for c in customers] == [("acme", "pro"), ("beta", "free")]
    assert customers[0]["stripe_customer_id"] == "cus_123"
    assert "acme" in cli.ok("customers", "list")

    out = cli.ok(
        "keys", "create", "--customer", "acme", "--project", "web", "--user", "u1", "--name", "ci"
    )
    lines = out.rstrip("\n").split("\n")
    key = lines[-1]
    assert re.fullmatch(r"tb_[A-Za-z0-9_-]{32,}", key)
    assert all(key not in line for line in lines[:-1])

    principal = run_db(fresh_database_url, lambda pool: AccountStore(pool).lookup_key(key))
    assert principal is not None
    assert (principal.customer_id, principal.project_id, principal.user_id, principal.tier) == (
        "acme",
        "web",
        "u1",
        "pro",
    )

    listed_text = cli.ok("keys", "list", "--format", "json")
    assert key[3:] not in listed_text
    [listed] = json.loads(listed_text)
    assert listed["id"] == principal.key_id
    assert listed["prefix"] == key[:11]
    assert (listed["customer_id"], listed["project_id"], listed["user_id"], listed["name"]) == (
        "acme",
        "web",
        "u1",
        "ci",
    )
    assert listed["revoked_at"] is None
    assert key[3:] not in cli.ok("keys", "list")
    assert json.loads(cli.ok("keys", "list", "--customer", "beta", "--format", "json")) == []

    assert cli.ok("keys", "revoke", principal.key_id).strip() == f"revoked key {principal.key_id}"
    assert run_db(fresh_database_url, lambda pool: AccountStore(pool).lookup_key(key)) is None
    [revoked] = json.loads(cli.ok("keys", "list", "--format", "json"))
    assert revoked["revoked_at"] is not None

    unknown = cli("keys", "revoke", "key_0000000000000000")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "tollbooth: no key 'key_0000000000000000'"
    no_customer = cli("keys", "create", "--customer", "nobody")
    assert no_customer.returncode == 1
    assert "tb_" not in no_customer.stdout


async def _insert_usage(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    rows = [
        ("acme", "gpt-4o", now - timedelta(hours=2), 120, 30, "0.0012", "0.00144"),
        ("acme", "gpt-4o", now - timedelta(days=2), 80, 20, "0.0008", "0.00096"),
        ("acme", "claude-x", now - timedelta(hours=1), 50, 10, "0.25", "0.3"),
        ("acme", "gpt-4o", now - timedelta(days=40), 999, 999, "9", "9"),  # outside 30 days
        ("beta", "gpt-4o", now - timedelta(hours=1), 7, 7, "1", "1.2"),
    ]
    for customer, model, at, inp, out, cost, price in rows:
        await pool.execute(
            """
            INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider, model,
                endpoint, status_code, streamed, input_tokens, output_tokens, usage_source,
                cost_usd, price_usd, latency_ms)
            VALUES ($1, $2, $3, 'key_0123456789abcdef', 'pro', 'openai', $4,
                '/v1/chat/completions', 200, true, $5, $6, 'provider', $7, $8, 5)
            """,
            uuid.uuid4(),
            at,
            customer,
            model,
            inp,
            out,
            Decimal(cost),
            Decimal(price),
        )


def test_usage_summary_reports_the_inserted_rows(
    cli: Cli, fresh_database_url: str, tmp_path: Path
) -> None:
    cli.ok("migrate")
    run_db(fresh_database_url, _insert_usage)

    body = json.loads(cli.ok("usage", "summary", "--customer", "acme", "--format", "json"))
    assert {
        k: body[k]
        for k in (
            "customer_id",
            "period_days",
            "requests",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "price_usd",
        )
    } == {
        "customer_id": "acme",
        "period_days": 30,
        "requests": 3,
        "input_tokens": 250,
        "output_tokens": 60,
        "cost_usd": "0.252",
        "price_usd": "0.3024",
    }
    assert [
        {
            k: m[k]
            for k in ("model", "requests", "input_tokens", "output_tokens", "cost_usd", "price_usd")
        }
        for m in body["by_model"]
    ] == [
        {
            "model": "claude-x",
            "requests": 1,
            "input_tokens": 50,
            "output_tokens": 10,
            "cost_usd": "0.25",
            "price_usd": "0.3",
        },
        {
            "model": "gpt-4o",
            "requests": 2,
            "input_tokens": 200,
            "output_tokens": 50,
            "cost_usd": "0.002",
            "price_usd": "0.0024",
        },
    ]

    everyone = json.loads(cli.ok("usage", "summary", "--days", "1", "--format", "json"))
    assert (everyone["customer_id"], everyone["period_days"], everyone["requests"]) == (None, 1, 3)
    assert everyone["price_usd"] == "1.50144"

    report = tmp_path / "usage.csv"
    assert (
        cli.ok("usage", "summary", "--customer", "acme", "--format", "csv", "-o", str(report)) == ""
    )
    rows = list(csv.DictReader(io.StringIO(report.read_text())))
    assert [(r["model"], r["requests"], r["price_usd"]) for r in rows] == [
        ("claude-x", "1", "0.3"),
        ("gpt-4o", "2", "0.0024"),
    ]
    table = cli.ok("usage", "summary", "--customer", "acme")
    assert "gpt-4o" in table and "TOTAL" in table and "0.3024" in table

    assert cli("usage", "summary", "--days", "0").returncode == 2


def test_commands_use_embedded_servers_when_no_url_is_set(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)
    cli = Cli(tmp_path, _base_env())
    done = cli("customers", "list", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []  # stdout stays parseable: announcements go to stderr
    assert "embedded PostgreSQL" in done.stderr and "embedded Valkey" in done.stderr
    state = json.loads((tmp_path / ".tollbooth" / "embedded.json").read_text())
    assert "postgres" not in state and "valkey" not in state  # stopped what it started
