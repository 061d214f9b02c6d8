"""Read-side reports over `usage_events`: the usage summary (SPEC §8).

`usage_summary` totals the events of the last `days` days (created_at in [now - days, now]),
for one customer or for all, overall and per model. Token counts are summed in SQL as integers
and money as NUMERIC, arriving here as exact Decimals; nothing is rounded. An event without a
price (`pricing.unknown_model: allow_unpriced`) adds 0 to the money and is counted in
`unpriced_requests`, so a report never hides it. Every event counts as a request, whatever its
status code: provider errors were forwarded and are recorded (SPEC §6).

`UsageSummary.to_json()` is the stable JSON shape printed by `tollbooth usage summary --format
json` and served by `GET /usage/summary`: money as decimal strings (`"0.0123"`, `"0"`).
Database errors pass through unchanged (asyncpg's).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

MAX_DAYS = 3660


def decimal_str(value: Decimal) -> str:
    """An exact decimal string without exponent or trailing zeros: "1.5", "0", "0.0000123"."""
    if value == 0:
        return "0"
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class UsageTotals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    price_usd: Decimal = Decimal(0)
    unpriced_requests: int = 0

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            requests=self.requests + other.requests,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            price_usd=self.price_usd + other.price_usd,
            unpriced_requests=self.unpriced_requests + other.unpriced_requests,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": decimal_str(self.cost_usd),
            "price_usd": decimal_str(self.price_usd),
            "unpriced_requests": self.unpriced_requests,
        }


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str
    totals: UsageTotals

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, **self.totals.to_json()}


@dataclass(frozen=True, slots=True)
class UsageSummary:
    customer_id: str | None
    period_days: int
    since: datetime
    until: datetime
    totals: UsageTotals
    by_model: list[ModelUsage]

    def to_json(self) -> dict[str, Any]:
        """The SPEC §8 shape, plus cache/reasoning tokens, unpriced_requests and the window."""
        return {
            "customer_id": self.customer_id,
            "period_days": self.period_days,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            **self.totals.to_json(),
            "by_model": [model.to_json() for model in self.by_model],
        }


_SUMMARY_BY_MODEL = """
SELECT model,
       count(*)                                          AS requests,
       coalesce(sum(input_tokens), 0)::bigint            AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint           AS output_tokens,
       coalesce(sum(cached_input_tokens), 0)::bigint     AS cached_input_tokens,
       coalesce(sum(cache_write_tokens), 0)::bigint      AS cache_write_tokens,
       coalesce(sum(reasoning_tokens), 0)::bigint        AS reasoning_tokens,
       coalesce(sum(cost_usd), 0)::numeric               AS cost_usd,
       coalesce(sum(price_usd), 0)::numeric              AS price_usd,
       count(*) FILTER (WHERE price_usd IS NULL)         AS unpriced_requests
FROM usage_events
WHERE created_at >= $1 AND created_at <= $2
  AND ($3::text IS NULL OR customer_id = $3)
GROUP BY model
ORDER BY model
"""


async def usage_summary(
    pool: asyncpg.Pool,
    *,
    days: int,
    customer_id: str | None,
    now: datetime | None = None,
) -> UsageSummary:
    """Usage of the last `days` days up to `now` (default: the current time, UTC)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}, got {days}")
    until = now if now is not None else datetime.now(UTC)
    if until.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    since = until - timedelta(days=days)
    rows = await pool.fetch(_SUMMARY_BY_MODEL, since, until, customer_id)
    by_model = [
        ModelUsage(
            model=row["model"],
            totals=UsageTotals(
                requests=row["requests"],
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                cached_input_tokens=row["cached_input_tokens"],
                cache_write_tokens=row["cache_write_tokens"],
                reasoning_tokens=row["reasoning_tokens"],
                cost_usd=row["cost_usd"],
                price_usd=row["price_usd"],
                unpriced_requests=row["unpriced_requests"],
            ),
        )
        for row in rows
    ]
    totals = sum((m.totals for m in by_model), UsageTotals())
    return UsageSummary(
        customer_id=customer_id,
        period_days=days,
        since=since,
        until=until,
        totals=totals,
        by_model=by_model,
    )
