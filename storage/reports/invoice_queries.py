"""What invoices and re-rating read from (and write to) `usage_events`.

`month_usage(pool, customer_id, month)` sums one customer's events of one UTC calendar month
([start, end)) into a `pricing.invoice.MonthUsage`: successful requests (status < 400) and
their duration in milliseconds, failed requests, token counts over every event, and money as
exact NUMERIC sums (an unpriced event adds 0 and is counted in `unpriced_requests`). It reads
the hourly rollups (storage/reports/rollups.py), not the raw events: a month is whole UTC hours, the
rollups hold every figure it needs per (hour, model) and equal the raw rows exactly, and they
outlive retention, so a month's invoice is the same before and after its raw events expire.
`billing_tier(pool, customer_id, month)` is the tier whose plan the month is billed under: the
tier on the customer's last event of the month (the plan in force at the month's end), or the
customer's current tier if the month has no events; None if the customer does not exist. The
last event is looked up among the raw events and, for events retention removed, in the
record retention keeps of them (`usage_expired_month_tiers`, storage/usage/partitions.py).

`rerate_events(pool, rules, since=...)` prices every event created at or after `since` (of
one model, optionally: any name that resolves to the same catalog entry) again with `rules`,
exactly as the gateway would price it now (its time, customer, tier, status, tokens and
`latency_ms`), and writes the new cost_usd, price_usd and price_version where they differ.
It walks the events in (created_at, id) order, `batch_size` at a time, each batch in its own
transaction with its rows locked (FOR UPDATE), so a large table is never locked whole and an
interrupted run leaves whole batches done; running it again finishes the job. A second run
with the same rules changes nothing. An unpriced event (NULL money) is priced if its model now
is; an event whose model is no longer priced keeps its money (counted as `kept_unpriceable`):
re-rating never erases a price. A real run is recorded in `pricing_rerates`; `dry_run`
computes the same report and writes nothing. Quota spend counters in Redis and meter events
already sent to Stripe are not touched here.

Database errors pass through unchanged (asyncpg's); a batch that fails is rolled back whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from pricing.invoice import ModelUsage, MonthUsage, decimal_str
from pricing.models import Charge, Usage
from pricing.months import BillingMonth
from pricing.rules import PricingRules

DEFAULT_BATCH_SIZE = 1000
_ZERO = Decimal(0)

# From the rollups: every event counts once in `requests`, a failed one (status >= 400) in
# `error_requests` too; `compute_ms` sums latency_ms of status < 400 only. A rollup row whose
# events were all deleted or moved (re-rating an event to another customer) stays with zeros:
# HAVING leaves such a model out, as the raw rows would.
_MONTH_BY_MODEL = """
SELECT model,
       sum(requests - error_requests)::bigint AS requests,
       sum(error_requests)::bigint            AS failed_requests,
       sum(input_tokens)::bigint              AS input_tokens,
       sum(output_tokens)::bigint             AS output_tokens,
       sum(compute_ms)::bigint                AS compute_ms,
       sum(price_usd)                         AS price_usd,
       sum(cost_usd)                          AS cost_usd,
       sum(unpriced_requests)::bigint         AS unpriced_requests
