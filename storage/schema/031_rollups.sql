-- 031_rollups: hourly usage per (customer, project, model), kept in step with usage_events.
--
-- One row per (customer_id, hour, project_id, model) that ever had an event; `hour` is the
-- event's created_at truncated to the UTC hour. Counts and sums over that hour's events:
--   requests            every event (provider errors included, as in the reports)
--   error_requests      events with status_code >= 400
--   estimated_requests  events with usage_source = 'estimated'
--   unpriced_requests   events with price_usd NULL (they add 0 to the money)
--   *_tokens            sums of the token columns
--   cost_usd, price_usd exact NUMERIC sums (NULL money adds 0)
--   compute_ms          latency_ms summed over events with status_code < 400 (invoices)
-- project_id is NULL for keys without a project; NULLS NOT DISTINCT makes that one group.
--
-- Maintenance: statement-level AFTER triggers on usage_events, in the same transaction as
-- the write, so a committed snapshot always has rollups equal to the raw rows:
--   INSERT (and COPY, and INSERT ... ON CONFLICT DO NOTHING: only rows actually inserted)
--   adds the new rows; UPDATE (re-rating) subtracts the old images and adds the new ones;
--   DELETE through usage_events subtracts; TRUNCATE usage_events empties the rollups.
-- What does NOT reach the triggers, on purpose: dropping a partition (retention) and
-- deleting from a partition by name (retention of the default partition) leave the
-- rollups as they were: raw events expire, the hourly history stays. Writes must go through
-- `usage_events`, never a partition by name, or the rollups miss them
-- (storage/reports/rollups.py `rebuild_rollups` repairs a range from the raw rows).
--
-- Each statement aggregates its transition table first, so a batch of N events costs one
-- upsert per distinct (customer, hour, project, model), not N. The upserts go in key
-- order, so two writers touching the same rows lock them in the same order (no deadlock);
-- they do serialize on a shared row until the first commits.
-- Requires PostgreSQL 15+ (NULLS NOT DISTINCT).

CREATE TABLE usage_rollups_hourly (
    hour                timestamptz NOT NULL,
    customer_id         text NOT NULL,
    project_id          text,
    model               text NOT NULL,
    requests            bigint NOT NULL DEFAULT 0,
    error_requests      bigint NOT NULL DEFAULT 0,
    estimated_requests  bigint NOT NULL DEFAULT 0,
    unpriced_requests   bigint NOT NULL DEFAULT 0,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    reasoning_tokens    bigint NOT NULL DEFAULT 0,
    cost_usd            numeric NOT NULL DEFAULT 0,
    price_usd           numeric NOT NULL DEFAULT 0,
    compute_ms          bigint NOT NULL DEFAULT 0,
    CONSTRAINT usage_rollups_hourly_key
        UNIQUE NULLS NOT DISTINCT (customer_id, hour, project_id, model)
);

CREATE INDEX usage_rollups_hourly_hour_idx ON usage_rollups_hourly (hour);

-- The source rows arrive as `e(sign, <usage_events columns>)`: +1 for rows added, -1 for
-- rows removed. One template for the three operations, filled with the transition tables
-- the firing trigger declares (rollup_new, rollup_old).
CREATE FUNCTION usage_rollups_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    source text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        source := 'SELECT 1 AS sign, * FROM rollup_new';
    ELSIF TG_OP = 'DELETE' THEN
        source := 'SELECT -1 AS sign, * FROM rollup_old';
    ELSE
        source := 'SELECT -1 AS sign, * FROM rollup_old UNION ALL SELECT 1, * FROM rollup_new';
    END IF;
    EXECUTE format($sql$
        INSERT INTO usage_rollups_hourly AS r (
            hour, customer_id, project_id, model, requests, error_requests,
            estimated_requests, unpriced_requests, input_tokens, output_tokens,
            cached_input_tokens, cache_write_tokens, reasoning_tokens, cost_usd, price_usd,
            compute_ms)
        SELECT date_trunc('hour', e.created_at, 'UTC'), e.customer_id, e.project_id, e.model,
               sum(e.sign),
               coalesce(sum(e.sign) FILTER (WHERE e.status_code >= 400), 0),
               coalesce(sum(e.sign) FILTER (WHERE e.usage_source = 'estimated'), 0),
               coalesce(sum(e.sign) FILTER (WHERE e.price_usd IS NULL), 0),
               sum(e.sign * e.input_tokens),
               sum(e.sign * e.output_tokens),
               sum(e.sign * e.cached_input_tokens),
               sum(e.sign * e.cache_write_tokens),
               sum(e.sign * e.reasoning_tokens),
               coalesce(sum(e.sign * e.cost_usd), 0),
               coalesce(sum(e.sign * e.price_usd), 0),
               coalesce(sum(e.sign * e.latency_ms) FILTER (WHERE e.status_code < 400), 0)
        FROM (%s) AS e
        GROUP BY 1, 2, 3, 4
        ORDER BY 2, 1, 3, 4
        ON CONFLICT ON CONSTRAINT usage_rollups_hourly_key DO UPDATE SET
            requests            = r.requests + excluded.requests,
            error_requests      = r.error_requests + excluded.error_requests,
            estimated_requests  = r.estimated_requests + excluded.estimated_requests,
            unpriced_requests   = r.unpriced_requests + excluded.unpriced_requests,
            input_tokens        = r.input_tokens + excluded.input_tokens,
            output_tokens       = r.output_tokens + excluded.output_tokens,
            cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
            cache_write_tokens  = r.cache_write_tokens + excluded.cache_write_tokens,
            reasoning_tokens    = r.reasoning_tokens + excluded.reasoning_tokens,
            cost_usd            = r.cost_usd + excluded.cost_usd,
            price_usd           = r.price_usd + excluded.price_usd,
            compute_ms          = r.compute_ms + excluded.compute_ms
    $sql$, source);
    RETURN NULL;
END
$fn$;

CREATE FUNCTION usage_rollups_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE usage_rollups_hourly;
    RETURN NULL;
END
$fn$;

-- Backfill from the rows already there, then keep up. Same transaction: nothing in between.
INSERT INTO usage_rollups_hourly (
    hour, customer_id, project_id, model, requests, error_requests, estimated_requests,
    unpriced_requests, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
    reasoning_tokens, cost_usd, price_usd, compute_ms)
SELECT date_trunc('hour', created_at, 'UTC'), customer_id, project_id, model,
       count(*),
       count(*) FILTER (WHERE status_code >= 400),
       count(*) FILTER (WHERE usage_source = 'estimated'),
       count(*) FILTER (WHERE price_usd IS NULL),
       sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
       sum(cache_write_tokens), sum(reasoning_tokens),
       coalesce(sum(cost_usd), 0), coalesce(sum(price_usd), 0),
       coalesce(sum(latency_ms) FILTER (WHERE status_code < 400), 0)
FROM usage_events
GROUP BY 1, 2, 3, 4;

CREATE TRIGGER usage_rollups_on_insert AFTER INSERT ON usage_events
    REFERENCING NEW TABLE AS rollup_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_apply();
CREATE TRIGGER usage_rollups_on_update AFTER UPDATE ON usage_events
    REFERENCING OLD TABLE AS rollup_old NEW TABLE AS rollup_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_apply();
CREATE TRIGGER usage_rollups_on_delete AFTER DELETE ON usage_events
    REFERENCING OLD TABLE AS rollup_old
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_apply();
CREATE TRIGGER usage_rollups_on_truncate AFTER TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_truncate();
