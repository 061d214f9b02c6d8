"""What each customer used per fixed time window, in the whole numbers Stripe meters take.

Windows are `window_s` long and aligned to the Unix epoch (Postgres `date_bin`), so with a
window that divides a day they line up with UTC days and months. Per (customer, window):

    input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens
        sums over every recorded event (a provider error carries tokens only when the
        provider reported usage, and is then charged for them)
    requests      events with status_code < 400: the requests that carry the per-request fee
    price_micros  price_usd summed exactly (NUMERIC), then times 1,000,000 and rounded half to
                  even, once per window; unpriced events (price_usd NULL) add nothing

Rounding once per window, never per event, keeps the error under half a micro-dollar per
window and makes a window's total independent of how its events were batched. Imported
events (`tollbooth usage import`) can be counted apart (`imported=`): Stripe is sent only
those from `billing.stripe.import_since` on. Database errors are asyncpg's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Literal

import asyncpg

from pricing.cost import MICROS_PER_USD

DIMENSIONS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "requests",
    "price_micros",
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class WindowUsage:
    customer_id: str
    window_start: datetime
    window_end: datetime
    values: dict[str, int]  # every name in DIMENSIONS
    price_usd: Decimal  # the exact sum behind price_micros


def usd_to_micros(amount: Decimal) -> int:
    """Whole micro-dollars in `amount`, rounded half to even (exact: 80 digits of precision)."""
    with localcontext() as ctx:
        ctx.prec = 80
        return int((amount * MICROS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def window_floor(moment: datetime, window_s: int) -> datetime:
    """The start of the window holding `moment`."""
    seconds = int((moment - EPOCH).total_seconds() // window_s) * window_s
    return EPOCH + timedelta(seconds=seconds)


_WINDOWS_SQL = """
SELECT customer_id,
       date_bin($1::interval, created_at, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS window_start,
       coalesce(sum(input_tokens), 0)::bigint        AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint       AS output_tokens,
       coalesce(sum(cached_input_tokens), 0)::bigint AS cached_input_tokens,
       coalesce(sum(cache_write_tokens), 0)::bigint  AS cache_write_tokens,
       coalesce(sum(reasoning_tokens), 0)::bigint    AS reasoning_tokens,
       count(*) FILTER (WHERE status_code < 400)     AS requests,
       coalesce(sum(price_usd), 0)                   AS price_usd
FROM usage_events
WHERE created_at >= $2 AND created_at < $3
  AND ($4::text IS NULL OR customer_id = $4)
  AND {imported}
GROUP BY customer_id, window_start
ORDER BY window_start, customer_id
"""


# Which events count, by their import mark (`metadata.imported`, storage/imports/run.py)
# and $5, the instant imported events are billed from (NULL: never).
_IMPORTED = {
    "all": "($5::timestamptz IS NULL OR true)",  # $5 unused, but typed
    "billable": "(metadata->>'imported' IS NULL OR created_at >= $5::timestamptz)",
    "held_back": (
        "metadata->>'imported' IS NOT NULL AND ($5::timestamptz IS NULL OR created_at < $5)"
    ),
}
Imported = Literal["all", "billable", "held_back"]


async def window_usage(
    pool: asyncpg.Pool,
    *,
    start: datetime,
    end: datetime,
    window_s: int,
    customer_id: str | None = None,
    imported: Imported = "all",
    import_since: datetime | None = None,
) -> list[WindowUsage]:
    """Usage per (customer, window) for events in [start, end), ordered by window then customer.

    `start` and `end` should be window boundaries, or the first and last windows are partial.
    `imported`: every event (`all`), those Stripe is sent (`billable`: the gateway's own and
    imported ones from `import_since` on; none imported when it is None) or the imported
    ones it is not (`held_back`).
    """
    rows = await pool.fetch(
        _WINDOWS_SQL.format(imported=_IMPORTED[imported]),
        timedelta(seconds=window_s),
        start,
        end,
        customer_id,
        import_since,
    )
    found = []
    for row in rows:
        price_usd: Decimal = row["price_usd"]
        values = {name: int(row[name]) for name in DIMENSIONS if name != "price_micros"}
        values["price_micros"] = usd_to_micros(price_usd)
        window_start: datetime = row["window_start"]
        found.append(
            WindowUsage(
                customer_id=row["customer_id"],
                window_start=window_start,
                window_end=window_start + timedelta(seconds=window_s),
                values=values,
                price_usd=price_usd,
            )
        )
    return found
