-- 061_rollups_key_daily: usage per (customer, UTC day, key), kept in step with usage_events.
--
-- One row per (customer_id, day, key_id, project_id) that ever had an event; `day` is the
-- event's UTC date, project_id the key's (NULL for keys without one; NULLS NOT DISTINCT
-- makes that one group). Counts and money as in usage_rollups_hourly (compute_ms left out).
-- The hourly rollups have no key, so without this a customer's usage per key is a scan of
-- its raw events (a month of a busy customer: 100,000 rows and half a second); here it is
-- days x keys rows.
--
-- Maintenance: statement-level AFTER triggers on usage_events with transition tables, in the
-- same transaction as the write, exactly as the hourly rollups' (031_rollups.sql): INSERT
-- (COPY, and only the rows an ON CONFLICT DO NOTHING actually inserted) adds, UPDATE
-- (re-rating) moves the difference, DELETE through usage_events subtracts, TRUNCATE
-- empties; dropping a partition or deleting from one by name (retention) leaves the rows
-- as they were. One upsert per distinct (customer, day, key) of a statement, in key order.

CREATE TABLE usage_rollups_key_daily (
    customer_id         text NOT NULL,
    day                 date NOT NULL,
    key_id              text NOT NULL,
    project_id          text,
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
    CONSTRAINT usage_rollups_key_daily_key
        UNIQUE NULLS NOT DISTINCT (customer_id, day, key_id, project_id)
);

CREATE FUNCTION usage_rollups_key_daily_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    source text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        source := 'SELECT 1 AS sign, * FROM key_new';
    ELSIF TG_OP = 'DELETE' THEN
        source := 'SELECT -1 AS sign, * FROM key_old';
    ELSE
        source := 'SELECT -1 AS sign, * FROM key_old UNION ALL SELECT 1, * FROM key_new';
    END IF;
    EXECUTE format($sql$
        INSERT INTO usage_rollups_key_daily AS r (
            customer_id, day, key_id, project_id, requests, error_requests,
            estimated_requests, unpriced_requests, input_tokens, output_tokens,
            cached_input_tokens, cache_write_tokens, reasoning_tokens, cost_usd, price_usd)
        SELECT e.customer_id, (e.created_at AT TIME ZONE 'UTC')::date, e.key_id, e.project_id,
               sum(e.sign),
               coalesce(sum(e.sign) FILTER (WHERE e.status_code >= 400), 0),
               coalesce(sum(e.sign) FILTER (WHERE e.usage_source = 'estimated'), 0),
               coalesce(sum(e.sign) FILTER (WHERE e.price_usd IS NULL), 0),
               sum(e.sign * e.input_tokens), sum(e.sign * e.output_tokens),
               sum(e.sign * e.cached_input_tokens), sum(e.sign * e.cache_write_tokens),
               sum(e.sign * e.reasoning_tokens),
               coalesce(sum(e.sign * e.cost_usd), 0), coalesce(sum(e.sign * e.price_usd), 0)
        FROM (%s) AS e
        GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3, 4
        ON CONFLICT ON CONSTRAINT usage_rollups_key_daily_key DO UPDATE SET
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
            price_usd           = r.price_usd + excluded.price_usd
    $sql$, source);
    RETURN NULL;
END
$fn$;

CREATE FUNCTION usage_rollups_key_daily_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    TRUNCATE usage_rollups_key_daily;
    RETURN NULL;
END
$fn$;

-- Backfill from the rows already there, then keep up. Same transaction.
INSERT INTO usage_rollups_key_daily (
    customer_id, day, key_id, project_id, requests, error_requests, estimated_requests,
    unpriced_requests, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
    reasoning_tokens, cost_usd, price_usd)
SELECT customer_id, (created_at AT TIME ZONE 'UTC')::date, key_id, project_id, count(*),
       count(*) FILTER (WHERE status_code >= 400),
       count(*) FILTER (WHERE usage_source = 'estimated'),
       count(*) FILTER (WHERE price_usd IS NULL),
       sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
       sum(cache_write_tokens), sum(reasoning_tokens),
       coalesce(sum(cost_usd), 0), coalesce(sum(price_usd), 0)
FROM usage_events
GROUP BY 1, 2, 3, 4;

CREATE TRIGGER usage_rollups_key_daily_on_insert AFTER INSERT ON usage_events
    REFERENCING NEW TABLE AS key_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_key_daily_apply();
CREATE TRIGGER usage_rollups_key_daily_on_update AFTER UPDATE ON usage_events
    REFERENCING OLD TABLE AS key_old NEW TABLE AS key_new
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_key_daily_apply();
CREATE TRIGGER usage_rollups_key_daily_on_delete AFTER DELETE ON usage_events
    REFERENCING OLD TABLE AS key_old
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_key_daily_apply();
CREATE TRIGGER usage_rollups_key_daily_on_truncate AFTER TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollups_key_daily_truncate();
