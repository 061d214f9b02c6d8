"""The portal's invoices and "Manage billing" (against the fake Stripe), and the
`tollbooth portal link` command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway import keys
from gateway.web import keys as web_keys
from gateway.web.portal_invoices import invoice_rows, month_invoice
from gateway.web.portal_links import issue_link, verify_link
from gateway.web.sessions import Signer
from pricing.months import BillingMonth
from tests.fake_stripe import API_KEY, FakeStripe, running_fake_stripe
from tests.harness import Gateway, running_gateway
from tests.portal_fixtures import PORTAL_TIERS, portal_config, seed_portal


@pytest.fixture
async def billing_portal(
    fresh_database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, FakeStripe]]:
    monkeypatch.setenv("TB_TEST_STRIPE_KEY", API_KEY)
    async with running_fake_stripe() as fake:
        config = {
            **portal_config(),
            "billing": {"stripe": {"api_key_env": "TB_TEST_STRIPE_KEY", "api_base": fake.url}},
        }
        async with running_gateway(
            fresh_database_url, redis_url, monkeypatch, tiers=PORTAL_TIERS, extra_config=config
        ) as gw:
            await seed_portal(gw.app)
            await gw.app[keys.accounts].update_customer(
                "acme", stripe_customer_id=fake.add_customer("Acme")
            )
            yield gw, fake


async def _session(client: aiohttp.ClientSession, gw: Gateway, project: str | None = None) -> None:
    token, _ = issue_link(
        gw.app[web_keys.link_signer], "acme", project, ttl=timedelta(hours=1), now=datetime.now(UTC)
    )
    response = await client.get(
        f"{gw.base_url}/portal", params={"token": token}, allow_redirects=False
    )
    assert response.status == 303


async def test_invoice_page_itemizes_as_the_cli(billing_portal: tuple[Gateway, FakeStripe]) -> None:
    gw, fake = billing_portal
    settings = gw.app[keys.runtime].current.settings
    invoice = await month_invoice(gw.app[keys.pool], settings, "acme", BillingMonth(2025, 10))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        await _session(client, gw)
        html = await (
            await client.get(f"{gw.base_url}/portal/invoices", params={"month": "2025-10"})
        ).text()
        preview = await client.get(f"{gw.base_url}/portal/invoices")
        assert preview.status == 200 and "preview" in await preview.text()
        assert (
            await client.get(f"{gw.base_url}/portal/invoices", params={"month": "2999-01"})
        ).status == 400
    total = re.search(r'data-metric="invoice-total" data-value="([^"]+)"', html)
    assert total is not None and total[1] == format(invoice.total, "f")
    assert invoice.to_json()["total"] == total[1]
    cells = re.findall(r'<td class="num">([^<]*)</td>', html)
    for row in invoice_rows(invoice):
        assert row.amount in cells
    assert "Manage billing" in html
    assert not re.search(r"cus_[0-9a-f]{6}", html)  # the Stripe id never reaches a page
    assert fake.portal_sessions == []


async def test_manage_billing_opens_the_stripe_portal(
    billing_portal: tuple[Gateway, FakeStripe],
) -> None:
    gw, fake = billing_portal
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        await _session(client, gw)
        page = await (await client.get(f"{gw.base_url}/portal/invoices")).text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        refused = await client.post(f"{gw.base_url}/portal/billing", data={}, allow_redirects=False)
        assert refused.status == 403 and fake.portal_sessions == []
        response = await client.post(
            f"{gw.base_url}/portal/billing", data={"csrf": csrf[1]}, allow_redirects=False
        )
        assert response.status == 303
    [session] = fake.portal_sessions
    assert response.headers["Location"] == session["url"]
    assert session["return_url"] == f"{gw.base_url}/portal/invoices"


async def test_project_sessions_see_no_invoices(billing_portal: tuple[Gateway, FakeStripe]) -> None:
    gw, fake = billing_portal
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        await _session(client, gw, "web")
        assert (await client.get(f"{gw.base_url}/portal/invoices")).status == 403
        overview = await (await client.get(f"{gw.base_url}/portal")).text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', overview)
        assert csrf is not None
        response = await client.post(
            f"{gw.base_url}/portal/billing", data={"csrf": csrf[1]}, allow_redirects=False
        )
        assert response.status == 403
    assert fake.portal_sessions == []


@pytest.mark.slow
def test_cli_prints_a_link_on_the_last_line(
    fresh_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"host": "127.0.0.1", "port": 8099},
                "providers": {"openai": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1"}},
                "storage": {"data_dir": str(tmp_path / "data")},
            }
        )
    )
    secret = "portal-secret-for-tests-0123456789abcdef"
    env = {
        **os.environ,
        "TOLLBOOTH_DATABASE_URL": fresh_database_url,
        "TOLLBOOTH_REDIS_URL": redis_url,
        "TOLLBOOTH_PORTAL_SECRET": secret,
    }

    def portal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli.main", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "customers",
            "create",
            "acme",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    done = portal("portal", "link", "--customer", "acme", "--project", "web", "--ttl", "2h")
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:8099/portal?token=")
    grant = verify_link(
        Signer(secret.encode(), "portal-link"), url.split("token=", 1)[1], now=datetime.now(UTC)
    )
    assert grant is not None and (grant.customer_id, grant.project_id) == ("acme", "web")
    assert timedelta(minutes=119) < grant.expires_at - datetime.now(UTC) <= timedelta(hours=2)
    based = portal("portal", "link", "--customer", "acme", "--base-url", "https://gw.example")
    assert based.stdout.strip().splitlines()[-1].startswith("https://gw.example/portal?token=")
    assert portal("portal", "link", "--customer", "nobody").returncode == 1
    assert portal("portal", "link", "--customer", "acme", "--ttl", "forever").returncode == 2
