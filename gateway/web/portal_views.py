"""What the usage pages show for one customer (or one of its projects) over a period.

Each view (`overview`, `events_view`) takes `(app, customer_id, project_id | None, period)`
and returns the template's context, whoever asks: the customer portal with a customer
session, the operator dashboard with an admin session. Every figure comes from the queries
the CLI and /usage/* use (`storage.reports.usage_queries.usage_totals`,
`storage.reports.rollups.usage_rows_sql`
through `storage.reports.breakdown`); quota windows from `QuotaPolicy.status` (Redis, what the
gateway enforces); the plan from the tier's config. Money stays Decimal; charts receive it as exact
strings. A project view shows that project's usage only: quotas, plan and invoices are the
customer's as a whole, so they are left out of it.

Failure: Postgres errors propagate (the page answers 500); a Redis outage leaves the quota
cards out with a note, the rest of the page still renders.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from aiohttp import web

from gateway import keys
from gateway.errors import ServiceUnavailableError
from gateway.quota_status import WindowStatus
from gateway.runtime import plans_of
from gateway.web.periods import ViewPeriod
from storage.accounts import KEY_PREFIX
from storage.reports.breakdown import (
    DayGroupUsage,
    GroupBy,
    StatusFilter,
    events_page,
    usage_by_day,
    usage_by_day_and_key,
    usage_by_key,
)
from storage.reports.rollups import UsageFilter
from storage.reports.usage_queries import UsageTotals, decimal_str, usage_totals

HEADLINE = (
    ("requests", "Requests"),
    ("input_tokens", "Input tokens"),
    ("output_tokens", "Output tokens"),
    ("cached_input_tokens", "Cached input tokens"),
    ("reasoning_tokens", "Reasoning tokens"),
)
_LIMIT_LABELS = {
    "requests_per_minute": "Requests per minute",
    "tokens_per_minute": "Tokens per minute",
    "requests_per_month": "Requests this month",
    "tokens_per_month": "Tokens this month",
    "spend_per_month_usd": "Spend this month (USD)",
}
_STATUS = {"ok": "ok", "approaching_limit": "approaching", "over_limit": "over"}


def quota_card(window: WindowStatus) -> dict[str, Any]:
    assert window.limit is not None
    percent = 100 if window.limit <= 0 else min(100, int(window.used * 100 / window.limit))
    return {
        "name": window.name,
        "label": _LIMIT_LABELS.get(window.name, window.name),
        "used": window.used,
        "limit": window.limit,
        "money": window.unit == "usd",
        "status": _STATUS[window.status],
        "percent_step": percent - percent % 5,
    }


async def key_names(app: web.Application, customer_id: str) -> dict[str, str]:
    """key_id -> the key's name, else its visible prefix (never the key itself)."""
    found = await app[keys.accounts].list_keys(customer_id)
    return {key.id: key.name or f"{KEY_PREFIX}{key.prefix}…" for key in found}


def _series(period: ViewPeriod, rows: list[DayGroupUsage], unit: str, value: str) -> dict[str, Any]:
    """Chart data: one series per group, one exact value per day (zeros included)."""
    days = period.days()
    index = {day: n for n, day in enumerate(days)}
    per_group: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * len(days))
    for row in rows:
        totals = row.totals
        amount = (
            totals.price_usd
            if value == "price_usd"
            else Decimal(totals.input_tokens + totals.output_tokens)
        )
        per_group[row.group or "(no project)"][index[row.day]] += amount
    return {
        "labels": [day.isoformat() for day in days],
        "unit": unit,
        "series": [
            {"label": group, "values": [decimal_str(v) for v in values]}
            for group, values in sorted(per_group.items())
        ],
    }


def _group_totals(rows: list[DayGroupUsage]) -> list[tuple[str | None, UsageTotals]]:
    sums: dict[str | None, UsageTotals] = {}
    for row in rows:
        sums[row.group] = sums.get(row.group, UsageTotals()) + row.totals
    return sorted(sums.items(), key=lambda item: (item[0] is not None, item[0] or ""))


async def overview(
    app: web.Application, customer_id: str, project_id: str | None, period: ViewPeriod
) -> dict[str, Any]:
    pool = app[keys.pool]
    settings = app[keys.runtime].current.settings
    customer = await app[keys.accounts].get_customer(customer_id)
    if customer is None:
        raise web.HTTPNotFound()
    usage_filter = UsageFilter(customer_id, project_id)
    since, until = period.since, period.until
    totals = await usage_totals(pool, since=since, until=until, usage_filter=usage_filter)

    async def by_day(group_by: GroupBy) -> list[DayGroupUsage]:
        return await usage_by_day(
            pool,
            since=since,
            until=until,
            usage_filter=usage_filter,
            tz_name=period.tz_name,
            group_by=group_by,
            from_rollups=period.rollups_align,
        )

    by_model = await by_day("model")
    by_project = await by_day("project_id")
    by_key = await usage_by_key(pool, since=since, until=until, usage_filter=usage_filter)
    names = await key_names(app, customer_id)
    by_day_key = [
        DayGroupUsage(row.day, names.get(row.group or "", row.group), row.totals)
        for row in await usage_by_day_and_key(
            pool, since=since, until=until, usage_filter=usage_filter, tz_name=period.tz_name
        )
    ]

    quotas: list[dict[str, Any]] = []
    quotas_note = None
    plan = None
    tier = settings.tiers.get(customer.tier)
    if project_id is None and tier is not None:
        try:
            status = await app[keys.quotas].status(customer_id, tier)
            quotas = [quota_card(w) for w in status.windows if w.limit is not None]
        except ServiceUnavailableError:
            quotas_note = "Quota figures are unavailable right now; usage below is complete."
        plan = plans_of(settings).get(customer.tier)
    return {
        "customer": customer,
        "project_id": project_id,
        "period": period,
        "tz_name": period.tz_name,
        "totals": totals,
        "headline": HEADLINE,
        "quotas": quotas,
        "quotas_note": quotas_note,
        "plan": plan,
        "chart_spend_model": _series(period, by_model, "usd", "price_usd"),
        "chart_tokens_model": _series(period, by_model, "tokens", "tokens"),
        "chart_spend_project": _series(period, by_project, "usd", "price_usd"),
        "chart_spend_key": _series(period, by_day_key, "usd", "price_usd"),
        "models": _group_totals(by_model),
        "projects": _group_totals(by_project),
        "keys": [(names.get(k.key_id, k.key_id), k.totals) for k in by_key],
    }


async def events_view(
    app: web.Application,
    customer_id: str,
    project_id: str | None,
    period: ViewPeriod,
    *,
    model: str | None = None,
    status: StatusFilter = None,
    cursor: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """A page of events, newest first: `rows` (each row's columns plus `time_text` in the
    period's zone), `next_cursor` (None on the last page) and `key_names`. A cursor this
    gateway did not issue raises ValueError."""
    rows, following = await events_page(
        app[keys.pool],
        since=period.since,
        until=period.until,
        usage_filter=UsageFilter(customer_id, project_id, model),
        status=status,
        limit=limit,
        cursor=cursor,
    )
    shown = [
        {
            **dict(row),
            "time_text": row["created_at"].astimezone(period.tz).strftime("%Y-%m-%d %H:%M:%S"),
        }
        for row in rows
    ]
    return {"rows": shown, "next_cursor": following, "key_names": await key_names(app, customer_id)}
