"""What the operator dashboard's system panel reads from Postgres: usage per model, dead
letters, and the Stripe sync's state.

- `models_usage`: usage per model over [since, until], from
  `storage.reports.daily_rollups.daily_rows_sql` (daily rollups for whole days, the reports' rows
  for
  the edges: the per-model figures sum to the all-customer summary of the same window),
  ordered by price_usd descending. Unpriced models are those with
  `unpriced_requests > 0`; the estimated-usage share is `estimated_requests / requests`.
- `dead_letter_state`: how many rows `usage_dead_letters` holds and when the oldest failed.
- `stripe_sync_state`: `billing_sync` rows whose window starts in [since, until) (identifier
  version `version`): per status (sent / pending / failed / skipped) the rows and the summed
  value per dimension, and the newest row update (when a sync run last recorded anything).
  `sent` against what usage holds is `tollbooth billing reconcile`'s job; the panel shows the
  recorded side of it (see `stripe_reconcile.reconcile` for the per-customer comparison).

Money is exact Decimal. Database errors are asyncpg's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from storage.reports.daily_rollups import daily_rows_sql
from storage.reports.rollups import ROW_COUNTS, ROW_MONEY, Params
from storage.reports.usage_queries import ModelUsage, UsageTotals

SYNC_STATUSES = ("sent", "pending", "failed", "skipped")

_SUMS = ", ".join(
    [f"sum(u.{name})::bigint AS {name}" for name in ROW_COUNTS]
    + [f"sum(u.{name})::numeric AS {name}" for name in ROW_MONEY]
)


async def models_usage(
    pool: asyncpg.Pool, *, since: datetime, until: datetime, customer_id: str | None = None
) -> list[ModelUsage]:
    """Usage per model in [since, until], the most spent on first (then by name)."""
    params = Params()
    rows_sql = daily_rows_sql(since, until, params, customer_id)
    rows = await pool.fetch(
        f"SELECT u.model, {_SUMS} FROM ({rows_sql}) AS u GROUP BY u.model "
        "HAVING sum(u.requests) <> 0 ORDER BY price_usd DESC, u.model",
        *params.values,
    )
    return [ModelUsage(row["model"], UsageTotals.from_row(row)) for row in rows]


@dataclass(frozen=True, slots=True)
class DeadLetterState:
    count: int
    oldest_failed_at: datetime | None


async def dead_letter_state(pool: asyncpg.Pool) -> DeadLetterState:
    row = await pool.fetchrow(
        "SELECT count(*) AS n, min(first_failed_at) AS oldest FROM usage_dead_letters"
    )
    assert row is not None  # an aggregate always answers one row
    return DeadLetterState(int(row["n"]), row["oldest"])


@dataclass(frozen=True, slots=True)
class SyncStatusState:
    rows: int = 0
    values: dict[str, int] = field(default_factory=dict)  # dimension -> summed value


@dataclass(frozen=True, slots=True)
class StripeSyncState:
    by_status: dict[str, SyncStatusState]  # every name in SYNC_STATUSES
    last_recorded_at: datetime | None  # newest updated_at of any billing_sync row
    last_sent_at: datetime | None
    dimensions: tuple[str, ...]  # those with rows, in first-seen order

    @property
    def open_rows(self) -> int:
        """Rows the next sync run sends (pending, or failed and resent as recorded)."""
        return self.by_status["pending"].rows + self.by_status["failed"].rows


async def stripe_sync_state(
    pool: asyncpg.Pool, *, since: datetime, until: datetime, version: int
) -> StripeSyncState:
    rows = await pool.fetch(
        """
        SELECT status, dimension, count(*) AS n, sum(value)::bigint AS total
        FROM billing_sync
        WHERE version = $1 AND window_start >= $2 AND window_start < $3
        GROUP BY status, dimension ORDER BY dimension, status
        """,
        version,
        since,
        until,
    )
    counts: dict[str, int] = {status: 0 for status in SYNC_STATUSES}
    values: dict[str, dict[str, int]] = {status: {} for status in SYNC_STATUSES}
    dimensions: list[str] = []
    for row in rows:
        status = row["status"]
        counts[status] += int(row["n"])
        values[status][row["dimension"]] = int(row["total"])
        if row["dimension"] not in dimensions:
            dimensions.append(row["dimension"])
    times = await pool.fetchrow(
        "SELECT max(updated_at) AS recorded, max(sent_at) AS sent FROM billing_sync"
    )
    assert times is not None
    return StripeSyncState(
        by_status={s: SyncStatusState(counts[s], values[s]) for s in SYNC_STATUSES},
        last_recorded_at=times["recorded"],
        last_sent_at=times["sent"],
        dimensions=tuple(dimensions),
    )