FROM usage_rollups_hourly
WHERE customer_id = $1 AND hour >= $2 AND hour < $3
GROUP BY model
HAVING sum(requests) <> 0
ORDER BY model
"""

# The last event of the month: the last retained raw one or the last one retention removed.
_LAST_TIER = """
SELECT tier FROM (
    (SELECT created_at, id, tier FROM usage_events
     WHERE customer_id = $1 AND created_at >= $2 AND created_at < $3
     ORDER BY created_at DESC, id DESC
     LIMIT 1)
    UNION ALL
    (SELECT last_event_at, last_event_id, tier FROM usage_expired_month_tiers
     WHERE customer_id = $1 AND month = $2)
) AS last
ORDER BY created_at DESC, id DESC
LIMIT 1
"""


async def month_usage(pool: asyncpg.Pool, customer_id: str, month: BillingMonth) -> MonthUsage:
    """One customer's usage in `month`, summed exactly (from the rollups: whole hours)."""
    rows = await pool.fetch(_MONTH_BY_MODEL, customer_id, month.start, month.end)
    by_model = tuple(
        ModelUsage(
            model=row["model"],
            requests=row["requests"],
            failed_requests=row["failed_requests"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            price_usd=row["price_usd"],
        )
        for row in rows
    )
    return MonthUsage(
        requests=sum(row["requests"] for row in rows),
        failed_requests=sum(row["failed_requests"] for row in rows),
        input_tokens=sum(row["input_tokens"] for row in rows),
        output_tokens=sum(row["output_tokens"] for row in rows),
        compute_ms=sum(row["compute_ms"] for row in rows),
        price_usd=sum((row["price_usd"] for row in rows), Decimal(0)),
        cost_usd=sum((row["cost_usd"] for row in rows), Decimal(0)),
        unpriced_requests=sum(row["unpriced_requests"] for row in rows),
        by_model=by_model,
    )


async def billing_tier(pool: asyncpg.Pool, customer_id: str, month: BillingMonth) -> str | None:
    """The tier `month` is billed under (see the module docstring); None: no such customer."""
    async with pool.acquire() as conn:
        current: str | None = await conn.fetchval(
            "SELECT tier FROM customers WHERE id = $1", customer_id
        )
        if current is None:
            return None
        last: str | None = await conn.fetchval(_LAST_TIER, customer_id, month.start, month.end)
    return last if last is not None else current


# ----------------------------------------------------------------------------- re-rating

_BATCH = """
SELECT id, created_at, customer_id, tier, model, status_code, input_tokens, output_tokens,
       cached_input_tokens, cache_write_tokens, reasoning_tokens, latency_ms,
       cost_usd, price_usd, price_version, metadata->>'cache_write_1h_tokens' AS write_1h
FROM usage_events
WHERE created_at >= $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
ORDER BY created_at, id
LIMIT $4
"""

_UPDATE = """
UPDATE usage_events AS e
SET cost_usd = v.cost_usd, price_usd = v.price_usd, price_version = v.price_version
FROM unnest($1::uuid[], $2::numeric[], $3::numeric[], $4::text[])
     AS v(id, cost_usd, price_usd, price_version)
WHERE e.id = v.id
"""

_RECORD_RUN = """
INSERT INTO pricing_rerates (started_at, finished_at, since, model, price_version,
    events_seen, events_changed, cost_delta_usd, price_delta_usd)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""


@dataclass(slots=True)
class CustomerDelta:
    """How one customer's money moved: sums over the events that changed."""

    customer_id: str
    events_changed: int = 0
    newly_priced: int = 0
    cost_before: Decimal = _ZERO
    cost_after: Decimal = _ZERO
    price_before: Decimal = _ZERO
    price_after: Decimal = _ZERO

    @property
    def price_delta(self) -> Decimal:
        return self.price_after - self.price_before

    @property
    def cost_delta(self) -> Decimal:
        return self.cost_after - self.cost_before

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "events_changed": self.events_changed,
            "newly_priced": self.newly_priced,
            "cost_before": decimal_str(self.cost_before),
            "cost_after": decimal_str(self.cost_after),
            "cost_delta": decimal_str(self.cost_delta),
            "price_before": decimal_str(self.price_before),
            "price_after": decimal_str(self.price_after),
            "price_delta": decimal_str(self.price_delta),
        }


@dataclass(slots=True)
class RerateReport:
    since: datetime
    model: str | None
    price_version: str
    dry_run: bool
    events_seen: int = 0
    events_changed: int = 0
    kept_unpriceable: int = 0  # had money, model no longer priced: left as it was
    still_unpriced: int = 0
    customers: dict[str, CustomerDelta] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        deltas = sorted(self.customers.values(), key=lambda d: d.customer_id)
        return {
            "since": self.since.isoformat(),
            "model": self.model,
            "price_version": self.price_version,
            "dry_run": self.dry_run,
            "events_seen": self.events_seen,
            "events_changed": self.events_changed,
            "kept_unpriceable": self.kept_unpriceable,
            "still_unpriced": self.still_unpriced,
            "cost_delta": decimal_str(sum((d.cost_delta for d in deltas), _ZERO)),
            "price_delta": decimal_str(sum((d.price_delta for d in deltas), _ZERO)),
            "customers": [d.to_json() for d in deltas],
        }


