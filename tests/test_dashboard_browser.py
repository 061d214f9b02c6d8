"""The operator dashboard in a real headless Chromium: a wrong token refused, sign-in with the
admin token, the customer table's figures against sums over its rows and the raw rows,
search and sort, a drill-down, a portal link issued there and opened, an XSS payload kept as
text, a form without its CSRF value refused, no CSP violation in the console, and a
screenshot (docs/dashboard.png) of realistic seeded data in a fixed past month."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlencode

import aiohttp
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gateway import keys
from gateway.bench.portal_seed import SeedPlan, seed
from tests.browser import chrome, console_errors, screenshots_dir
from tests.portal_fixtures import (
    MONTH_QUERY,
    MONTH_START,
    PORTAL_TIERS,
    Seed,
    ThreadedGateway,
    portal_config,
    raw_totals,
    seed_portal,
)
from tests.usage_fixtures import insert_events, make_event

pytestmark = pytest.mark.slow

__all__ = ["chrome"]  # the fixture, used by name

DOCS = screenshots_dir()
TOKEN = "dash-" + uuid.uuid4().hex
XSS_CUSTOMER = "xss-co"
XSS_CUSTOMER_NAME = "<img src=x onerror=alert(1)>"
HEADLINE = ("requests", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
TIERS = {**PORTAL_TIERS, "enterprise": {"limits": {"spend_per_month_usd": "5000"}}}


async def _seed(gw: ThreadedGateway) -> Seed:
    found = await seed_portal(gw.app)
    # Forty more customers with a month of skewed traffic, as the benchmark seeds them.
    await seed(
        gw.app[keys.pool],
        SeedPlan(6000, 40, MONTH_START, MONTH_START + timedelta(days=31), seed=0.3),
    )
    await gw.app[keys.accounts].create_customer(XSS_CUSTOMER, tier="free", name=XSS_CUSTOMER_NAME)
    await insert_events(
        gw.app[keys.pool],
        [
            dataclasses.replace(
                make_event(
                    MONTH_START + timedelta(days=3, hours=n),
                    customer_id=XSS_CUSTOMER,
                    project_id=None,
                ),
                key_id="key_00000000000000aa",
            )
            for n in range(5)
        ],
    )
    # What a Stripe sync run and a refused event would have left.
    await gw.app[keys.pool].execute(
        "INSERT INTO billing_sync (identifier, customer_id, stripe_customer_id, dimension, "
        "event_name, window_start, window_end, version, seq, value, status, sent_at) "
        "SELECT d || n, 'acme', 'cus_ACMESECRET123', d, 'tollbooth_' || d, "
        "$1::timestamptz + n * interval '1 hour', $1::timestamptz + (n + 1) * interval '1 hour', "
        "1, 0, 10 * n, CASE WHEN n < 40 THEN 'sent' WHEN n < 45 THEN 'pending' ELSE 'failed' END, "
        "CASE WHEN n < 40 THEN $1::timestamptz + (n + 2) * interval '1 hour' END "
        "FROM generate_series(0, 47) AS n, unnest(ARRAY['requests', 'input_tokens']) AS d",
        MONTH_START,
    )
    await gw.app[keys.pool].execute(
        "INSERT INTO usage_dead_letters (event_id, journal_line, error, first_failed_at) "
        "VALUES (gen_random_uuid(), 'line', '22P02: invalid input', $1::timestamptz)",
        MONTH_START + timedelta(days=9),
    )
    return found


@pytest.fixture(scope="module")
def site(module_database_url: str, redis_url: str) -> Iterator[tuple[ThreadedGateway, Seed]]:
    saved = os.environ.get("TOLLBOOTH_ADMIN_TOKEN")
    os.environ["TOLLBOOTH_ADMIN_TOKEN"] = TOKEN
    try:
        config = {**portal_config(), "billing": {"stripe": {"window": "1h"}}}
        with ThreadedGateway(
            module_database_url, redis_url, tiers=TIERS, extra_config=config
        ) as gw:
            yield gw, gw.run(_seed(gw))
    finally:
        if saved is None:
            os.environ.pop("TOLLBOOTH_ADMIN_TOKEN", None)
        else:
            os.environ["TOLLBOOTH_ADMIN_TOKEN"] = saved


def _sign_in(driver: webdriver.Chrome, gw: ThreadedGateway, token: str = TOKEN) -> None:
    driver.delete_all_cookies()
    driver.get(f"{gw.base_url}/admin/dashboard/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    # The answer: the dashboard (a table of customers) or the form again with its error.
    WebDriverWait(driver, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "table.customers, p.error")
    )


def _open(
    driver: webdriver.Chrome, gw: ThreadedGateway, path: str = "/admin/dashboard", **query: str
) -> None:
    driver.get(f"{gw.base_url}{path}?{urlencode({**MONTH_QUERY, **query})}")
    if "/login" not in driver.current_url:
        assert (
            driver.find_element(By.CSS_SELECTOR, "[data-period]").get_attribute("data-period")
            == "custom"
        )  # October 2025, not the current month


def _headline(driver: webdriver.Chrome) -> dict[str, str]:
    return {
        e.get_attribute("data-metric") or "": e.get_attribute("data-value") or ""
        for e in driver.find_elements(By.CSS_SELECTOR, ".figure-value[data-metric]")
    }


def _rows(driver: webdriver.Chrome) -> dict[str, dict[str, str]]:
    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "tr[data-customer]"):
        cells = {
            c.get_attribute("data-metric") or "": c.get_attribute("data-value") or ""
            for c in row.find_elements(By.CSS_SELECTOR, "[data-metric]")
        }
        rows[row.get_attribute("data-customer") or ""] = cells
    return rows


def _no_console_errors(driver: webdriver.Chrome) -> None:
    errors = console_errors(driver)
    assert errors == [], errors


def test_wrong_token_is_refused(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw, "not-the-token")
    assert "That token is not the admin token." in chrome.page_source
    assert chrome.get_cookie("tb_admin") is None
    _open(chrome, gw)
    assert chrome.current_url.startswith(f"{gw.base_url}/admin/dashboard/login")
    assert [e["message"] for e in console_errors(chrome)] == [
        f"{gw.base_url}/admin/dashboard/login - Failed to load resource: the server "
        "responded with a status of 401 (Unauthorized)"
    ]  # the refusal, and nothing else


def test_table_figures_equal_the_rows_search_and_sort(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    _open(chrome, gw)
    head, rows = _headline(chrome), _rows(chrome)
    assert len(rows) == 44  # acme, beta, xss-co, 40 seeded, the harness's own
    assert int(head["requests"]) == sum(int(r["requests"]) for r in rows.values())
    assert Decimal(head["price_usd"]) == sum(Decimal(r["price_usd"]) for r in rows.values())
    pool = gw.app[keys.pool]
    raw = gw.run(raw_totals(pool, "acme"))
    assert int(rows["acme"]["requests"]) == raw["requests"]
    assert Decimal(rows["acme"]["price_usd"]) == raw["price_usd"]
    everyone = gw.run(
        pool.fetchrow(
            "SELECT count(*) AS n, sum(price_usd) AS price, sum(input_tokens) AS input "
            "FROM usage_events WHERE created_at >= $1 AND created_at < $2",
            MONTH_START,
            MONTH_START + timedelta(days=31),
        )
    )
    assert int(head["requests"]) == everyone["n"]
    assert int(head["input_tokens"]) == everyone["input"]
    assert Decimal(head["price_usd"]) == everyone["price"]
    # Search (server side) and sort by clicking a column.
    box = chrome.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("ACME CORP")
    box.submit()
    WebDriverWait(chrome, 10).until(lambda d: "q=ACME" in d.current_url)
    assert list(_rows(chrome)) == ["acme"]  # by name, case-insensitive
    _open(chrome, gw, q="cust-002")
    assert sorted(_rows(chrome)) == [f"cust-002{n}" for n in range(10)]
    _open(chrome, gw)
    chrome.find_element(By.CSS_SELECTOR, "a[data-sort-key=requests]").click()
    WebDriverWait(chrome, 10).until(lambda d: "sort=requests" in d.current_url)
    shown = [int(r["requests"]) for r in _rows(chrome).values()]
    assert shown == sorted(shown, reverse=True)
    _no_console_errors(chrome)


def test_xss_payload_stays_text(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    _open(chrome, gw, q="xss")
    cell = chrome.find_element(By.CSS_SELECTOR, f"tr[data-customer='{XSS_CUSTOMER}'] td")
    assert XSS_CUSTOMER_NAME in cell.text
    assert not chrome.find_elements(By.CSS_SELECTOR, "main img")
    with pytest.raises(NoAlertPresentException):
        chrome.switch_to.alert.text  # noqa: B018 (reading it is the check)
    assert "cus_ACMESECRET123" not in chrome.page_source and TOKEN not in chrome.page_source


def test_drill_down_issues_a_portal_link_that_opens(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    _open(chrome, gw)
    chrome.find_element(By.CSS_SELECTOR, "a[data-drill=acme]").click()
    WebDriverWait(chrome, 10).until(lambda d: "/admin/dashboard/customers/acme" in d.current_url)
    head = _headline(chrome)
    raw = gw.run(raw_totals(gw.app[keys.pool], "acme"))
    for name in HEADLINE:
        assert head[name] == str(raw[name]), name
    assert Decimal(head["price_usd"]) == raw["price_usd"]
    chrome.find_element(By.ID, "issue-portal-link").click()
    link = WebDriverWait(chrome, 10).until(lambda d: d.find_element(By.ID, "portal-link"))
    url = link.get_attribute("value") or ""
    assert url.startswith(f"{gw.base_url}/portal?token=")
    assert "token=" not in chrome.current_url  # the link is in the page, not the address
    chrome.get(url)
    assert chrome.current_url == f"{gw.base_url}/portal"
    assert "Acme Corp" in chrome.page_source
    _no_console_errors(chrome)


def test_a_form_without_its_csrf_value_is_refused(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    _open(chrome, gw)
    cookie = chrome.get_cookie("tb_admin")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    async def post(path: str) -> int:
        jar = aiohttp.CookieJar(unsafe=True)
        async with (
            aiohttp.ClientSession(cookie_jar=jar, cookies={"tb_admin": cookie["value"]}) as client,
            client.post(
                f"{gw.base_url}{path}", data={"project": ""}, allow_redirects=False
            ) as answer,
        ):
            return answer.status

    assert gw.run(post("/admin/dashboard/customers/acme/portal-link")) == 403
    assert gw.run(post("/admin/dashboard/logout")) == 403


async def _traffic(gw: ThreadedGateway, count: int) -> list[int]:
    """`count` chat requests with the harness customer's key (tier free: 60 a minute)."""
    assert gw.gateway is not None
    headers = {"Authorization": f"Bearer {gw.gateway.key}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as client:

        async def one() -> int:
            async with client.post(
                f"{gw.base_url}/v1/chat/completions", json=body, headers=headers
            ) as answer:
                await answer.read()
                return answer.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_system_panel_counts_requests_and_429s_by_tier(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    statuses = gw.run(_traffic(gw, 70))
    assert statuses.count(200) == 60 and statuses.count(429) == 10
    _sign_in(chrome, gw)
    _open(chrome, gw, "/admin/dashboard/system")
    row = chrome.find_element(By.CSS_SELECTOR, "tr[data-tier=free]")
    cells = {
        c.get_attribute("data-metric"): c.get_attribute("data-value")
        for c in row.find_elements(By.CSS_SELECTOR, "[data-metric]")
    }
    assert cells == {"tier-requests": "70", "tier-refused": "10"}
    assert chrome.find_element(By.CSS_SELECTOR, "tr[data-unpriced-model]")  # seeded: one
    drawn = chrome.execute_script(
        "return Array.from(document.querySelectorAll('canvas[data-chart]'))"
        ".map(c => window.Chart.getChart(c) !== undefined)"
    )
    assert drawn == [True, True]
    _no_console_errors(chrome)


def test_screenshot(chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    chrome.set_window_size(1280, 900)
    frame = 900 - int(chrome.execute_script("return window.innerHeight"))
    chrome.set_window_size(1280, 1100 + frame)
    _open(chrome, gw)
    DOCS.mkdir(exist_ok=True)
    assert chrome.save_screenshot(str(DOCS / "dashboard.png"))
    chrome.set_window_size(1280, 1700 + frame)
    _open(chrome, gw, "/admin/dashboard/system")
    assert "cus_ACMESECRET123" not in chrome.page_source
    assert chrome.save_screenshot(str(DOCS / "dashboard-system.png"))
    chrome.set_window_size(1280, 900)
    _no_console_errors(chrome)
    assert datetime.now(UTC) > MONTH_START  # the views are of a fixed past month
