-- 030_partitions: usage_events becomes a table partitioned by month on created_at.
--
-- Declarative RANGE partitioning, one partition per UTC calendar month, named
-- usage_events_yYYYYmMM and bounded [first instant of the month, first instant of the next)
-- in UTC, plus usage_events_default, a DEFAULT partition that catches a row no month partition
-- holds (a month whose partition was never created or already dropped), so an insert never
-- fails for a missing partition. storage/usage/partitions.py creates the months ahead of time,
-- moves rows out of the default partition into their month, and drops expired months
-- (retention). This file bootstraps the months the existing rows need, plus the current month
-- and the two after it.
--
-- A unique key on a partitioned table must include the partition key, so the primary key
-- becomes (id, created_at): inserts stay idempotent with `ON CONFLICT (id, created_at) DO
-- NOTHING`, since an event keeps its created_at on every retry and replay. Columns, their
-- order, defaults and NOT NULLs are copied from the old table (LIKE), so nothing else changes
-- for readers. The indexes the reports need exist on the parent and so on every partition:
-- (customer_id, created_at) for one customer's window, events page and export, and
-- (created_at) for reports over all customers.
--
-- The whole file runs in migrate()'s transaction: writers block on the rename until it
-- commits, and a failure leaves the old table untouched.

ALTER TABLE usage_events RENAME TO usage_events_unpartitioned;
ALTER INDEX usage_events_pkey RENAME TO usage_events_unpartitioned_pkey;
ALTER INDEX usage_events_customer_created_idx RENAME TO usage_events_unpartitioned_customer_idx;
ALTER INDEX usage_events_created_idx RENAME TO usage_events_unpartitioned_created_idx;

CREATE TABLE usage_events (
    LIKE usage_events_unpartitioned INCLUDING ALL EXCLUDING INDEXES,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX usage_events_customer_created_idx ON usage_events (customer_id, created_at);
CREATE INDEX usage_events_created_idx ON usage_events (created_at);

CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;

DO $$
DECLARE
    month_start timestamp;  -- UTC wall clock of the month's first instant
BEGIN
    FOR month_start IN
        SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')
        FROM usage_events_unpartitioned
        UNION
        SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => ahead)
        FROM generate_series(0, 2) AS ahead
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
            'usage_events_y' || to_char(month_start, 'YYYY') || 'm' || to_char(month_start, 'MM'),
            to_char(month_start, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(month_start + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00'
        );
    END LOOP;
END
$$;

INSERT INTO usage_events SELECT * FROM usage_events_unpartitioned;

DROP TABLE usage_events_unpartitioned;
