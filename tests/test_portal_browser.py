"""The usage portal in a real headless Chromium: sign-in both ways, the figures against the
raw rows, filters, paging and exports, another customer's data never shown, an XSS payload
kept as text, no CSP violation in the console, and a screenshot (docs/portal.png)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from gateway import keys
from gateway.web import keys as web_keys
from gateway.web.portal_links import issue_link, link_url
from tests.browser import chrome, console_errors, screenshots_dir
from tests.portal_fixtures import (
    BETA_MODEL,
    BETA_PROJECT,
    MONTH_QUERY,
    MONTH_START,
    PORTAL_TIERS,
    XSS_NAME,
    XSS_PROJECT,
    Seed,
    ThreadedGateway,
    portal_config,
    raw_totals,
    seed_portal,
)

pytestmark = pytest.mark.slow

__all__ = ["chrome"]  # the fixture, used by name

DOCS = screenshots_dir()
HEADLINE = ("requests", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")


@pytest.fixture(scope="module")
def site(module_database_url: str, redis_url: str) -> Iterator[tuple[ThreadedGateway, Seed]]:
    with ThreadedGateway(
        module_database_url, redis_url, tiers=PORTAL_TIERS, extra_config=portal_config()
    ) as gw:
        yield gw, gw.run(seed_portal(gw.app))


def _sign_in(
    driver: webdriver.Chrome,
    gw: ThreadedGateway,
    customer: str = "acme",
    project: str | None = None,
) -> None:
    driver.delete_all_cookies()
    token, _ = issue_link(
        gw.app[web_keys.link_signer],
        customer,
        project,
        ttl=timedelta(hours=1),
        now=datetime.now(UTC),
    )
    driver.get(link_url(gw.base_url, token))
    assert driver.current_url == f"{gw.base_url}/portal"  # the token left the address bar


def _open(driver: webdriver.Chrome, gw: ThreadedGateway, path: str, **query: str) -> None:
    driver.get(f"{gw.base_url}{path}?{urlencode(query)}")


def _figures(driver: webdriver.Chrome) -> dict[str, str]:
    return {
        e.get_attribute("data-metric") or "": e.get_attribute("data-value") or ""
        for e in driver.find_elements(By.CSS_SELECTOR, "[data-metric]")
    }


def _assert_figures(figures: dict[str, str], expected: dict[str, Any]) -> None:
    for name in HEADLINE:
        assert figures[name] == str(expected[name]), name
    assert Decimal(figures["price_usd"]) == expected["price_usd"]
    assert figures["price_usd"] == format(expected["price_usd"], "f")


def _no_console_errors(driver: webdriver.Chrome) -> None:
    errors = console_errors(driver)
    assert errors == [], errors


def test_link_sign_in_shows_figures_equal_to_the_rows(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    _open(chrome, gw, "/portal", **MONTH_QUERY)
    figures = _figures(chrome)
    _assert_figures(figures, gw.run(raw_totals(gw.app[keys.pool], "acme")))
    assert figures["quota-requests_per_month-limit"] == "10000"
    assert figures["quota-tokens_per_month-limit"] == "50000000"
    assert figures["quota-spend_per_month_usd-limit"] == "250.00"
    assert "quota-requests_per_minute-used" in figures
    assert figures["plan-base_price_usd"] == "49"
    assert chrome.find_elements(By.CSS_SELECTOR, "canvas[data-chart]")
    _no_console_errors(chrome)


def test_key_sign_in_opens_the_keys_project(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, seed = site
    chrome.delete_all_cookies()
    chrome.get(f"{gw.base_url}/portal/login")
    chrome.find_element(By.NAME, "key").send_keys(seed.acme_web_key)
    chrome.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(chrome, 10).until(lambda d: d.current_url == f"{gw.base_url}/portal")
    _open(chrome, gw, "/portal", **MONTH_QUERY)
    _assert_figures(_figures(chrome), gw.run(raw_totals(gw.app[keys.pool], "acme", "web")))
    assert seed.acme_web_key not in chrome.page_source
    assert "batch" not in chrome.page_source  # another project of the same customer
    _no_console_errors(chrome)


def _cookie_header(driver: webdriver.Chrome) -> dict[str, str]:
    cookie = driver.get_cookie("tb_portal")
    assert cookie is not None
    return {"Cookie": f"tb_portal={cookie['value']}"}


def _fetch(gw: ThreadedGateway, url: str, headers: dict[str, str]) -> str:
    async def get() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers=headers) as response,
        ):
            assert response.status == 200, response.status
            return await response.text()

    return gw.run(get())


async def _rows(pool: asyncpg.Pool, where: str, *args: Any) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            f"SELECT * FROM usage_events WHERE {where} ORDER BY created_at DESC, id DESC", *args
        )
    )


def test_events_filters_paging_and_exports_match_the_rows(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    query = {**MONTH_QUERY, "project": "web", "model": "gpt-4o-mini", "status": "ok"}
    _open(chrome, gw, "/portal/events", **query)
    expected = gw.run(
        _rows(
            gw.app[keys.pool],
            "customer_id = 'acme' AND project_id = 'web' AND model = "
            "'gpt-4o-mini' AND status_code < 400 AND created_at >= $1 AND created_at < $2",
            MONTH_START,
            MONTH_START + timedelta(days=31),
        )
    )
    assert expected
    shown: list[str] = []
    while True:
        shown += [
            e.get_attribute("data-event-id") or ""
            for e in chrome.find_elements(By.CSS_SELECTOR, "tr[data-event-id]")
        ]
        following = chrome.find_elements(By.CSS_SELECTOR, "a[data-next-page]")
        if not following:
            break
        previous = chrome.current_url
        following[0].click()
        WebDriverWait(chrome, 10).until(lambda d, was=previous: d.current_url != was)
    assert shown == [str(row["id"]) for row in expected]

    estimated = gw.run(_rows(gw.app[keys.pool], "usage_source = 'estimated'"))
    _open(chrome, gw, "/portal/events", **{**MONTH_QUERY, "project": "web", "model": "gpt-4o"})
    row = chrome.find_element(By.CSS_SELECTOR, f"tr[data-event-id='{estimated[0]['id']}']")
    assert "estimated" in (row.get_attribute("class") or "") and "estimated" in row.text

    headers = _cookie_header(chrome)
    csv_link = chrome.find_element(By.CSS_SELECTOR, "a[data-export=csv]").get_attribute("href")
    json_link = chrome.find_element(By.CSS_SELECTOR, "a[data-export=json]")
    all_rows = gw.run(
        _rows(
            gw.app[keys.pool],
            "customer_id = 'acme' AND project_id = 'web' AND model = 'gpt-4o' "
            "AND created_at >= $1 AND created_at < $2",
            MONTH_START,
            MONTH_START + timedelta(days=31),
        )
    )
    assert csv_link is not None
    exported = list(csv.DictReader(io.StringIO(_fetch(gw, csv_link, headers))))
    assert [r["id"] for r in exported] == [str(r["id"]) for r in reversed(all_rows)]
    assert [r["price_usd"] for r in exported] == [
        format(r["price_usd"].normalize(), "f") if r["price_usd"] else "0"
        for r in reversed(all_rows)
    ]
    body = json.loads(_fetch(gw, json_link.get_attribute("href") or "", headers))
    assert [e["id"] for e in body["events"]] == [r["id"] for r in exported]
    assert [e["input_tokens"] for e in body["events"]] == [int(r["input_tokens"]) for r in exported]


def test_another_customers_data_never_appears(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    for path, query in (
        ("/portal", MONTH_QUERY),
        ("/portal/events", MONTH_QUERY),
        ("/portal", {**MONTH_QUERY, "customer": "beta"}),
        ("/portal/events", {**MONTH_QUERY, "project": BETA_PROJECT}),
        ("/portal/events", {**MONTH_QUERY, "customer": "beta", "customer_id": "beta"}),
        ("/portal/invoices", {"month": "2025-10", "customer": "beta"}),
    ):
        _open(chrome, gw, path, **query)
        page = chrome.page_source  # a filter's own value is echoed in its input: not data
        assert BETA_MODEL not in page and "Beta LLC" not in page and "beta key" not in page
        assert BETA_PROJECT not in chrome.find_element(By.TAG_NAME, "body").text
    assert chrome.find_elements(By.CSS_SELECTOR, "tr[data-event-id]") == []
    headers = _cookie_header(chrome)
    for query in (
        {**MONTH_QUERY, "project": BETA_PROJECT},
        {**MONTH_QUERY, "customer": "beta", "project": ""},
    ):
        text = _fetch(
            gw, f"{gw.base_url}/portal/export?{urlencode({**query, 'format': 'csv'})}", headers
        )
        rows = list(csv.DictReader(io.StringIO(text)))
        assert {r["customer_id"] for r in rows} <= {"acme"} and BETA_MODEL not in text
        body = json.loads(
            _fetch(
                gw, f"{gw.base_url}/portal/export?{urlencode({**query, 'format': 'json'})}", headers
            )
        )
        assert body["customer_id"] == "acme"
        assert {e["customer_id"] for e in body["events"]} <= {"acme"}
        assert len(body["events"]) == len(rows)
        if query.get("project") == BETA_PROJECT:
            assert rows == []


def test_customer_strings_stay_text(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    for path, query in (
        ("/portal", MONTH_QUERY),
        ("/portal/events", {**MONTH_QUERY, "project": XSS_PROJECT}),
    ):
        _open(chrome, gw, path, **query)
        assert chrome.find_elements(By.TAG_NAME, "img") == []
        with pytest.raises(NoAlertPresentException):
            chrome.switch_to.alert.text  # noqa: B018
        body = chrome.find_element(By.TAG_NAME, "body").text
        assert XSS_PROJECT in body
        if path == "/portal/events":
            assert XSS_NAME in body  # the key's name, shown literally
    _no_console_errors(chrome)


def _local_day_totals(gw: ThreadedGateway, tz: str, first: date, last: date) -> dict[str, Decimal]:
    zone = ZoneInfo(tz)
    since = datetime.combine(first, time(0), zone)
    until = datetime.combine(last + timedelta(days=1), time(0), zone)

    async def query() -> dict[str, Decimal]:
        rows = await gw.app[keys.pool].fetch(
            "SELECT (created_at AT TIME ZONE $4)::date AS day, sum(price_usd) AS price "
            "FROM usage_events WHERE customer_id = $1 AND created_at >= $2 "
            "AND created_at < $3 GROUP BY 1",
            "acme",
            since,
            until,
            tz,
        )
        return {row["day"].isoformat(): row["price"] for row in rows}

    return gw.run(query())


@pytest.mark.parametrize("tz", ["Europe/Paris", "Asia/Kolkata", "UTC"])
def test_time_zone_days_match_the_export(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed], tz: str
) -> None:
    gw, _ = site
    _sign_in(chrome, gw)
    query = {"period": "custom", "since": "2025-10-05", "until": "2025-10-26", "tz": tz}
    _open(chrome, gw, "/portal", **query)
    assert chrome.find_element(By.CSS_SELECTOR, "[data-tz]").text == tz
    expected = _local_day_totals(gw, tz, date(2025, 10, 5), date(2025, 10, 26))
    for chart_id in ("chart-spend-model-data", "chart-spend-key-data"):
        chart = json.loads(
            chrome.find_element(By.ID, chart_id).get_attribute("textContent") or "{}"
        )
        per_day: dict[str, Decimal] = {}
        for series in chart["series"]:
            for label, value in zip(chart["labels"], series["values"], strict=True):
                per_day[label] = per_day.get(label, Decimal(0)) + Decimal(value)
        assert {d: v for d, v in per_day.items() if v} == {
            d: v for d, v in expected.items() if v
        }, chart_id
    keys_chart = json.loads(
        chrome.find_element(By.ID, "chart-spend-key-data").get_attribute("textContent") or "{}"
    )
    assert {s["label"] for s in keys_chart["series"]} == {"web backend", "ops", XSS_NAME}
    figures = _figures(chrome)
    assert Decimal(figures["price_usd"]) == sum(expected.values(), Decimal(0))
    exported = list(
        csv.DictReader(
            io.StringIO(
                _fetch(
                    gw,
                    f"{gw.base_url}/portal/export?{urlencode({**query, 'format': 'csv'})}",
                    _cookie_header(chrome),
                )
            )
        )
    )
    assert len(exported) == int(figures["requests"])
    assert sum((Decimal(r["price_usd"] or "0") for r in exported), Decimal(0)) == Decimal(
        figures["price_usd"]
    )


async def _live_traffic(gw: ThreadedGateway, key: str, requests: int) -> None:
    """Forget acme's quota counters, then send `requests` real requests with its key."""
    redis = gw.app[keys.redis_client]
    async for name in redis.scan_iter(match="*{acme}*"):
        await redis.delete(name)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            async with session.post(
                f"{gw.base_url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
            ) as response:
                assert response.status == 200


def test_quota_figures_and_screenshot(
    chrome: webdriver.Chrome, site: tuple[ThreadedGateway, Seed]
) -> None:
    gw, seed = site
    gw.run(_live_traffic(gw, seed.acme_key, 3))
    _sign_in(chrome, gw)
    _open(chrome, gw, "/portal", **MONTH_QUERY)
    figures = _figures(chrome)
    assert figures["quota-requests_per_month-used"] == "3"
    assert int(figures["quota-tokens_per_month-used"]) > 0
    drawn = chrome.execute_script(
        "return Array.from(document.querySelectorAll('canvas[data-chart]'))"
        ".map(c => window.Chart.getChart(c) !== undefined)"
    )
    assert drawn == [True, True, True, True]
    _no_console_errors(chrome)
    # A 1280x900 viewport: the window is larger by the browser's own frame.
    chrome.set_window_size(1280, 900)
    frame = 900 - int(chrome.execute_script("return window.innerHeight"))
    chrome.set_window_size(1280, 900 + frame)
    _open(chrome, gw, "/portal", **MONTH_QUERY)
    DOCS.mkdir(exist_ok=True)
    assert chrome.save_screenshot(str(DOCS / "portal.png"))
    chrome.set_window_size(1280, 900)
