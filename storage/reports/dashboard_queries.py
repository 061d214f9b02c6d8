"""Every customer's usage over one window, for the operator dashboard's customer table.

`customers_usage` sums `storage.reports.daily_rollups.daily_rows_sql` over [since, until] per
customer: daily rollups for the whole UTC days, and for the partial days at the edges the
same rows as `tollbooth usage summary` and `/usage/*` read
(`storage.reports.rollups.usage_rows_sql`:
hourly rollups, raw events for partial hours). The daily rows equal their hours, so a
customer's figures equal that customer's usage summary of the same window, and their sum
equals the all-customer summary. It returns one row per customer in `customers` (zeros when
the window holds nothing) plus one per customer id that has usage but no account row any
more, so no usage is left out of the total.

`last_activity` is the newest event's `created_at` of each customer, whatever the window:
the customer's newest hourly rollup gives the hour (one backward probe of the rollups' key),
then one backward probe of (customer_id, created_at) in the partition holding that hour
finds the event; None for a customer without a retained event in that hour's partition.
Money is exact Decimal, counts int; nothing is rounded. Database errors are asyncpg's, unchanged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from storage.reports.daily_rollups import daily_rows_sql
from storage.reports.rollups import ROW_COUNTS, ROW_MONEY, Params
from storage.reports.usage_queries import UsageTotals

_SUMS = ", ".join(
    [f"sum(u.{name})::bigint AS {name}" for name in ROW_COUNTS]
    + [f"sum(u.{name})::numeric AS {name}" for name in ROW_MONEY]
)
_COALESCED = ", ".join(
    [f"coalesce(t.{name}, 0)::bigint AS {name}" for name in ROW_COUNTS]
    + [f"coalesce(t.{name}, 0)::numeric AS {name}" for name in ROW_MONEY]
)


@dataclass(frozen=True, slots=True)
class CustomerUsage:
    customer_id: str
    name: str | None
    tier: str | None  # None: usage of a customer id with no account row
    suspended: bool
    totals: UsageTotals
    last_activity: datetime | None


async def customers_usage(
    pool: asyncpg.Pool, *, since: datetime, until: datetime
) -> list[CustomerUsage]:
    """One row per customer (by id) with its usage in [since, until] and its last activity."""
    params = Params()
    rows_sql = daily_rows_sql(since, until, params)
    query = f"""
        WITH t AS (
            SELECT u.customer_id, {_SUMS} FROM ({rows_sql}) AS u GROUP BY u.customer_id
        )
        SELECT coalesce(c.id, t.customer_id) AS customer_id, c.name, c.tier,
               coalesce(c.suspended, false) AS suspended, {_COALESCED}
        FROM customers c FULL JOIN t ON t.customer_id = c.id
        ORDER BY 1
    """
    # Two connections at once: the sums and the last events do not wait for each other.
    rows, last = await asyncio.gather(pool.fetch(query, *params.values), last_activity(pool))
    return [
        CustomerUsage(
            customer_id=row["customer_id"],
            name=row["name"],
            tier=row["tier"],
            suspended=row["suspended"],
            totals=UsageTotals.from_row(row),
            last_activity=last.get(row["customer_id"]),
        )
        for row in rows
    ]


async def last_activity(pool: asyncpg.Pool) -> dict[str, datetime]:
    """customer id -> created_at of its newest retained event, for every customer row."""
    rows = await pool.fetch(
        """
        SELECT c.id,
               (SELECT max(e.created_at) FROM usage_events e
                WHERE e.customer_id = c.id
                  AND e.created_at >= (SELECT max(h.hour) FROM usage_rollups_hourly h
                                       WHERE h.customer_id = c.id)) AS last_at
        FROM customers c
        """
    )
    return {row["id"]: row["last_at"] for row in rows if row["last_at"] is not None}
