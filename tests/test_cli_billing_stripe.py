"""`tollbooth billing sync|reconcile` and `customers ... --create-in-stripe`, run as a user runs
them (a subprocess), against the fake Stripe on loopback and a real Postgres.

The subprocess builds the parser from the command modules under test (gateway.cli.customers and
gateway.cli.billing_stripe), so these tests do not depend on the other `billing` subcommands.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from storage.postgres import create_pool, migrate
from tests.fake_stripe import API_KEY, FakeStripe, running_fake_stripe

pytestmark = pytest.mark.slow

RUNNER = """
import argparse, sys
from gateway.cli import billing_stripe, customers
parser = argparse.ArgumentParser(prog="tollbooth")
sub = parser.add_subparsers(dest="command", required=True)
customers.register(sub)
billing = sub.add_parser("billing")
billing_stripe.add_commands(billing.add_subparsers(dest="billing_command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""
WINDOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    """The fake Stripe on its own event loop in a thread, reachable from subprocesses."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    manager = running_fake_stripe()
    stripe = asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result(10)
    try:
        yield stripe
    finally:
        asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class Cli:
    def __init__(self, workdir: Path, env: dict[str, str], database_url: str) -> None:
        self.workdir = workdir
        self.env = env
        self.database_url = database_url

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-c", RUNNER, *args, "--config", str(self.workdir / "c.yaml")]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def json(self, *args: str, code: int = 0) -> Any:
        done = self(*args, "--format", "json")
        assert done.returncode == code, done.stderr
        return json.loads(done.stdout)

    def sql(self, query: str, *params: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            pool = await create_pool(self.database_url)
            try:
                await migrate(pool)
                return list(await pool.fetch(query, *params))
            finally:
                await pool.close()

        return asyncio.run(run())

    def add_event(self, customer_id: str, at: datetime, input_tokens: int = 100) -> None:
        self.sql(
            """
            INSERT INTO usage_events (id, created_at, customer_id, key_id, tier, provider,
                model, endpoint, status_code, streamed, input_tokens, output_tokens,
                usage_source, cost_usd, price_usd, latency_ms)
            VALUES ($1, $2, $3, 'key_0000000000000000', 'free', 'openai', 'gpt-4o-mini',
                'chat_completions', 200, false, $4, 10, 'provider', $5, $5, 5)
            """,
            uuid.uuid4(),
            at,
            customer_id,
            input_tokens,
            Decimal("0.00012345"),
        )


def write_config(
    path: Path,
    database_url: str,
    redis_url: str,
    stripe: dict[str, Any] | None,
) -> None:
    config: dict[str, Any] = {
        "storage": {"database_url": database_url, "redis_url": redis_url},
        "providers": {"openai": {"kind": "openai", "base_url": "https://api.openai.com/v1"}},
        "tiers": {"free": {"limits": {}}},
    }
    if stripe is not None:
        config["billing"] = {"stripe": {"api_key_env": "TB_TEST_STRIPE_KEY", **stripe}}
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def cli(tmp_path: Path, fresh_database_url: str, redis_url: str, fake: FakeStripe) -> Cli:
    write_config(
        tmp_path / "c.yaml",
        fresh_database_url,
        redis_url,
        {
            "api_base": fake.url,
            "max_retries": 0,
            "meters": {"input_tokens": "tollbooth_input_tokens", "requests": "tollbooth_requests"},
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLBOOTH_")}
    env["TB_TEST_STRIPE_KEY"] = API_KEY
    return Cli(tmp_path, env, fresh_database_url)


def seed(cli: Cli, fake: FakeStripe) -> str:
    stripe_id = fake.add_customer("Acme")
    cli.sql(
        "INSERT INTO customers (id, tier, stripe_customer_id) VALUES ('acme', 'free', $1),"
        " ('nolink', 'free', NULL)",
        stripe_id,
    )
    for minutes in (1, 30, 59):
        cli.add_event("acme", WINDOW + timedelta(minutes=minutes))
    cli.add_event("nolink", WINDOW)
    return stripe_id


def test_sync_twice_sends_each_identifier_once(cli: Cli, fake: FakeStripe) -> None:
    stripe_id = seed(cli, fake)
    first = cli.json("billing", "sync")
    assert (first["ok"], first["sent"], first["failed"], first["pending"]) == (True, 2, [], [])
    assert first["missing_stripe_customer"] == [{"customer_id": "nolink", "windows": 1}]
    assert fake.totals() == {
        (stripe_id, "tollbooth_input_tokens"): 300,
        (stripe_id, "tollbooth_requests"): 3,
    }

    second = cli.json("billing", "sync")
    assert second["ok"] and second["sent"] == 0
    assert len(fake.meter_event_posts) == 2

    table = cli("billing", "sync")
    assert table.returncode == 0 and "skipped customer nolink" in table.stdout


def test_sync_dry_run_lists_and_sends_nothing(cli: Cli, fake: FakeStripe) -> None:
    seed(cli, fake)
    done = cli("billing", "sync", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "dry run: 2 meter event(s) would be sent" in done.stdout
    assert fake.meter_event_posts == []
    assert cli.sql("SELECT count(*) AS n FROM billing_sync")[0]["n"] == 0


def test_sync_exits_1_and_keeps_rows_pending_while_stripe_fails(cli: Cli, fake: FakeStripe) -> None:
    seed(cli, fake)
    fake.fail_next(503, count=5)
    report = cli.json("billing", "sync", code=1)
    assert report["stopped_by"] and len(report["pending"]) == 2
    fake.faults.clear()
    assert cli.json("billing", "sync")["sent"] == 2


def test_sync_every_repeats_until_sigterm(cli: Cli, fake: FakeStripe) -> None:
    stripe_id = seed(cli, fake)
    process = subprocess.Popen(
        cli.command("billing", "sync", "--every", "1s"),
        cwd=cli.workdir,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until(lambda: len(fake.meter_events) == 2)
        cli.add_event("acme", WINDOW + timedelta(minutes=45), input_tokens=7)  # late event
        _wait_until(lambda: fake.totals().get((stripe_id, "tollbooth_input_tokens")) == 307)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "billing sync stopped" in stderr


def test_reconcile_compares_ours_sent_and_stripe(cli: Cli, fake: FakeStripe) -> None:
    seed(cli, fake)
    cli.json("billing", "sync")
    cli.add_event("acme", WINDOW + timedelta(minutes=2), input_tokens=11)  # not synced yet
    month = WINDOW.strftime("%Y-%m")

    report = cli.json("billing", "reconcile", "--month", month)
    lines = {(ln["customer_id"], ln["dimension"]): ln for ln in report["lines"]}
    acme = lines[("acme", "input_tokens")]
    assert (acme["ours"], acme["sent"], acme["stripe"], acme["difference"]) == (311, 300, "300", 11)
    assert acme["stripe_difference"] == "0"
    assert lines[("nolink", "requests")]["sent"] == 0
    assert report["differences"] == 4  # acme and nolink, both meters each

    offline = cli.json("billing", "reconcile", "--month", month, "--offline")
    assert all(ln["stripe"] is None for ln in offline["lines"])


def test_customers_create_in_stripe_stores_the_new_stripe_id(cli: Cli, fake: FakeStripe) -> None:
    done = cli(
        "customers",
        "create",
        "acme",
        "--name",
        "Acme",
        "--email",
        "ops@acme.test",
        "--create-in-stripe",
    )
    assert done.returncode == 0, done.stderr
    stored = cli.sql("SELECT stripe_customer_id FROM customers WHERE id = 'acme'")[0][0]
    assert stored in fake.customers and stored in done.stdout
    assert fake.customers[stored]["metadata"] == {"tollbooth_customer_id": "acme"}
    assert fake.customers[stored]["email"] == "ops@acme.test"

    again = cli("customers", "update", "acme", "--create-in-stripe")
    assert again.returncode == 2 and "already linked" in again.stderr
    cli("customers", "create", "beta")
    linked = cli("customers", "update", "beta", "--create-in-stripe")
    assert linked.returncode == 0, linked.stderr
    assert len(fake.customers) == 2


def test_bad_usage_and_missing_config_are_reported(
    cli: Cli, tmp_path: Path, fresh_database_url: str, redis_url: str
) -> None:
    assert cli("billing", "reconcile", "--month", "2026-13").returncode == 2
    assert cli("billing", "sync", "--every", "1h", "--until", "2026-05-01T00:00Z").returncode == 2
    assert cli("billing", "sync", "--until", "yesterday").returncode == 2
    write_config(tmp_path / "c.yaml", fresh_database_url, redis_url, None)
    done = cli("billing", "sync")
    assert done.returncode == 1 and "billing.stripe is not configured" in done.stderr


def _wait_until(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
