"""One month of metering, three ways: what we recorded, what billing_sync says was sent, and
(optionally) what Stripe's meter event summaries hold; one line per customer and meter.

Our side is storage.reports.usage_windows over the month's windows (what the sync sends: imported
events only from `import_since` on; the other imported usage is reported apart, as
`imported`), with price_micros rounded per window exactly as the sync sends it, so a fully
synced month shows no difference. Sync states
come from billing_sync rows of the current identifier version whose window starts in the month:
`sent`, `unsent` (pending or failed: the next sync run sends them) and `skipped` (never sendable).
Stripe's side is the sum of its event summaries for the customer's current stripe_customer_id
over [month start, next month start); Stripe aggregates asynchronously, so a just-sent event
can be missing there for a while, and it also counts events sent by anything else.

Failure semantics: database errors are asyncpg's; Stripe errors are storage.stripe.client's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

import asyncpg

from storage.reports.usage_windows import DIMENSIONS, Imported, window_usage


class MeterTotals(Protocol):
    async def meter_event_total(
        self, event_name: str, stripe_customer_id: str, start: datetime, end: datetime
    ) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class ReconcileLine:
    customer_id: str
    stripe_customer_id: str | None
    dimension: str
    event_name: str
    ours: int
    sent: int
    unsent: int
    skipped: int
    stripe: Decimal | None  # None: not asked, or Stripe has no such meter
    imported: int = 0  # imported usage never sent (before import_since), not in `ours`

    @property
    def difference(self) -> int:
        """What we recorded but Stripe was not sent (yet)."""
        return self.ours - self.sent

    @property
    def stripe_difference(self) -> Decimal | None:
        """What billing_sync says was sent but Stripe's summaries do not show."""
        return None if self.stripe is None else self.sent - self.stripe


async def reconcile(
    pool: asyncpg.Pool,
    *,
    start: datetime,
    end: datetime,
    window_s: int,
    meters: Mapping[str, str],
    version: int,
    stripe: MeterTotals | None = None,
    import_since: datetime | None = None,
) -> list[ReconcileLine]:
    """Lines for [start, end) (a month: both window boundaries), ordered by customer, meter."""
    ours: dict[tuple[str, str], int] = {}
    held: dict[tuple[str, str], int] = {}
    parts: tuple[tuple[Imported, dict[tuple[str, str], int]], ...] = (
        ("billable", ours),
        ("held_back", held),
    )
    for imported, totals in parts:
        for window in await window_usage(
            pool,
            start=start,
            end=end,
            window_s=window_s,
            imported=imported,
            import_since=import_since,
        ):
            for dimension in meters:
                key = (window.customer_id, dimension)
                totals[key] = totals.get(key, 0) + window.values[dimension]
    synced: dict[tuple[str, str], dict[str, int]] = {}
    for row in await pool.fetch(
        """
        SELECT customer_id, dimension, status, sum(value) AS total FROM billing_sync
        WHERE version = $1 AND window_start >= $2 AND window_start < $3
        GROUP BY customer_id, dimension, status
        """,
        version,
        start,
        end,
    ):
        if row["dimension"] in meters:
            states = synced.setdefault((row["customer_id"], row["dimension"]), {})
            states[row["status"]] = int(row["total"])
    links: dict[str, str | None] = {
        r["id"]: r["stripe_customer_id"]
        for r in await pool.fetch("SELECT id, stripe_customer_id FROM customers")
    }
    order = {d: i for i, d in enumerate(DIMENSIONS)}
    lines = []
    for customer_id, dimension in sorted(
        set(ours) | set(synced) | set(held), key=lambda k: (k[0], order[k[1]])
    ):
        states = synced.get((customer_id, dimension), {})
        stripe_customer_id = links.get(customer_id)
        stripe_total = None
        if stripe is not None and stripe_customer_id:
            stripe_total = await stripe.meter_event_total(
                meters[dimension], stripe_customer_id, start, end
            )
        lines.append(
            ReconcileLine(
                customer_id=customer_id,
                stripe_customer_id=stripe_customer_id,
                dimension=dimension,
                event_name=meters[dimension],
                ours=ours.get((customer_id, dimension), 0),
                sent=states.get("sent", 0),
                unsent=states.get("pending", 0) + states.get("failed", 0),
                skipped=states.get("skipped", 0),
                stripe=stripe_total,
                imported=held.get((customer_id, dimension), 0),
            )
        )
    return lines
