-- 051_retention: what retention leaves behind when it removes raw usage events.
--
-- Retention (storage/usage/partitions.py `apply_retention`) drops expired month partitions of
-- usage_events and deletes old rows of the default partition. The hourly rollups keep
-- counting those events (031_rollups); these two tables keep the rest of what later
-- readers need, written in the same transaction as the drop or the delete.
--
-- usage_retention_horizon: at most one row. `horizon` is the instant before which raw
-- usage_events rows may have been removed; from it on, every raw row is still there.
-- Dropping a month partition raises it to that month's end; deleting old rows of the
-- default partition raises it to the hour after the newest row deleted. It only moves
-- forward. No row: retention never removed anything. storage/reports/rollups.py checks and rebuilds
-- the rollups only from the horizon on: before it the rollups are the only record of those
-- hours, and a rebuild would erase them. The first month partition of a database is not a
-- horizon: a fresh database has nothing before it, and nothing was removed.
--
-- usage_expired_month_tiers: per (customer_id, UTC month), the last of the customer's
-- removed events of that month, (last_event_at, last_event_id) and its tier. An invoice is
-- billed under the tier of the customer's last event of the month
-- (storage/reports/invoice_queries.py `billing_tier`), which the rollups do not hold: with this, the
-- last event is the later of the last retained raw event and this row, exactly as before
-- the removal.
--
-- A database where retention ran before this file: those removed raw rows show as rollup
-- hours that count events but lie before the oldest raw event (every row of such an hour
-- is gone); the horizon starts after the last of them. With no rollup hour of that kind,
-- nothing is recorded. The tiers of months removed before this file are lost: their
-- invoices use the customer's current tier, as they did.

CREATE TABLE usage_retention_horizon (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon    timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO usage_retention_horizon (horizon)
SELECT max(hour) + interval '1 hour'
FROM usage_rollups_hourly
WHERE requests <> 0
  AND hour < coalesce(
      (SELECT date_trunc('hour', min(created_at), 'UTC') FROM usage_events), 'infinity')
HAVING count(*) > 0;

CREATE TABLE usage_expired_month_tiers (
    customer_id   text NOT NULL,
    month         timestamptz NOT NULL,  -- the month's first instant, UTC
    last_event_at timestamptz NOT NULL,
    last_event_id uuid NOT NULL,
    tier          text NOT NULL,
    PRIMARY KEY (customer_id, month)
);