def _add_change(report: RerateReport, row: asyncpg.Record, charge: Charge) -> None:
    customer = row["customer_id"]
    delta = report.customers.setdefault(customer, CustomerDelta(customer))
    delta.events_changed += 1
    delta.newly_priced += 1 if row["price_usd"] is None else 0
    delta.cost_before += row["cost_usd"] or _ZERO
    delta.price_before += row["price_usd"] or _ZERO
    delta.cost_after += charge.cost_usd
    delta.price_after += charge.price_usd
    report.events_changed += 1


async def rerate_events(
    pool: asyncpg.Pool,
    rules: PricingRules,
    *,
    since: datetime,
    model: str | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> RerateReport:
    """Price the events since `since` again with `rules`; see the module docstring."""
    if since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = datetime.now(UTC)
    report = RerateReport(since=since, model=model, price_version=rules.version, dry_run=dry_run)
    wanted = _model_filter(rules, model)
    cursor: tuple[datetime, uuid.UUID] | None = None
    while True:
        async with pool.acquire() as conn, conn.transaction():
            query = _BATCH if dry_run else _BATCH + " FOR UPDATE"
            after, after_id = cursor if cursor is not None else (None, None)
            rows = await conn.fetch(query, since, after, after_id, batch_size)
            if not rows:
                break
            cursor = (rows[-1]["created_at"], rows[-1]["id"])
            updates = _reprice(rows, rules, wanted, report)
            if updates and not dry_run:
                columns = [list(column) for column in zip(*updates, strict=True)]
                await conn.execute(_UPDATE, *columns)
        if len(rows) < batch_size:
            break
    if not dry_run:
        totals = report.to_json()
        await pool.execute(
            _RECORD_RUN,
            started,
            datetime.now(UTC),
            since,
            model,
            rules.version,
            report.events_seen,
            report.events_changed,
            Decimal(totals["cost_delta"]),
            Decimal(totals["price_delta"]),
        )
    return report


def _model_filter(rules: PricingRules, model: str | None) -> Callable[[str], bool]:
    if model is None:
        return lambda name: True
    canonical = rules.catalog.canonical_name(model)
    if canonical is None:
        return lambda name: name == model
    return lambda name: name == model or rules.catalog.canonical_name(name) == canonical


def _reprice(
    rows: list[asyncpg.Record],
    rules: PricingRules,
    wanted: Callable[[str], bool],
    report: RerateReport,
) -> list[tuple[uuid.UUID, Decimal, Decimal, str]]:
    updates = []
    for row in rows:
        if not wanted(row["model"]):
            continue
        report.events_seen += 1
        charge = rules.charge(
            row["model"],
            _usage(row),
            at=row["created_at"],
            customer_id=row["customer_id"],
            tier=row["tier"],
            duration_ms=max(0, row["latency_ms"]),
            succeeded=row["status_code"] < 400,
        )
        if charge is None:
            if row["price_usd"] is None:
                report.still_unpriced += 1
            else:
                report.kept_unpriceable += 1
            continue
        if (
            charge.cost_usd == row["cost_usd"]
            and charge.price_usd == row["price_usd"]
            and charge.price_version == row["price_version"]
        ):
            continue
        _add_change(report, row, charge)
        updates.append((row["id"], charge.cost_usd, charge.price_usd, charge.price_version))
    return updates


def _usage(row: asyncpg.Record) -> Usage:
    write_1h = row["write_1h"]
    try:
        hour_writes = int(write_1h) if write_1h is not None else 0
    except ValueError:
        hour_writes = 0
    return Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cached_input_tokens=row["cached_input_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        cache_write_1h_tokens=min(max(hour_writes, 0), row["cache_write_tokens"]),
    )
