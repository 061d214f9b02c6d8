"""The operator dashboard's customer table: every customer's usage over the page's period.

`customers_view` reads `storage.reports.dashboard_queries.customers_usage` (the same rows as
`tollbooth usage summary`, so the headline totals equal the all-customer summary of the same
window), then searches, sorts and pages in Python: 1,000 customers are a few hundred
microseconds of work once their sums are read, and the sums are the cost.

Share of limits used: the period's usage against the tier's monthly limits
(`requests_per_month` against requests, `tokens_per_month` against input + output tokens,
`spend_per_month_usd` against price_usd), the largest of the three; shown only when the
period is one whole calendar month (this month, last month, or a custom range that is one),
None otherwise or when the tier has no monthly limit. It is computed from stored usage,
not read from Redis: one query for every customer instead of one Redis call each, and it is
the number the month's invoice will show. Redis can differ by requests in flight (reserved,
not yet recorded); a customer's own page (the drill-down) shows Redis's live windows.

Pure apart from the one query; a bad sort key or order raises ValueError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from gateway.config import TierConfig
from gateway.web.periods import ViewPeriod
from storage.reports.dashboard_queries import CustomerUsage, customers_usage
from storage.reports.usage_queries import UsageTotals

PAGE_SIZE = 100
SORT_KEYS = (
    "customer",
    "name",
    "tier",
    "status",
    "requests",
    "tokens",
    "spend",
    "share",
    "last_activity",
)


@dataclass(frozen=True, slots=True)
class CustomerRow:
    customer_id: str
    name: str | None
    tier: str | None
    status: str  # "active" | "suspended" | "unknown" (usage without an account row)
    totals: UsageTotals
    share: Decimal | None  # the largest used/limit over the tier's monthly limits
    share_limit: str | None  # which limit that is
    last_activity: datetime | None

    @property
    def tokens(self) -> int:
        return self.totals.input_tokens + self.totals.output_tokens

    @property
    def share_percent(self) -> int | None:
        return None if self.share is None else int(self.share * 100)


@dataclass(frozen=True, slots=True)
class CustomersView:
    period: ViewPeriod
    totals: UsageTotals  # every customer's usage in the period (not only the shown page)
    customer_count: int
    matching: int  # rows matching the search
    rows: list[CustomerRow]  # the page
    page: int
    pages: int
    sort: str
    order: str
    q: str


def is_calendar_month(period: ViewPeriod) -> bool:
    """The period is one whole calendar month (first to last day)."""
    next_month = (period.first_day.replace(day=1) + timedelta(days=32)).replace(day=1)
    return period.first_day.day == 1 and period.last_day == next_month - timedelta(days=1)


def limit_share(totals: UsageTotals, tier: TierConfig | None) -> tuple[Decimal | None, str | None]:
    """(share, limit name) of the monthly limit `totals` uses most of; (None, None) if none."""
    if tier is None:
        return None, None
    limits = tier.limits
    candidates: list[tuple[Decimal, str]] = []
    for name, used, limit in (
        ("requests_per_month", Decimal(totals.requests), limits.requests_per_month),
        (
            "tokens_per_month",
            Decimal(totals.input_tokens + totals.output_tokens),
            limits.tokens_per_month,
        ),
        ("spend_per_month_usd", totals.price_usd, limits.spend_per_month_usd),
    ):
        if limit is None:
            continue
        share = (
            Decimal(1)
            if limit == 0 and used > 0
            else (Decimal(0) if limit == 0 else used / Decimal(limit))
        )
        candidates.append((share, name))
    if not candidates:
        return None, None
    return max(candidates)


def _row(usage: CustomerUsage, tiers: dict[str, TierConfig], monthly: bool) -> CustomerRow:
    share, limit = (
        limit_share(usage.totals, tiers.get(usage.tier or "")) if monthly else (None, None)
    )
    status = "unknown" if usage.tier is None else ("suspended" if usage.suspended else "active")
    return CustomerRow(
        usage.customer_id,
        usage.name,
        usage.tier,
        status,
        usage.totals,
        share,
        limit,
        usage.last_activity,
    )


_SORT_VALUES: dict[str, Callable[[CustomerRow], Any]] = {
    "customer": lambda r: r.customer_id,
    "name": lambda r: (r.name or "").lower(),
    "tier": lambda r: r.tier or "",
    "status": lambda r: r.status,
    "requests": lambda r: r.totals.requests,
    "tokens": lambda r: r.tokens,
    "spend": lambda r: r.totals.price_usd,
    "share": lambda r: r.share,
    "last_activity": lambda r: r.last_activity,
}


def sort_rows(rows: list[CustomerRow], sort: str, order: str) -> list[CustomerRow]:
    """Sorted by `sort` (ties by customer id, ascending); missing values last either way."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort: expected one of {', '.join(SORT_KEYS)}")
    if order not in ("asc", "desc"):
        raise ValueError("order: expected asc or desc")
    value = _SORT_VALUES[sort]
    by_id = sorted(rows, key=lambda r: r.customer_id)
    present = [r for r in by_id if value(r) is not None]
    missing = [r for r in by_id if value(r) is None]
    present.sort(key=value, reverse=order == "desc")  # stable: ties stay by id
    return present + missing


def total(rows: list[CustomerRow]) -> UsageTotals:
    """The rows' totals added column by column (one pass per column, not per row)."""
    return UsageTotals(
        **{
            name: sum(getattr(row.totals, name) for row in rows)
            for name in UsageTotals.__dataclass_fields__
        }
    )


def matches(row: CustomerRow, q: str) -> bool:
    needle = q.casefold()
    return needle in row.customer_id.casefold() or needle in (row.name or "").casefold()


async def customers_view(
    pool: asyncpg.Pool,
    tiers: dict[str, TierConfig],
    period: ViewPeriod,
    *,
    q: str = "",
    sort: str = "spend",
    order: str = "desc",
    page: int = 1,
    page_size: int = PAGE_SIZE,
) -> CustomersView:
    usages = await customers_usage(pool, since=period.since, until=period.until)
    monthly = is_calendar_month(period)
    rows = [_row(usage, tiers, monthly) for usage in usages]
    totals = total(rows)
    q = q.strip()
    found = sort_rows([row for row in rows if not q or matches(row, q)], sort, order)
    pages = max(1, -(-len(found) // page_size))
    page = min(max(page, 1), pages)
    shown = found[(page - 1) * page_size : page * page_size]
    return CustomersView(period, totals, len(rows), len(found), shown, page, pages, sort, order, q)
